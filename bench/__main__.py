"""pycni benchmark: our plugins beside the Go reference, in one interleaved run.

    .venv/bin/python -m bench [--forms py,bin,agent] [--go /usr/lib/cni]
                              [--quick] [--only NAME...] [--json FILE]
                              [--root 11|12|13] [--python PATH]

Needs root: every variant's plugins run in a host netns made for the run,
with containers in netns of their own and every state path in a temp dir;
all of it is deleted at the end, also on Ctrl-C.  See README "Benchmarks".
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile

from bench import plumbing, sandbox, stats
from bench.workloads import WORKLOADS

# what runs in a root: no Go column (the machine's Go plugins are built for
# its glibc) and no agent; the pods and growth workloads read the machine's
# nft, which need not read what a root's nft wrote
ROOT_WORKLOADS = ("version", "loopback", "host-local", "portmap", "bridge", "chain")

FORMS = {
    "py": ("py", "py"),
    "bin": ("bundle", "bin"),
    "agent": ("py+agent", "py"),
}


class Bench:
    """One run: its variants, namespaces, helper processes and results."""

    def __init__(self, args, log):
        self.args, self.log = args, log
        self.quick = args.quick
        self.seed = args.seed if args.seed is not None else random.randrange(1 << 31)
        self.rng = random.Random(self.seed)
        self.tmp = tempfile.mkdtemp(prefix="pycni-bench-", dir="/tmp")
        os.chmod(self.tmp, 0o755)
        self.inroot = None
        if args.root:
            # the run's temp dir is bound at its own path inside the root:
            # state dirs, copies of the forms, spawn.py and the libcni
            # driver read the same from here and from there
            from tools.roots import InRoot
            self.inroot = InRoot(args.root_dir, binds={self.tmp: self.tmp}, writable={self.tmp})
            shutil.copy(os.path.join(plumbing.HERE, "spawn.py"), os.path.join(self.tmp, "spawn.py"))
        self.sandboxes = sandbox.Sandboxes()
        self.spawners = {}
        self.agent = None
        self.go_exe = None
        self.raw = {}
        self.errors = []
        self.variants = self._variants()

    def _variants(self):
        vs = []
        if self.args.go and self.args.go != "none":
            vs.append(plumbing.Variant("go", "Go", self.args.go))
            if not os.path.isdir(self.args.go):
                vs[-1].unavailable = "n/a (no %s)" % self.args.go
        for form in self.args.forms:
            label, sub = FORMS[form]
            d = os.path.join(self.args.dist, sub)
            if os.path.isdir(d) and (self.inroot or (self.args.python and sub == "py")):
                # a copy: in the run's temp dir (which a root sees), its
                # launchers pointed at --python
                copy = os.path.join(self.tmp, "dist", sub)
                shutil.copytree(d, copy, symlinks=True)
                if self.args.python and sub == "py":
                    plumbing.retarget(copy, self.args.python)
                d = copy
            vs.append(plumbing.Variant(form, label, d, shows_version=form != "agent"))
            if not os.path.isdir(d):
                vs[-1].unavailable = "n/a (not built: ./build.sh)"
        return vs

    # -- set-up and tear-down

    def setup(self):
        self.sandboxes.create([self.sandboxes.name("main")])
        for v in self.variants:
            v.tmp = os.path.join(self.tmp, v.name)
            os.makedirs(v.tmp)
            if v.name != "go":
                v.env.update(plumbing.suite_env(v.tmp))
            if v.unavailable is None:
                v.host = self.sandboxes.host(v.name)
        agent = next((v for v in self.variants if v.name == "agent" and v.unavailable is None), None)
        if agent is not None:
            try:
                self.agent = plumbing.Agent(agent.dir, agent.host, self.tmp)
                agent.env["PYCNI_AGENT_SOCKET"] = self.agent.sock
            except RuntimeError as exc:
                agent.unavailable = "n/a (agent: %s)" % exc

    def close(self):
        for sp in self.spawners.values():
            sp.close()
        self.spawners = {}
        if self.agent is not None:
            if self.agent.proc.poll() is not None:
                self.error("agent", "agent", "the agent exited during the run (rc %s): the py+agent "
                           "figures may be the plain py form's" % self.agent.proc.returncode)
            self.agent.close()
            self.agent = None
        self.sandboxes.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- what workloads use

    def n(self, default, quick, kind="rounds"):
        override = getattr(self.args, kind.replace("-", "_"), None)
        if override:
            return override
        return quick if self.quick else default

    def status(self, v, needs):
        """None when the variant can run a workload needing ``needs``."""
        if v.unavailable:
            return v.unavailable
        missing = v.missing(*needs)
        if not missing:
            return None
        if v.name == "go":
            return "n/a (no %s in %s)" % (", ".join(missing), v.dir)
        return "n/a (not built)"

    def shuffled(self, items):
        items = list(items)
        self.rng.shuffle(items)
        return items

    def spawner(self, v):
        if v.name not in self.spawners:
            self.spawners[v.name] = plumbing.Spawner(v.host, self.inroot, os.path.join(self.tmp, "spawn.py"))
        return self.spawners[v.name]

    def go(self, spec):
        if self.go_exe is None:
            self.go_exe = plumbing.build_go(log=self.log)
            if self.inroot:            # static (CGO_ENABLED=0): runs in any root
                exe = os.path.join(self.tmp, os.path.basename(self.go_exe))
                shutil.copy(self.go_exe, exe)
                self.go_exe = exe
        return plumbing.run_go(self.go_exe, self.sandboxes.name("main"), spec, self.inroot)

    def ip(self, *argv, check=True):
        p = subprocess.run(["ip"] + list(argv), capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RuntimeError("ip %s: %s" % (" ".join(argv), p.stderr.strip()))
        return p

    def error(self, workload, variant, msg):
        self.errors.append((workload, variant, msg))


# ---- output

def header(info, variants, seed):
    lines = ["pycni benchmark, %s" % info["date"],
             "machine: %s, %s cores, kernel %s, load %.2f at start / %.2f at end"
             % (info["cpu"], info["cores"], info["kernel"], info["loadavg"], info.get("loadavg_end", 0)),
             "python %s for the plugins (%s -IS), %s for the bench; Go plugins: "
             "containernetworking-plugins %s; libcni %s; %s"
             % (info.get("plugin_python", "?"), info.get("plugin_interpreter", "?"), info["python"],
                info.get("go_plugins") or "?", info.get("libcni") or "?", info.get("go") or "go ?")]
    if info.get("root"):
        r = info["root"]
        lines.append("in a Debian %s root (%s): glibc %s, python3 %s; every exec of the plugins, the "
                     "exec timer and the libcni driver run chrooted into it"
                     % (r["debian"], r["release"], r["glibc"], r["python"]))
    lines.append("variants: " + ", ".join("%s = %s" % (v.label, os.path.relpath(v.dir, plumbing.ROOT)
                                                      if v.dir.startswith(plumbing.ROOT) else v.dir)
                                          + (" + pycni agent" if v.name == "agent" else "")
                                          for v in variants))
    lines.append("times in ms (exec to exit, or the libcni call); vs Go = median / Go's median "
                 "(throughput: ours / Go's); seed %d" % seed)
    if max(info["loadavg"], info.get("loadavg_end", 0)) > 1.0:
        lines.append("WARNING: load average above 1: the machine was not quiet; compare only "
                     "figures of this run")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--forms", default="py,bin,agent",
                   help="our variants, comma-separated: py (dist/py), bin (dist/bin bundle), "
                        "agent (dist/py + a private pycni agent); default %(default)s")
    p.add_argument("--go", default="/usr/lib/cni",
                   help="the Go reference plugins' dir (default %(default)s; 'none' to skip)")
    p.add_argument("--dist", default=os.path.join(plumbing.ROOT, "dist"),
                   help="where the built forms are (DIST/py, DIST/bin; default %(default)s)")
    p.add_argument("--quick", action="store_true", help="small n: a smoke test, not figures")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(WORKLOADS),
                   help="workloads to run (default all): " + ", ".join(WORKLOADS))
    p.add_argument("--json", metavar="FILE", help="also write every sample and row as JSON")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--rounds", type=int, help="samples per variant for the per-operation workloads")
    p.add_argument("--pods", type=int, help="pods in the pods workload (default 200)")
    p.add_argument("--growth", type=int, help="pods in the growth workload (default 1000)")
    p.add_argument("--seed", type=int, help="seed of the interleaving order")
    p.add_argument("--root", choices=("11", "12", "13"),
                   help="run our forms inside the cached Debian root of that release (./build.sh root): "
                        "forms py,bin; no Go column; workloads " + ", ".join(ROOT_WORKLOADS))
    p.add_argument("--python", metavar="PATH",
                   help="the interpreter the py form's launchers run (a copy of dist/py is retargeted; "
                        "with --root, a path in the root)")
    args = p.parse_args(argv)
    args.forms = [f for f in args.forms.split(",") if f]
    args.dist = os.path.abspath(args.dist)
    bad = [f for f in args.forms if f not in FORMS]
    if bad:
        p.error("unknown form %s (known: %s)" % (", ".join(bad), ", ".join(FORMS)))
    if args.python and not os.path.isabs(args.python):
        p.error("--python wants an absolute path")
    args.root_dir = None
    if args.root:
        if "agent" in args.forms:
            if args.forms != p.get_default("forms").split(","):
                p.error("--root: the agent form does not run in a root (forms py,bin)")
            args.forms = [f for f in args.forms if f != "agent"]
        if args.go == p.get_default("go"):
            args.go = "none"
        elif args.go != "none":
            p.error("--root: the Go reference plugins are this machine's (--go none)")
        wrong = [w for w in args.only or () if w not in ROOT_WORKLOADS]
        if wrong:
            p.error("--root: %s cannot run in a root (%s can)"
                    % (", ".join(wrong), ", ".join(ROOT_WORKLOADS)))
        args.only = args.only or list(ROOT_WORKLOADS)
    if args.growth is not None and args.growth < 3:
        p.error("--growth needs at least 3 pods")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("python -m bench: needs root (it makes network namespaces)", file=sys.stderr)
        return 2

    def log(msg):
        print(">> " + msg, file=sys.stderr, flush=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with it ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    swept = sandbox.sweep_stale()
    if swept:
        log("removed %d network namespaces left by an earlier run" % swept)
    root = None
    if args.root:
        from tools import roots
        try:
            args.root_dir = roots.root(args.root)
        except roots.RootUnavailable as exc:
            print("python -m bench: %s" % exc, file=sys.stderr)
            return 2
    b = Bench(args, log)
    if b.inroot:
        root = dict(plumbing.root_info(b.inroot), release=roots.SUITES[args.root][0])
    info = plumbing.machine(os.path.join(args.dist, "py"), root)
    if args.python and not root:
        info["plugin_interpreter"] = args.python
        info["plugin_python"] = plumbing._cmd([args.python, "-I", "-S", "-c",
                                               "import platform; print(platform.python_version())"])
    elif args.python:
        info["plugin_interpreter"] = args.python
    rows = []
    try:
        b.setup()
        for name in args.only or WORKLOADS:
            log("workload %s" % name)
            try:
                rows += WORKLOADS[name](b)
            except RuntimeError as exc:   # a broken helper: report it, run the others
                log("workload %s failed: %s" % (name, exc))
                b.error(name, "-", str(exc))
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        b.close()
    info["loadavg_end"] = os.getloadavg()[0]
    print(header(info, b.variants, b.seed))
    print()
    print(stats.render_markdown(rows) if args.markdown else stats.render_text(rows))
    if b.errors:
        print("\nerrors (the first 3 of each workload and variant):")
        shown = {}
        for wl, var, msg in b.errors:
            shown[wl, var] = shown.get((wl, var), 0) + 1
            if shown[wl, var] <= 3:
                print("  %s / %s: %s" % (wl, var, msg[:400]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "seed": b.seed, "rows": [r.as_dict() for r in rows],
                       "raw": b.raw, "errors": b.errors,
                       "variants": {v.name: {"label": v.label, "dir": v.dir} for v in b.variants}},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
