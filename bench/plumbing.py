"""The moving parts of a run: variants, the Go libcni driver, the exec
timers, the private agent, and the machine description."""

import hashlib
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GOCODE = "/usr/share/gocode"


class Variant:
    """One way of running the plugins: a plugin dir, extra env, a host netns.

    ``name`` is the key (go, py, bin, agent); ``label`` what the table shows.
    """

    def __init__(self, name, label, plugin_dir, env=None, shows_version=True):
        self.name, self.label, self.dir = name, label, plugin_dir
        self.env = dict(env or {})
        self.shows_version = shows_version
        self.host = None          # host netns name, set by the run
        self.tmp = None
        self.unavailable = None   # why this variant cannot run at all

    def has(self, *plugins):
        return self.unavailable is None and all(
            os.access(os.path.join(self.dir, p), os.X_OK) for p in plugins)

    def missing(self, *plugins):
        return [p for p in plugins if not os.access(os.path.join(self.dir, p), os.X_OK)]

    def path(self, *parts):
        p = os.path.join(self.tmp, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    @property
    def ipam_dir(self):
        return os.path.join(self.tmp, "ipam")

    @property
    def cache_dir(self):
        return os.path.join(self.tmp, "cache")

    @property
    def state_dirs(self):
        return [os.path.join(self.tmp, "state"), os.path.join(self.tmp, "run")]

    def plugin_env(self):
        """Env every plugin exec of this variant gets besides CNI_*."""
        env = {"PATH": SYSTEM_PATH}
        env.update(self.env)
        return env


def suite_env(tmp, extra=None):
    """State paths of our plugins under ``tmp`` (never the machine's)."""
    env = {"PYCNI_STATE_DIR": os.path.join(tmp, "state"), "PYCNI_RUN_DIR": os.path.join(tmp, "run"),
           "PYCNI_LOG": os.path.join(tmp, "log", "pycni.log"), "PYCNI_AGENT_SOCKET": "off"}
    env.update(extra or {})
    for k in ("PYCNI_STATE_DIR", "PYCNI_RUN_DIR"):
        os.makedirs(env[k], exist_ok=True)
    os.makedirs(os.path.dirname(env["PYCNI_LOG"]), exist_ok=True)
    return env


# ---- the Go driver

def build_go(out_dir=None, log=print):
    """Build bench/libcni/main.go (GOPATH mode, Debian's libcni); cached by
    the source's hash.  Returns the binary's path."""
    src = os.path.join(HERE, "libcni", "main.go")
    out_dir = out_dir or os.path.join(ROOT, "build", "bench")
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    exe = os.path.join(out_dir, "pycni-bench-libcni-" + digest)
    if os.access(exe, os.X_OK):
        return exe
    if not os.path.isdir(os.path.join(GOCODE, "src/github.com/containernetworking/cni/libcni")):
        raise RuntimeError("libcni is missing from %s: apt-get install golang-github-appc-cni-dev" % GOCODE)
    os.makedirs(out_dir, exist_ok=True)
    env = {"PATH": SYSTEM_PATH, "HOME": out_dir, "GO111MODULE": "off", "CGO_ENABLED": "0",
           "GOPATH": os.path.join(out_dir, "gopath") + ":" + GOCODE,
           "GOCACHE": os.path.join(out_dir, "gocache"), "GOFLAGS": ""}
    log("building the libcni driver (go build, GOPATH mode)")
    p = subprocess.run(["go", "build", "-o", exe + ".tmp", "main.go"], cwd=os.path.dirname(src),
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("go build of bench/libcni failed:\n" + p.stderr.strip())
    os.rename(exe + ".tmp", exe)
    return exe


def run_go(exe, netns, spec, inroot=None):
    """Run the driver under ``ip netns exec netns`` (chrooted into a root
    when ``inroot`` is given) with ``spec``; its JSON.  Its stderr
    (progress, fatal errors) goes to ours."""
    argv = inroot.argv(exe, netns=netns) if inroot else ["ip", "netns", "exec", netns, exe]
    p = subprocess.run(argv, input=json.dumps(spec), stdout=subprocess.PIPE, text=True,
                       env={"PATH": SYSTEM_PATH})
    if p.returncode != 0:
        raise RuntimeError("libcni driver failed (rc %d): see its message above" % p.returncode)
    return json.loads(p.stdout)["variants"]


def go_variant_spec(v, conflist, containers, ifname="eth0", capability_args=None, types=None):
    return {"name": v.name, "path": [v.dir], "sandbox": "/var/run/netns/" + v.host,
            "env": ["%s=%s" % kv for kv in sorted(v.env.items())], "cacheDir": v.cache_dir,
            "conflist": conflist, "containers": containers, "ifname": ifname,
            "capabilityArgs": capability_args or {}, "types": types or []}


# ---- direct exec timers

class Spawner:
    """bench/spawn.py running in one variant's host netns; with ``inroot``,
    chrooted into that root on the root's python3, from ``spawn_py`` (a
    path the root sees)."""

    def __init__(self, netns, inroot=None, spawn_py=None):
        if inroot is not None:
            argv = inroot.argv("python3", "-I", "-S", spawn_py, netns=netns)
        else:
            argv = ["ip", "netns", "exec", netns, sys.executable, "-I", "-S", os.path.join(HERE, "spawn.py")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={"PATH": SYSTEM_PATH})

    def run(self, exe, env, stdin=""):
        self.proc.stdin.write(json.dumps({"argv": [exe], "env": env, "stdin": stdin}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the exec timer stopped (rc %s)" % self.proc.poll())
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cni_env(v, command, container_id="", netns="", ifname="eth0"):
    env = v.plugin_env()
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
                "CNI_IFNAME": ifname, "CNI_PATH": v.dir})
    return env


# ---- the private agent

def launcher_python(py_dir):
    """The interpreter the dist/py launchers run on (their shebang)."""
    for name in sorted(os.listdir(py_dir)):
        p = os.path.join(py_dir, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                first = f.readline()
            if first.startswith(b"#!") and b"python" in first:
                return first[2:].split()[0].decode()
    return None


class Agent:
    """A private ``pycni agent`` on the dist/py tree, in a sandbox netns."""

    def __init__(self, py_dir, netns, tmp):
        self.sock = os.path.join(tmp, "agent", "agent.sock")
        self.logpath = os.path.join(tmp, "agent.log")
        python = launcher_python(py_dir)
        if python is None:
            raise RuntimeError("no launcher in %s to take the interpreter from" % py_dir)
        env = {"PATH": SYSTEM_PATH, "PYTHONPATH": os.path.join(py_dir, "pycni.d")}
        self.log = open(self.logpath, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, python, "-S", "-m", "cnilib.agent.server", "--socket", self.sock],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/")
        for _ in range(400):
            if os.path.exists(self.sock) or self.proc.poll() is not None:
                break
            time.sleep(0.025)
        if not os.path.exists(self.sock):
            self.close()
            with open(self.logpath) as f:
                raise RuntimeError("the agent did not start: " + f.read().strip()[-500:])

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---- the machine

def _first(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cmd(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return p.stdout.strip() if p.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def retarget(py_dir, python):
    """Point every launcher of the dist/py copy ``py_dir`` at ``python``
    (as pycni install does when it finds another interpreter)."""
    for name in os.listdir(py_dir):
        p = os.path.join(py_dir, name)
        if not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            text = f.read()
        if text.startswith(b"#!") and b"pycni-launcher" in text[:300]:
            rest = text.split(b"\n", 1)[1]
            with open(p + ".new", "wb") as f:
                f.write(b"#!" + python.encode() + b" -IS\n" + rest)
            os.chmod(p + ".new", 0o755)
            os.rename(p + ".new", p)


def root_info(inroot):
    """The distribution, glibc and python3 of a root, read inside it."""
    p = subprocess.run(inroot.argv("python3", "-I", "-S", "-c",
                                   "import platform, sys\n"
                                   "print(platform.python_version(), platform.libc_ver()[1])\n"
                                   "print(open('/etc/debian_version').read().strip())"),
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("the root does not run python3: " + p.stderr.strip()[-300:])
    lines = p.stdout.splitlines()
    py, libc = lines[0].split()
    return {"python": py, "glibc": libc, "debian": lines[1]}


def machine(py_dir=None, root=None):
    """What the table's figures depend on; ``root``: root_info() of the
    root the plugins run in."""
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg()[0],
    }
    interp = launcher_python(py_dir) if py_dir and os.path.isdir(py_dir) else None
    if root:
        info["root"] = root
        if interp:
            info["plugin_python"] = root["python"]
            info["plugin_interpreter"] = interp
    elif interp:
        info["plugin_python"] = _cmd([interp,
                                      "-I", "-S", "-c", "import platform; print(platform.python_version())"])
        info["plugin_interpreter"] = interp
    info["go_plugins"] = _cmd(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"])
    info["libcni"] = _cmd(["dpkg-query", "-W", "-f", "${Version}", "golang-github-appc-cni-dev"])
    info["go"] = _cmd(["go", "env", "GOVERSION"])
    return info
