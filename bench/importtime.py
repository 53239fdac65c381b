"""Where a plugin exec's start-up goes: ``python -X importtime`` per verb.

    .venv/bin/python -m bench.importtime [--dist DIST] [PLUGIN...]

Runs each built plugin of DIST/py (default: every one the bench knows that
is built) once per verb (VERSION, ADD, DEL) under ``-X importtime`` in a
sandbox netns, like the bench does, and prints the import total and the
modules that cost the most.  importtime's own overhead inflates the
figures (~1.5x); compare them with each other, not with exec times.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from bench import plumbing, sandbox, workloads

# modules worth naming wherever they show up in the tree
WATCH = ("re", "enum", "typing", "logging", "multiprocessing", "ipaddress", "ctypes", "hashlib",
         "pydantic_core._pydantic_core", "socket", "json", "subprocess", "datetime", "asyncio",
         "pyroute2.netlink", "pyroute2.netlink.rtnl.ifinfmsg", "pyroute2.netlink.rtnl.rtmsg",
         "pyroute2.config", "cnilib.kernel.netlink", "cnilib.kernel.link", "cnilib.kernel.route",
         "cnilib.kernel.brport", "cnilib.kernel.nftables", "cnilib.kernel.conntrack", "dataclasses",
         "inspect", "pkgutil")


def parse(text):
    """[(depth, module, self_us, cumulative_us)] from importtime's stderr."""
    out = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        head, cum, name = line.split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2     # "| " then 2 spaces a level
        out.append((depth, name.strip(), int(head.split(":", 1)[1]), int(cum)))
    return out


def summary(entries, top=8):
    """(total ms over the top-level imports, [(module, cumulative ms)])."""
    total = sum(cum for depth, _n, _s, cum in entries if depth == 0) / 1000.0
    seen = {}
    for depth, name, _s, cum in entries:
        if depth == 0 or name in WATCH:
            seen[name] = max(seen.get(name, 0), cum)
    heavy = sorted(seen.items(), key=lambda kv: -kv[1])[:top]
    return total, [(n, c / 1000.0) for n, c in heavy]


def cases(v, prev_veth):
    """(plugin, verb, stdin conf, ifname) of each path to profile."""
    br = workloads.conflist("imp-br", "1.0.0", [workloads.bridge_plugin(v, "cni-imp", "10.70.0.0/24")])
    bridge = dict(br["plugins"][0], cniVersion="1.0.0", name="imp-br")
    hl = {"cniVersion": "1.0.0", "name": "imp-hl", "type": "bridge",
          "ipam": workloads.ipam(v, "10.71.0.0/24", routes=False)}
    pm = dict(workloads.portmap_plugin(), cniVersion="1.0.0", name="imp-pm",
              runtimeConfig={"portMappings": workloads.MAPPINGS}, prevResult=prev_veth)
    lo = {"cniVersion": "1.0.0", "name": "imp-lo", "type": "loopback"}
    out = []
    for plugin, conf, ifname in (("loopback", lo, "lo"), ("host-local", hl, "eth0"),
                                 ("portmap", pm, "eth0"), ("bridge", bridge, "eth0")):
        for verb in ("VERSION", "ADD", "DEL"):
            out.append((plugin, verb, conf, ifname))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.importtime", description=__doc__.split("\n\n")[0])
    p.add_argument("--dist", default=os.path.join(plumbing.ROOT, "dist"))
    p.add_argument("plugins", nargs="*")
    args = p.parse_args(argv)
    d = os.path.join(args.dist, "py")
    python = plumbing.launcher_python(d)
    if python is None:
        print("no dist/py launchers in %s: ./build.sh" % d, file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="pycni-importtime-")
    sb = sandbox.Sandboxes()
    v = plumbing.Variant("py", "py", d)
    v.tmp = tmp
    v.env.update(plumbing.suite_env(tmp))
    try:
        host = sb.host("imp")
        ctr_name = sb.name("imp", "c0")
        ctr = sb.create([ctr_name], lo_up=False)[0]
        pm_ctr = sb.name("imp", "pm")
        pm_path = sb.create([pm_ctr])[0]
        for cmd in (["-n", host, "link", "add", "pmhost0", "type", "veth", "peer", "name", "eth0",
                     "netns", pm_ctr],
                    ["-n", host, "addr", "add", "10.99.0.1/24", "dev", "pmhost0"],
                    ["-n", host, "link", "set", "pmhost0", "up"],
                    ["-n", pm_ctr, "addr", "add", "10.99.0.2/24", "dev", "eth0"],
                    ["-n", pm_ctr, "link", "set", "eth0", "up"]):
            subprocess.run(["ip"] + cmd, check=True, capture_output=True)
        prev = {"cniVersion": "1.0.0",
                "interfaces": [{"name": "pmhost0"}, {"name": "eth0", "sandbox": pm_path}],
                "ips": [{"address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 1}]}
        want = set(args.plugins)
        for plugin, verb, conf, ifname in cases(v, prev):
            if want and plugin not in want:
                continue
            exe = os.path.join(d, plugin)
            if not os.path.exists(exe):
                print("%-10s %-7s n/a (not built)" % (plugin, verb))
                continue
            netns = pm_path if plugin == "portmap" else ctr
            env = plumbing.cni_env(v, verb, "imp-1", netns, ifname)
            r = subprocess.run(["ip", "netns", "exec", host, python, "-IS", "-X", "importtime", exe],
                               input=json.dumps(conf), capture_output=True, text=True, env=env)
            total, heavy = summary(parse(r.stderr))
            status = "" if r.returncode == 0 else "  (rc %d: %s)" % (r.returncode, r.stdout.strip()[:120])
            print("%-10s %-7s imports %5.1f ms: %s%s" % (plugin, verb, total,
                                                        ", ".join("%s %.1f" % h for h in heavy), status))
    finally:
        sb.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
