"""The protocol boundary: env and stdin in, a result or an error out.

``execute`` does everything a CNI exec does except touching the process's
stdio, so an in-process delegation (bridge running host-local without a
second exec) goes through exactly the same checks.  ``run`` wires it to the
real stdin/stdout.  Handlers return a ``Result`` (ADD) or None; only this
module writes stdout.

Order of checks, each with its spec code:
  CNI_COMMAND missing          -> about text, exit 0
  required env missing/invalid -> 4 (a control character or a byte that is
                                  not UTF-8 in any CNI_* value is invalid)
  VERSION                      -> version info (stdin is optional)
  stdin unreadable/oversized   -> 5 / 6, JSON malformed -> 6
  name missing or invalid      -> 7
  cniVersion unsupported       -> 1 (details list the supported versions)
  verb not allowed by version  -> 1
  CNI_NETNS not a network namespace (missing, a FIFO, a file) -> 4; the
    plugin's own netns -> 8 (plugins that never enter CNI_NETNS only refuse
    their own netns)

DEL of nothing always succeeds.  A DEL whose container ID, ifname, network
name or cniVersion ADD would refuse names an attachment that cannot exist:
it succeeds without running the handler, and the log says why.  A DEL's
CNI_ARGS are not needed (state is keyed by network, ID and ifname), so
garbage there is logged and ignored; a CNI_NETNS that is no network
namespace is treated as one that is gone.  Only stdin that is not a JSON
object, a missing required variable and the plugin's own netns still fail
a DEL.
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


def shown(value, limit=64):
    """A value from input as an error message quotes it: cut, quoted, and
    with control characters and non-UTF-8 bytes escaped."""
    cut = value[:limit] + ("..." if len(value) > limit else "")
    return '"%s"' % printable(cut)


def _unprintable(value):
    """What is wrong with a value holding characters isprintable refuses."""
    if any("\udc80" <= c <= "\udcff" for c in value):
        return "bytes that are not UTF-8"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return "control characters"
    return "characters that are not printable"


# Messages: libcni checks the container ID, the network name and the
# interface name itself before an ADD (utils.Validate*) and leaves the other
# verbs to the plugin, so the same problem reaches a runtime's log from
# either side; the message (the part before "; ") is libcni's, word for
# word, and the details name the variable and what was found.

def check_container_id(cid):
    if not _name_ok(cid):
        raise errors.InvalidEnvironment(
            "invalid characters in containerID",
            "CNI_CONTAINERID %s: expected letters, digits, '_', '.' or '-', starting with a letter "
            "or digit" % shown(cid))
    if len(cid) > MAX_ID:
        raise errors.InvalidEnvironment(
            "containerID is too long",
            "CNI_CONTAINERID is %d characters, expected at most %d: %s" % (len(cid), MAX_ID, shown(cid)))


def check_ifname(name):
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 15:
        raise errors.InvalidEnvironment(
            "interface name is too long",
            "CNI_IFNAME %s is %d bytes; Linux interface names are at most 15" % (shown(name), len(raw)))
    if name in (".", ".."):
        raise errors.InvalidEnvironment("interface name is . or ..", "CNI_IFNAME is %s" % shown(name))
    if any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise errors.InvalidEnvironment("interface name contains / or : or whitespace characters",
                                        "CNI_IFNAME is %s" % shown(name))
    if not name.isprintable():
        # the kernel takes any other byte, but the name goes to logs, terminals
        # (ip link, pycni whois) and state files: ESC or BEL there is an attack
        raise errors.InvalidEnvironment(
            "interface name contains %s" % _unprintable(name),
            "CNI_IFNAME is %s; expected printable UTF-8" % shown(name))


def check_network_name(name):
    if not isinstance(name, str) or not name:
        raise errors.InvalidConfig("missing network name",
                                   "the network config needs \"name\", a non-empty string")
    if not _name_ok(name):
        raise errors.InvalidConfig(
            "invalid characters found in network name",
            "name %s: expected letters, digits, '_', '.' or '-', starting with a letter or digit"
            % shown(name))
    if len(name) > MAX_NAME:
        raise errors.InvalidConfig(
            "network name is too long",
            "name is %d characters, expected at most %d: %s" % (len(name), MAX_NAME, shown(name)))


def check_printable(key, value):
    """CNI_NETNS, CNI_PATH, CNI_ARGS: any value goes, but not a control
    character or a byte that is not UTF-8 (no runtime sends one)."""
    if value and not value.isprintable():
        raise errors.InvalidEnvironment("%s contains %s" % (key, _unprintable(value)),
                                        "%s is %s" % (key, shown(value, 200)))


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
        """CNI_ARGS as a dict, checked against the plugin's known keys (on
        DEL, which needs none of them, an unknown key is no error)."""
        if self._cni_args is None:
            from cnilib.cni.args import parse_cni_args
            known = None if self.command == "DEL" else self.plugin.cni_args
            self._cni_args = parse_cni_args(self.args_raw, known)
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
    (what Go's skel does for GC/STATUS).  ``makes_ifname``: the plugin
    creates CNI_IFNAME in the container, so ``lo`` (always there) is refused
    on ADD and CHECK, and its DEL has nothing to delete.
    """

    def __init__(self, name, add=None, delete=None, check=None, gc=None, status=None,
                 cni_args=(), uses_netns=True, makes_ifname=False):
        self.name = name
        self.handlers = {"ADD": add, "DEL": delete, "CHECK": check, "GC": gc, "STATUS": status}
        self.cni_args = frozenset(cni_args)
        self.uses_netns = uses_netns
        self.makes_ifname = makes_ifname


def about(plugin):
    return "CNI %s plugin (pycni %s); CNI protocol versions supported: %s\n" % (
        plugin.name, version.SUITE_VERSION, ", ".join(version.SUPPORTED))


def _check_env(a, env, command):
    """Refuse what no verb can work with; for DEL, return instead the reason
    the attachment cannot exist (an ID, an ifname or a CNI_PATH ADD
    refuses), or None.

    A DEL must never fail for ever on a value its ADD would have refused:
    the runtime retries it and the pod never goes away.  Nothing was made
    for such an attachment, so there is nothing to delete.  A missing
    required variable stays an error: that is a broken runtime.
    """
    if command not in VERBS:
        raise errors.InvalidEnvironment(
            "unknown CNI_COMMAND %s" % shown(command, 40),
            "expected one of %s" % ", ".join(VERBS))
    missing = [k for k, verbs in REQUIRED.items() if command in verbs and not env.get(k)]
    if missing:
        raise errors.InvalidEnvironment(
            "required environment variables %s missing for %s" % (",".join(missing), command),
            "libcni sends empty values for GC/STATUS/VERSION; %s needs them set" % command)
    if command in ("GC", "STATUS"):
        check_printable("CNI_PATH", env.get("CNI_PATH", ""))
    if command not in ("ADD", "DEL", "CHECK"):
        return None
    try:
        check_container_id(env["CNI_CONTAINERID"])
        check_ifname(env["CNI_IFNAME"])
        check_printable("CNI_PATH", env.get("CNI_PATH", ""))     # no delegate could be found
        if a.plugin.makes_ifname and env["CNI_IFNAME"] == "lo":
            raise errors.InvalidEnvironment(
                "CNI_IFNAME lo is the container's loopback interface",
                "%s creates CNI_IFNAME in the container, and lo is always there (the loopback "
                "plugin brings it up); name another interface, such as eth0" % a.plugin.name)
    except errors.InvalidEnvironment as exc:
        if command == "DEL":
            return exc
        raise
    if command != "DEL":
        for key in ("CNI_NETNS", "CNI_ARGS"):
            check_printable(key, env.get(key, ""))
    if a.args_raw:
        from cnilib.cni.args import parse_cni_args
        try:
            check_printable("CNI_ARGS", a.args_raw)
            parse_cni_args(a.args_raw, known=None)   # syntax; keys are per plugin
        except errors.InvalidEnvironment as exc:
            if command != "DEL":
                raise
            # DEL needs no argument: the attachment is keyed by network, ID and ifname
            a.log.warning("CNI_ARGS ignored: %s; %s", exc.msg, exc.details)
            a.args_raw = ""
    return None


def _conf_version(conf):
    """The config's network name checked and its cniVersion, supported."""
    check_network_name(conf.get("name"))
    v = conf.get("cniVersion")
    if v in (None, ""):
        v = "0.1.0"
    if not isinstance(v, str):
        raise errors.DecodingFailure("cniVersion is a %s, expected a string such as \"1.0.0\""
                                     % type(v).__name__)
    version.check_supported(v)
    return v


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
        if a.command == "DEL":
            a.netns_gone = True
            return
        raise errors.InvalidEnvironment(
            "CNI_NETNS %s does not exist" % shown(a.netns, 200),
            "expected the path of a live network namespace") from None
    except errors.InvalidEnvironment as exc:
        if a.command != "DEL":
            raise
        # ADD refuses it, so nothing of ours is in there: clean up outside, as
        # for a netns that is gone
        a.log.warning("%s: cleaning up outside it", exc.msg)
        a.netns_gone = True
        return
    if not override and netns.is_own(a.netns_fd):
        raise _own_netns(a)


def _own_netns(a):
    return errors.InvalidNetNS(
        "CNI_NETNS %s is the plugin's own network namespace" % shown(a.netns, 200),
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
        nothing = _check_env(a, env, command)
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
        try:
            v = _conf_version(conf)
        except (errors.InvalidConfig, errors.DecodingFailure, errors.IncompatibleVersion) as exc:
            if command != "DEL":
                raise
            nothing = nothing or exc        # state is keyed by the name ADD refused
        if nothing is not None:
            # DEL of an attachment ADD would have refused: nothing of it exists
            log.warning("nothing to delete, as ADD refuses this: %s; %s", nothing.msg, nothing.details)
            outcome = "ok (nothing to delete)"
        else:
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
