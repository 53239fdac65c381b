"""The protocol boundary: env and stdin in, a result or an error out.

``execute`` does everything a CNI exec does except touching the process's
stdio, so an in-process delegation (bridge running host-local without a
second exec) goes through exactly the same checks.  ``run`` wires it to the
real stdin/stdout.  Handlers return a ``Result`` (ADD) or None; only this
module writes stdout.

Order of checks, each with its spec code:
  CNI_COMMAND missing          -> about text, exit 0
  required env missing/invalid -> 4
  VERSION                      -> version info (stdin is optional)
  stdin unreadable/oversized   -> 5 / 6, JSON malformed -> 6
  name missing or invalid      -> 7
  cniVersion unsupported       -> 1 (details list the supported versions)
  verb not allowed by version  -> 1
  CNI_NETNS not a netns, or the plugin's own netns -> 8 (plugins that never
    enter CNI_NETNS only refuse their own netns)
"""

import os
import time

from cnilib.base import errors, jsonio
from cnilib.base.log import Log, stamp
from cnilib.base.text import printable
from cnilib.cni import version

MAX_STDIN = 1 << 20
VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# env var -> verbs that require it (spec 1.1 section 2)
REQUIRED = {
    "CNI_CONTAINERID": ("ADD", "DEL", "CHECK"),
    "CNI_NETNS": ("ADD", "CHECK"),
    "CNI_IFNAME": ("ADD", "DEL", "CHECK"),
    "CNI_PATH": ("GC",),
}
MAX_ID = 128
MAX_NAME = 128


def _name_ok(s):
    """^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ without importing re."""
    if not s or not s.isascii() or not s[0].isalnum():
        return False
    for c in s:
        if not (c.isalnum() or c in "_.-"):
            return False
    return True


def check_container_id(cid):
    if len(cid) > MAX_ID:
        raise errors.InvalidEnvironment(
            "CNI_CONTAINERID is %d characters long, expected at most %d" % (len(cid), MAX_ID),
            "found %r" % cid[:64])
    if not _name_ok(cid):
        raise errors.InvalidEnvironment(
            "CNI_CONTAINERID %r has invalid characters" % cid[:64],
            "expected letters, digits, '_', '.' or '-', starting with a letter or digit")


def check_ifname(name):
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 15:
        raise errors.InvalidEnvironment(
            "CNI_IFNAME %r is %d bytes long, expected at most 15" % (name[:40], len(raw)),
            "Linux interface names are limited to 15 bytes")
    if name in (".", "..") or any(c in name for c in "/:\x00") or any(c.isspace() for c in name):
        raise errors.InvalidEnvironment(
            "CNI_IFNAME %r is not a valid interface name" % name,
            "expected 1-15 bytes without '/', ':', NUL or whitespace, and not '.' or '..'")


def check_network_name(name):
    if not isinstance(name, str) or not name:
        raise errors.InvalidConfig("network config has no \"name\"",
                                   "expected a non-empty string naming the network")
    if len(name) > MAX_NAME:
        raise errors.InvalidConfig(
            "network name is %d characters long, expected at most %d" % (len(name), MAX_NAME))
    if not _name_ok(name):
        raise errors.InvalidConfig(
            "network name %r has invalid characters" % name[:64],
            "expected letters, digits, '_', '.' or '-', starting with a letter or digit")


class CmdArgs:
    """Everything a handler gets: env, parsed stdin, the log, the netns fd."""

    __slots__ = ("plugin", "command", "container_id", "netns", "netns_fd", "netns_gone",
                 "ifname", "args_raw", "path", "stdin", "conf", "version", "log", "env",
                 "_cni_args")

    def __init__(self, plugin, command, env, log):
        self.plugin = plugin
        self.command = command
        self.env = env
        self.log = log
        self.container_id = env.get("CNI_CONTAINERID", "")
        self.netns = env.get("CNI_NETNS", "")
        self.ifname = env.get("CNI_IFNAME", "")
        self.args_raw = env.get("CNI_ARGS", "")
        p = env.get("CNI_PATH", "")
        self.path = [d for d in p.split(":") if d]
        self.netns_fd = None
        self.netns_gone = False
        self.stdin = b""
        self.conf = {}
        self.version = version.CURRENT
        self._cni_args = None

    @property
    def cni_args(self):
        """CNI_ARGS as a dict, checked against the plugin's known keys."""
        if self._cni_args is None:
            from cnilib.cni.args import parse_cni_args
            self._cni_args = parse_cni_args(self.args_raw, self.plugin.cni_args)
        return self._cni_args

    @property
    def name(self):
        return self.conf.get("name", "")

    def close(self):
        if self.netns_fd is not None:
            os.close(self.netns_fd)
            self.netns_fd = None


class Plugin:
    """A plugin: its name, its verb handlers and the CNI_ARGS keys it knows.

    Handlers take a CmdArgs.  ADD returns a cnilib.cni.types.Result; the other
    verbs return None.  A verb without a handler succeeds doing nothing
    (what Go's skel does for GC/STATUS).
    """

    def __init__(self, name, add=None, delete=None, check=None, gc=None, status=None,
                 cni_args=(), uses_netns=True):
        self.name = name
        self.handlers = {"ADD": add, "DEL": delete, "CHECK": check, "GC": gc, "STATUS": status}
        self.cni_args = frozenset(cni_args)
        self.uses_netns = uses_netns


def about(plugin):
    return "CNI %s plugin (pycni %s); CNI protocol versions supported: %s\n" % (
        plugin.name, version.SUITE_VERSION, ", ".join(version.SUPPORTED))


def _check_env(env, command):
    if command not in VERBS:
        raise errors.InvalidEnvironment(
            "unknown CNI_COMMAND %r" % command[:40],
            "expected one of %s" % ", ".join(VERBS))
    missing = [k for k, verbs in REQUIRED.items() if command in verbs and not env.get(k)]
    if missing:
        raise errors.InvalidEnvironment(
            "required environment variables %s missing for %s" % (",".join(missing), command),
            "libcni sends empty values for GC/STATUS/VERSION; %s needs them set" % command)
    if command in ("ADD", "DEL", "CHECK"):
        check_container_id(env["CNI_CONTAINERID"])
        check_ifname(env["CNI_IFNAME"])
        if env.get("CNI_ARGS"):
            from cnilib.cni.args import parse_cni_args
            parse_cni_args(env["CNI_ARGS"], known=None)   # syntax; keys are per plugin


def read_stdin(fd):
    """Stdin up to MAX_STDIN + 1 bytes (execute refuses anything longer)."""
    chunks, total = [], 0
    while total <= MAX_STDIN:
        try:
            b = os.read(fd, 65536)
        except OSError as exc:
            raise errors.IOFailure("cannot read the network config from stdin: %s" % exc.strerror) from exc
        if not b:
            break
        total += len(b)
        chunks.append(b)
    return b"".join(chunks)


def _check_size(data):
    if len(data) > MAX_STDIN:
        raise errors.DecodingFailure(
            "network config on stdin is over %d bytes" % MAX_STDIN,
            "expected a CNI network config of a few kilobytes")
    return data


def _parse_conf(data):
    try:
        conf = jsonio.loads(data)
    except jsonio.JSONError as exc:
        raise errors.DecodingFailure(
            "cannot decode the network config on stdin: %s" % exc,
            "expected a JSON object") from None
    if not isinstance(conf, dict):
        raise errors.DecodingFailure(
            "network config on stdin is a JSON %s, expected a JSON object" % type(conf).__name__)
    return conf


def _open_netns(a, env):
    if not a.netns:
        return
    override = env.get("CNI_NETNS_OVERRIDE", "").lower() in ("1", "true")
    if not a.plugin.uses_netns:
        # never entered, but a runtime that hands the host's netns to the
        # chain is refused by every plugin in it alike (two stat calls)
        if not override and _is_own_path(a.netns):
            raise _own_netns(a)
        return
    from cnilib.kernel import netns
    try:
        a.netns_fd = netns.open_netns(a.netns)
    except netns.NetNSGone:
        if a.command in ("DEL",):
            a.netns_gone = True
            return
        raise errors.InvalidNetNS(
            "container netns %r does not exist" % a.netns,
            "expected the path of a live network namespace") from None
    if not override and netns.is_own(a.netns_fd):
        raise _own_netns(a)


def _own_netns(a):
    return errors.InvalidNetNS(
        "CNI_NETNS %r is the plugin's own network namespace" % a.netns,
        "refusing to %s there (a stale /proc/<pid>/ns/net path can point at the host); "
        "expected the container's network namespace" % a.command)


def _is_own_path(path):
    try:
        a = os.stat(path)
        b = os.stat("/proc/thread-self/ns/net")
    except (OSError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def execute(plugin, env, stdin_fd=0, stdin_data=None):
    """Run one CNI command.  Returns (exit code, stdout bytes)."""
    t0 = time.perf_counter()
    log = Log(plugin.name, env)
    command = env.get("CNI_COMMAND", "")
    if not command:
        return 0, about(plugin).encode()
    a = CmdArgs(plugin, command, env, log)
    out_version = version.CURRENT
    rc, out, trace, outcome = 0, b"", None, "ok"
    try:
        _check_env(env, command)
        if command == "VERSION":
            try:
                data = stdin_data if stdin_data is not None else read_stdin(stdin_fd)
                v = jsonio.loads(data).get("cniVersion") if data.strip() else None
            except (errors.CniError, ValueError, AttributeError):
                v = None
            v = v if v in version.SUPPORTED else version.CURRENT
            out = jsonio.dumps({"cniVersion": v, "supportedVersions": list(version.SUPPORTED)}) + "\n"
            return 0, out.encode()
        a.stdin = _check_size(stdin_data if stdin_data is not None else read_stdin(stdin_fd))
        a.conf = conf = _parse_conf(a.stdin)
        log.configure(conf)
        check_network_name(conf.get("name"))
        v = conf.get("cniVersion")
        if v in (None, ""):
            v = "0.1.0"
        if not isinstance(v, str):
            raise errors.DecodingFailure("cniVersion is a %s, expected a string such as \"1.0.0\""
                                         % type(v).__name__)
        version.check_supported(v)
        a.version = out_version = v
        version.check_verb(command, v)
        _open_netns(a, env)
        handler = plugin.handlers.get(command)
        result = handler(a) if handler is not None else None
        if command == "ADD":
            if result is None:
                raise errors.Internal("%s ADD produced no result" % plugin.name)
            out = (jsonio.dumps(result.to_dict(v)) + "\n").encode()
    except errors.CniError as exc:
        rc = 1
        out = (jsonio.dumps(exc.to_dict(out_version)) + "\n").encode()
        outcome = "error code=%d %s" % (exc.code, _q(exc.msg))
        if exc.__cause__ is not None or exc.code == 999:
            trace = _trace()
    except Exception as exc:
        rc = 1
        err = errors.Internal(_one_line(exc))
        out = (jsonio.dumps(err.to_dict(out_version)) + "\n").encode()
        outcome = "error code=999 %s" % _q(err.msg)
        trace = _trace()
    finally:
        a.close()
        ms = (time.perf_counter() - t0) * 1000
        net = a.conf.get("name") if isinstance(a.conf, dict) else ""
        log.flush("%s %s[%d] %s net=%s cid=%s if=%s %s %.1fms" % (
            stamp(), plugin.name, os.getpid(), command, _field(net),
            _field(a.container_id), _field(a.ifname), outcome, ms), trace)
    return rc, out


def _field(v):
    """A summary-line field: one token, escaped (flush escapes the line too;
    cutting first keeps a long refused value from flooding the log)."""
    if not v or not isinstance(v, str):
        return "-"
    return printable(v[:64]).replace(" ", "_")


def _q(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")[:300]


def _one_line(exc):
    text = str(exc).replace("\n", " ").strip()
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _trace():
    import traceback
    return traceback.format_exc()


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def run(plugin, argv=(), stdin=None):
    """Entry point for an exec'd plugin; returns the exit code."""
    if len(argv) > 1 and argv[1] in ("--version", "-v", "version"):
        write_all(1, about(plugin).encode())
        return 0
    rc, out = execute(plugin, os.environ, stdin_data=stdin)
    if out:
        try:
            write_all(1, out)
        except OSError:
            return 1
    return rc
