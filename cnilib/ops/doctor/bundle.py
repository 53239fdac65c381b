"""``pycni doctor --bundle DIR``: what a bug report needs, written into DIR
(and nowhere else)."""

import os
import sys

from cnilib.base import paths
from cnilib.ops.doctor.report import cmd_text, render


def log_paths(args):
    out = []
    if getattr(args, "log", None):
        out.append(args.log)
    env = os.environ.get("PYCNI_LOG")
    if env and env not in ("-", "off"):
        out.append(env)
    out.append(paths.LOG_FILE)
    return [p for i, p in enumerate(out) if p not in out[:i]]


def _tail(path, lines=500, limit=4 << 20):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError as exc:
        return "(cannot read %s: %s)\n" % (path, exc.strerror)
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(text) + "\n"


def _run_text(argv):
    from cnilib.base import proc
    try:
        r = proc.run(argv, timeout=30)
    except (OSError, TimeoutError) as exc:
        return "$ %s\n(could not run: %s)\n" % (cmd_text(argv), exc)
    out = r.out.decode("utf-8", "replace")
    if r.rc != 0:
        out += "(exit %d) %s\n" % (r.rc, r.err_text(500))
    return "$ %s\n%s" % (cmd_text(argv), out)


def _listing(dirs):
    out = []
    for d in dirs:
        out.append("== %s" % d)
        for root, subdirs, files in sorted(os.walk(d)):
            subdirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                try:
                    st = os.lstat(p)
                    with open(p, "rb") as fh:
                        data = fh.read(300)
                except OSError as exc:
                    out.append("%s  (%s)" % (p, exc.strerror))
                    continue
                shown = data.decode("utf-8", "replace").replace("\r\n", "\\r\\n").replace("\n", "\\n")
                out.append("%s  %d bytes  %o  %s" % (p, st.st_size, st.st_mode & 0o7777, shown[:160]))
    return "\n".join(out) + "\n"


def write_bundle(d, ctx, checks, rep):
    """Write what a bug report needs into ``d``; returns the file names."""
    import json
    import shutil
    os.makedirs(d, 0o700, exist_ok=True)
    files = {}

    def put(name, text):
        files[name] = text if isinstance(text, str) else text.decode("utf-8", "replace")

    from cnilib.ops import whois
    put("doctor.json", json.dumps(rep, indent=2) + "\n")
    put("doctor.txt", render(rep))
    put("whois.json", json.dumps(whois.to_json(ctx.node, ctx.node.rows), indent=2) + "\n")
    put("whois.txt", whois.render_table(ctx.node.rows))
    put("subnet.env", "".join("== %s\n%s" % (p, _read_text(p)) for p in ctx.subnet_files()))
    put("ipam.txt", _listing(ctx.loc.data_dirs))
    put("state.txt", _listing(ctx.loc.flannel_dirs + [os.path.join(ctx.loc.cache_dir, "results")]
                              + ctx.loc.tuning_dirs))
    put("nft-ruleset.txt", _run_text(["nft", "list", "ruleset"]))
    put("iptables-save.txt", _run_text(["iptables-save"]) + _run_text(["ip6tables-save"]))
    put("links.txt", _run_text(["ip", "-d", "link", "show"]) + _run_text(["ip", "addr", "show"])
        + _run_text(["bridge", "fdb", "show"]) + _run_text(["ip", "neigh", "show"]))
    put("routes.txt", _run_text(["ip", "route", "show", "table", "all"])
        + _run_text(["ip", "-6", "route", "show", "table", "all"]) + _run_text(["ip", "rule", "show"]))
    put("sysctl.txt", _sysctls())
    put("log-tail.txt", "".join("== %s\n%s" % (p, _tail(p)) for p in log_paths(ctx.args)))
    put("versions.txt", _versions())
    conf = os.path.join(d, "conflists")
    os.makedirs(conf, 0o700, exist_ok=True)
    for p, _n in ctx.loc.configs:
        if os.path.isfile(p):
            shutil.copyfile(p, os.path.join(conf, os.path.basename(p)))
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    names = sorted(files) + ["conflists/" + n for n in sorted(os.listdir(conf))]
    with open(os.path.join(d, "README.txt"), "w") as f:
        f.write("pycni doctor bundle: attach this directory to a bug report.\n\n"
                + "\n".join(names) + "\n")
    return ["README.txt"] + names


def _read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16).decode("utf-8", "replace")
    except OSError as exc:
        return "(%s)\n" % exc.strerror


def _sysctls():
    out = []
    for base in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding",
                 "/proc/sys/net/bridge"):
        paths = [base]
        if os.path.isdir(base):
            paths = [os.path.join(base, n) for n in sorted(os.listdir(base))]
        for p in paths:
            out.append("%s = %s" % (p[len("/proc/sys/"):].replace("/", "."), _read_text(p).strip()))
    try:
        ifs = sorted(os.listdir("/proc/sys/net/ipv4/conf"))
    except OSError:
        ifs = []
    for i in ifs:
        for k in ("rp_filter", "forwarding"):
            out.append("net.ipv4.conf.%s.%s = %s"
                       % (i, k, _read_text("/proc/sys/net/ipv4/conf/%s/%s" % (i, k)).strip()))
    return "\n".join(out) + "\n"


def _versions():
    from cnilib.cni import version
    u = os.uname()
    return ("pycni %s (CNI %s)\nkernel %s %s %s\npython %s\n" % (
        version.SUITE_VERSION, ", ".join(version.SUPPORTED), u.sysname, u.release, u.machine,
        sys.version.split()[0]))

