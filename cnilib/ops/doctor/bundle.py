"""``pycni doctor --bundle DIR``: what a bug report needs, in a fresh private
directory (and nowhere else).

doctor runs as root and DIR is often a shared place (/tmp), so nothing is
written through a name someone else made: a DIR that does not exist yet is
created 0700 and is the bundle; a DIR that exists gets a new directory of
its own inside, ``pycni-bundle-<UTC time>-<random>``, created 0700.  Every
file is then created O_EXCL|O_NOFOLLOW relative to that directory's fd.
What is copied or shown is read the same way: regular files only, opened
without following a link and without blocking; a link planted in a lease
dir, a state dir or the conf dir is shown as a link, its target never read.
"""

import errno
import os
import stat
import sys
import time

from cnilib.base import errors, fsutil, paths
from cnilib.ops.doctor.report import cmd_text, render

SUFFIX = "pycni-bundle-"
COPY_LIMIT = 1 << 20


def log_paths(args):
    out = []
    if getattr(args, "log", None):
        out.append(args.log)
    env = os.environ.get("PYCNI_LOG")
    if env and env not in ("-", "off"):
        out.append(env)
    out.append(paths.LOG_FILE)
    return [p for i, p in enumerate(out) if p not in out[:i]]


def _read_regular(path, limit, tail=False):
    """Up to ``limit`` bytes of the regular file ``path`` (its last ``limit``
    with ``tail``), opened without following a link or blocking; OSError
    for anything else (a link: ELOOP; not a regular file: EINVAL)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if tail and st.st_size > limit:
            os.lseek(fd, st.st_size - limit, os.SEEK_SET)
        out, want = [], limit
        while want > 0:
            chunk = os.read(fd, min(want, 1 << 16))
            if not chunk:
                break
            out.append(chunk)
            want -= len(chunk)
        return b"".join(out)
    finally:
        os.close(fd)


def _tail(path, lines=500, limit=4 << 20):
    try:
        data = _read_regular(path, limit, tail=True)
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
    """Every entry under ``dirs`` (configured state dirs): a regular file
    with its size, mode and first bytes, anything else by its kind; a link
    with where it points, never followed (a linked directory is not
    entered)."""
    out = []
    for d in dirs:
        out.append("== %s" % d)
        try:
            top = fsutil.open_root(d)
        except OSError as exc:
            out.append("%s  (%s)" % (d, exc.strerror))
            continue
        except errors.CniError as exc:
            out.append("%s  (%s)" % (d, exc.msg))
            continue
        if top is not None:
            with top:
                _list_dir(top, out)
    return "\n".join(out) + "\n"


def _list_dir(d, out):
    try:
        names = sorted(d.names())
    except OSError as exc:
        out.append("%s  (%s)" % (d.path, exc.strerror))
        return
    subdirs = []
    for n in names:
        p = d.join(n)
        st = d.lstat(n)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            subdirs.append(n)
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(n, dir_fd=d.fd)
            except OSError as exc:
                target = "(%s)" % exc.strerror
            out.append("%s -> %s (symbolic link, not followed)" % (p, target))
        elif stat.S_ISREG(st.st_mode):
            try:
                data = d.read(n, 300)
            except OSError as exc:
                out.append("%s  (%s)" % (p, exc.strerror))
                continue
            shown = (data or b"").decode("utf-8", "replace").replace("\r\n", "\\r\\n").replace("\n", "\\n")
            out.append("%s  %d bytes  %o  %s" % (p, st.st_size, st.st_mode & 0o7777, shown[:160]))
        else:
            out.append("%s  (not a regular file, mode %o)" % (p, st.st_mode))
    for n in subdirs:
        try:
            sub = d.sub(n)
        except errors.CniError as exc:
            out.append("%s  (%s)" % (d.join(n), exc.msg))
            continue
        if sub is not None:
            with sub:
                _list_dir(sub, out)


def make_dir(given):
    """The bundle's fresh private directory (see the module docstring): a
    Dir held open, checked to be a 0700 directory of this user's, empty."""
    given = os.path.abspath(given)
    parent, name = os.path.dirname(given), os.path.basename(given)
    os.makedirs(parent, 0o700, exist_ok=True)
    with fsutil.open_root(parent) as up:
        try:
            os.mkdir(name, 0o700, dir_fd=up.fd)
            d = up.sub(name)
        except FileExistsError:
            d = None
    if d is None:       # DIR exists: the operator's choice, resolved as given; ours goes inside
        up = fsutil.open_root(given)
        if up is None:
            raise OSError(errno.ENOTDIR, "%s exists and is not a directory" % given)
        with up:
            name = "%s%s-%s" % (SUFFIX, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), os.urandom(3).hex())
            os.mkdir(name, 0o700, dir_fd=up.fd)
            d = up.sub(name)
    st = d.stat()
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077 or d.names():
        d.close()
        raise OSError(errno.EEXIST, "%s is not a fresh private directory" % d.path)
    return d


def _create(d, name, data):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=d.fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_bundle(given, ctx, checks, rep):
    """Write what a bug report needs into a fresh private directory (made
    from ``given``, see ``make_dir``); returns (its path, the file names)."""
    import json
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
    copied, skipped = {}, []
    for p, _n in ctx.loc.configs:
        try:
            copied[os.path.basename(p)] = _read_regular(p, COPY_LIMIT)
        except OSError as exc:
            why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            skipped.append("%s: not copied (%s)" % (p, why))
    with make_dir(given) as d:
        for name, text in files.items():
            _create(d, name, text.encode("utf-8", "replace"))
        os.mkdir("conflists", 0o700, dir_fd=d.fd)
        with d.sub("conflists") as conf:
            for name, data in sorted(copied.items()):
                _create(conf, name, data)
        names = sorted(files) + ["conflists/" + n for n in sorted(copied)]
        _create(d, "README.txt", ("pycni doctor bundle: attach this directory to a bug report.\n\n"
                                  + "\n".join(names) + "\n"
                                  + "".join("\n" + s for s in skipped)
                                  + ("\n" if skipped else "")).encode("utf-8", "replace"))
        return d.path, ["README.txt"] + names


def _read_text(path):
    try:
        return _read_regular(path, 1 << 16).decode("utf-8", "replace")
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

