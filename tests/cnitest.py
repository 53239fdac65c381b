"""Test helpers shared by every tier: sandboxes, plugin runs, result checks.

Integration tests never touch the machine's root network namespace or its
CNI state: every plugin runs under ``ip netns exec <host netns>`` where the
host netns is one a test made, and every state path (dataDir, result cache,
log, subnet file) points into a temp dir.
"""

import json
import os
import subprocess
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = os.path.join(ROOT, "dist")
GO_CNI = "/usr/lib/cni"
ALL_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def forms():
    """Install forms under test: PYCNI_FORMS=py,bin (default both)."""
    want = os.environ.get("PYCNI_FORMS", "py,bin").split(",")
    return [f for f in want if f]


def plugin_dir(form):
    return os.path.join(DIST, form)


def read_text(path):
    """The file's text, or "" when it does not exist (a log nothing wrote yet)."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def is_root():
    return os.geteuid() == 0


def pydantic_why(module="pydantic"):
    """Why ``module`` (pydantic, pydantic_core) may be missing, for
    ``pytest.importorskip(reason=...)``: the unit tier also runs on Debian
    11's python3 3.9, whose pinned test packages (requirements-py39.txt)
    have no pydantic, as pydantic 2.14 needs Python 3.10+."""
    import sys
    if sys.version_info < (3, 10):
        return ("%s is not installed: pydantic 2.14 (requirements.txt) needs Python >= 3.10, this is "
                "%d.%d (requirements-py39.txt has no pydantic)" % ((module,) + tuple(sys.version_info[:2])))
    return "%s is not installed (pip install -r requirements.txt)" % module


def sh(*argv, check=True, input=None, netns=None, env=None, timeout=60):
    """Run a command (optionally inside netns) and return CompletedProcess (text)."""
    argv = [str(a) for a in argv]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    return subprocess.run(argv, input=input, capture_output=True, text=True,
                          check=check, env=env, timeout=timeout)


def unique(prefix="pt"):
    return "%s%s" % (prefix, uuid.uuid4().hex[:8])


# Every netns this process makes is written to a registry file named by its
# pid, and struck off when deleted.  Fixtures delete their netns on failure
# too, but a pytest killed outright (SIGKILL, a wedged run stopped from
# outside) runs no teardown: the next session deletes what a dead process's
# registry still lists (``sweep_dead_registries``), and never touches the
# netns of a live one (other test runs share the machine).
REGISTRY_DIR = os.path.join("/run", "pycni-test-netns")
_live = set()


def _registry_path(pid=None):
    return os.path.join(REGISTRY_DIR, "%d" % (pid or os.getpid()))


def _register(name, live):
    if live:
        _live.add(name)
    else:
        _live.discard(name)
    try:
        os.makedirs(REGISTRY_DIR, 0o700, exist_ok=True)
        tmp = _registry_path() + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(n + "\n" for n in sorted(_live)))
        os.replace(tmp, _registry_path())
    except OSError:
        pass            # the registry is a safety net: a test never fails for it


def live_netns():
    """Names of the netns this process made and has not deleted."""
    return sorted(_live)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_registries():
    """Delete the netns listed by the registry of a test process that is
    gone; returns their names."""
    swept = []
    try:
        entries = os.listdir(REGISTRY_DIR)
    except OSError:
        return swept
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid() or _pid_alive(int(entry)):
            continue
        path = os.path.join(REGISTRY_DIR, entry)
        try:
            with open(path) as f:
                names = f.read().split()
        except OSError:
            continue
        for name in names:
            if name.isprintable() and "/" not in name and os.path.exists("/run/netns/" + name):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
                swept.append(name)
        try:
            os.unlink(path)
        except OSError:
            pass
    return swept


def delete_live_netns():
    """Delete every netns this process made and still holds (session end:
    what a fixture failed to clean up); returns their names."""
    left = live_netns()
    for name in left:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        _register(name, False)
    try:
        if not _live:
            os.unlink(_registry_path())
    except OSError:
        pass
    return left


class Netns:
    """A network namespace made for one test; ``delete()`` is idempotent.
    A constructor that fails after ``ip netns add`` deletes what it made (a
    factory never sees the object, so nothing else would)."""

    def __init__(self, name=None, lo_up=True):
        self.name = name or unique("pt")
        try:
            sh("ip", "netns", "add", self.name)
        except subprocess.CalledProcessError:
            raise               # not made (the name is taken): not ours to delete
        except BaseException:   # a timeout or an interrupt: it may have been made
            self.delete()
            raise
        _register(self.name, True)
        try:
            if lo_up:
                sh("ip", "link", "set", "lo", "up", netns=self.name)
        except BaseException:
            self.delete()
            raise

    @property
    def path(self):
        return "/var/run/netns/" + self.name

    def run(self, *argv, **kw):
        return sh(*argv, netns=self.name, **kw)

    def links(self):
        out = self.run("ip", "-j", "link", "show").stdout
        return {line["ifname"]: line for line in json.loads(out or "[]")}

    def addrs(self, dev):
        out = self.run("ip", "-j", "addr", "show", "dev", dev).stdout
        return [("%s/%d" % (a["local"], a["prefixlen"])) for line in json.loads(out or "[]")
                for a in line.get("addr_info", [])]

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        _register(self.name, False)


class PluginRun:
    """Outcome of one plugin exec."""

    def __init__(self, rc, stdout, stderr):
        self.rc, self.stdout, self.stderr = rc, stdout, stderr

    @property
    def json(self):
        return json.loads(self.stdout) if self.stdout.strip() else None

    def __repr__(self):
        return "PluginRun(rc=%d, stdout=%r, stderr=%r)" % (self.rc, self.stdout[:500], self.stderr[:500])


def run_plugin(exe, command, conf, containerid="", netns="", ifname="", args="",
               path="", host_netns=None, extra_env=None, timeout=60):
    """Exec a CNI plugin as a runtime would.  ``conf`` is a dict or bytes/str."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command, "CNI_CONTAINERID": containerid, "CNI_NETNS": netns,
        "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": path,
    }
    for k in ("PYCNI_LOG", "PYCNI_LOG_LEVEL", "PYCNI_AGENT_SOCKET"):
        if k in os.environ:
            env[k] = os.environ[k]
    if extra_env:
        env.update(extra_env)
    data = conf if isinstance(conf, (bytes, str)) else json.dumps(conf)
    if isinstance(data, str):
        data = data.encode()
    argv = [exe]
    if host_netns:
        argv = ["ip", "netns", "exec", host_netns] + argv
    p = subprocess.run(argv, input=data, capture_output=True, env=env, timeout=timeout)
    return PluginRun(p.returncode, p.stdout.decode("utf-8", "replace"),
                     p.stderr.decode("utf-8", "replace"))


def assert_cni_error(run, code):
    """A well-formed CNI error: exit 1, JSON on stdout with the code, no traceback."""
    assert run.rc == 1, run
    err = run.json
    assert isinstance(err, dict), run
    assert err.get("code") == code, run
    assert isinstance(err.get("msg"), str) and err["msg"], run
    assert "\n" not in err["msg"], run
    assert "Traceback" not in run.stdout and "Traceback" not in run.stderr, run
    assert "cniVersion" in err, run
    return err


# ---- fake plugins and the libcni result cache (runner tests)

FAKE_PLUGIN = os.path.join(ROOT, "tests", "fakeplugin.py")


def install_fake_plugins(d, *names):
    """Install tests/fakeplugin.py in ``d`` under each of ``names`` (its type)."""
    import sys
    os.makedirs(d, exist_ok=True)
    with open(FAKE_PLUGIN) as f:
        body = f.read()
    for n in names:
        p = os.path.join(d, n)
        with open(p, "w") as f:
            f.write("#!%s -I\n%s" % (sys.executable, body))
        os.chmod(p, 0o755)
    return str(d)


def fake_calls(record):
    """The calls fake plugins recorded in ``record``, oldest first; each with
    its stdin parsed as ``conf``."""
    if not os.path.exists(record):
        return []
    with open(record) as f:
        calls = [json.loads(line) for line in f if line.strip()]
    for c in calls:
        c["conf"] = json.loads(c["stdin"]) if c["stdin"].strip() else None
    return calls


def cache_file(cache_dir, network, cid, ifname):
    return os.path.join(str(cache_dir), "results", "%s-%s-%s" % (network, cid, ifname))


# ---- two nodes joined by an underlay (flannel fabric and demo tests)

UNDERLAY4 = ("192.0.2.1", "192.0.2.2")      # TEST-NET-1
UNDERLAY6 = ("2001:db8::1", "2001:db8::2")  # documentation prefix


def join_underlay(n1, n2, v6=False, mtu=1500):
    """Connect node netns ``n1`` and ``n2`` with a veth named eth0 on both
    sides: 192.0.2.1/24 and 192.0.2.2/24, plus 2001:db8::1/64 and ::2 (no
    DAD) with ``v6``.  Made inside n1, so the root netns never sees it."""
    n1.run("ip", "link", "add", "eth0", "mtu", mtu, "type", "veth", "peer", "name", "eth0",
           "mtu", mtu, "netns", n2.name)
    for i, ns in enumerate((n1, n2)):
        ns.run("ip", "addr", "add", UNDERLAY4[i] + "/24", "dev", "eth0")
        if v6:
            ns.run("ip", "addr", "add", UNDERLAY6[i] + "/64", "dev", "eth0", "nodad")
        ns.run("ip", "link", "set", "eth0", "up")


def run_fabric(node, *args, env=None):
    """``python -m cnilib.ops.fabric ARGS`` inside node netns ``node`` (from the source tree)."""
    import sys
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(["ip", "netns", "exec", node.name, sys.executable, "-m", "cnilib.ops.fabric"]
                          + [str(a) for a in args], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=120)


# ---- a JSON Schema subset (doctor/whois reports)

def schema_errors(schema, value, path="$"):
    """Where ``value`` breaks ``schema``: the JSON Schema keywords pycni's
    report schemas use (type, const, enum, required, properties,
    additionalProperties false, items, pattern, minimum)."""
    import re
    out = []
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        pytypes = {"object": dict, "array": list, "string": str, "boolean": bool,
                   "null": type(None), "number": (int, float)}
        ok = any((isinstance(value, int) and not isinstance(value, bool)) if t == "integer"
                 else isinstance(value, pytypes[t]) and not (t == "number" and isinstance(value, bool))
                 for t in names)
        if not ok:
            return ["%s: %r is not %s" % (path, value, types)]
    if "const" in schema and value != schema["const"]:
        out.append("%s: %r != %r" % (path, value, schema["const"]))
    if "enum" in schema and value not in schema["enum"]:
        out.append("%s: %r not in %r" % (path, value, schema["enum"]))
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        out.append("%s: %r does not match %s" % (path, value, schema["pattern"]))
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        out.append("%s: %r < %r" % (path, value, schema["minimum"]))
    if isinstance(value, dict):
        for k in schema.get("required", ()):
            if k not in value:
                out.append("%s: %r missing" % (path, k))
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                out += schema_errors(props[k], v, "%s.%s" % (path, k))
            elif schema.get("additionalProperties") is False:
                out.append("%s: unexpected key %r" % (path, k))
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += schema_errors(schema["items"], v, "%s[%d]" % (path, i))
    return out


# ---- file trees (install tests)


def tree_snapshot(*dirs, dir_times=True):
    """Every entry under ``dirs`` with inode, mode, mtime, ctime and size:
    equal snapshots mean nothing was written, renamed or replaced there.
    ``dir_times=False`` leaves out the times of directories (a refused
    install may make and remove a temp entry; every file still counts)."""
    import stat
    out = {}
    for d in dirs:
        d = str(d)
        for dirpath, dirnames, files in os.walk(d):
            for name in [""] + dirnames + files:
                p = os.path.join(dirpath, name) if name else dirpath
                st = os.lstat(p)
                v = (st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
                if not dir_times and stat.S_ISDIR(st.st_mode):
                    v = (st.st_ino, st.st_mode, st.st_size)
                out[p] = v
    return out
