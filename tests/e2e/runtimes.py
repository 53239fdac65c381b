"""Helpers for the runtime tier: real podman and containerd drive the suite.

Everything a runtime touches lives in a sandbox made for one test:

* a network namespace (``ip netns add``) that plays the node: the runtime's
  bridge, veths and firewall rules are made there, never in the machine's
  root netns;
* a mount namespace of its own, in which temp dirs are bound over /run,
  /var/lib, /etc/containers and /etc/cni: the runtime's state, libcni's
  result cache (/var/lib/cni/results) and host-local's leases
  (/var/lib/cni/networks) land in the test's temp dir, where the test can
  read them from outside;
* a PID namespace whose init (nsholder.py) takes every daemon and
  container with it when it exits.

The plugin directory handed to the runtime holds our plugins of the form
under test and nothing else: a type that is not built is an error.
"""

import io
import json
import os
import resource
import shutil
import subprocess
import tarfile
import time

import cnitest

HERE = os.path.dirname(os.path.abspath(__file__))
BUSYBOX = "/bin/busybox"


# ------------------------------------------------------------ plugin dir


def assemble_plugin_dir(form, dest, types):
    """Link each of ``types`` into ``dest`` from dist/<form> and return
    ``dest``; a type that is not built is an error (./build.sh)."""
    os.makedirs(dest, exist_ok=True)
    src_dir = cnitest.plugin_dir(form)
    for t in types:
        mine = os.path.join(src_dir, t)
        if not os.path.exists(mine):
            raise FileNotFoundError("plugin %s is not built in %s (./build.sh)" % (t, src_dir))
        os.symlink(mine, os.path.join(dest, t))
    return dest


# ------------------------------------------------------------ images


def busybox_rootfs_tar(extra_files=None):
    """A minimal root filesystem (busybox-static and its applet links) as tar bytes.

    What ``busybox --install -s`` would make in an empty dir, built in
    memory so no file outside the temp dir is written.
    """
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add_dir(name, mode=0o755):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 0
            tar.addfile(ti)

        def add_file(name, data, mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), mode, 0
            tar.addfile(ti, io.BytesIO(data))

        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev",
                  "run", "var", "var/www", "root"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        with open(BUSYBOX, "rb") as f:
            add_file("bin/busybox", f.read(), 0o755)
        for path in applets:
            if path == "bin/busybox" or "/" not in path:
                continue
            ti = tarfile.TarInfo(path)
            ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, "/bin/busybox", 0
            tar.addfile(ti)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add_file("var/www/index.html", b"pycni\n")
        for name, data in (extra_files or {}).items():
            add_file(name, data)
    return buf.getvalue()


def docker_archive(rootfs_tar, ref, entrypoint, cmd=None):
    """``docker save`` layout of a one-layer image (what ``ctr images import`` reads)."""
    import hashlib
    diff_id = "sha256:" + hashlib.sha256(rootfs_tar).hexdigest()
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": "/",
                   "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "pycni tests: busybox-static rootfs"}],
    }
    cfg = json.dumps(config).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in ((cfg_name, cfg), ("layer.tar", rootfs_tar),
                           ("manifest.json", json.dumps(manifest).encode())):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


# ------------------------------------------------------------ sandbox


def cgroup_mounts():
    """The machine's cgroup hierarchies, to mount again under the sandbox's /sys."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fstype, _src, opts = (post.split() + ["", "", ""])[:3]
            dst = pre.split()[4]
            if fstype in ("cgroup", "cgroup2") and dst.startswith("/sys/fs/cgroup"):
                keep = [o for o in opts.split(",") if o not in ("rw", "ro")]
                out.append({"fstype": fstype, "dst": dst, "options": ",".join(keep) or "defaults"})
    if any(m["fstype"] == "cgroup" for m in out):
        # hybrid: show the v1 hierarchies only (crun refuses hybrid mode
        # unless every controller is dropped from the v2 one)
        out = [m for m in out if m["fstype"] == "cgroup"]
    return out


def has_cap(bit):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


CAP_SYS_RESOURCE = 24


def pinned_ulimits():
    """podman's default ulimits raise nofile/nproc to the kernel's maximum,
    which needs CAP_SYS_RESOURCE; without it, pin them to what we have."""
    out = []
    for name, res in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, hard = resource.getrlimit(res)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        soft = hard if soft == resource.RLIM_INFINITY else min(soft, hard)
        out.append("%s=%d:%d" % (name, soft, hard))
    return out


class Sandbox:
    """A node for one runtime: netns + private mounts + PID namespace (see module doc)."""

    def __init__(self, tmp, binds):
        self.tmp = tmp
        self.netns = cnitest.Netns(cnitest.unique("rt"))
        self.holder = None
        self.pid = None
        self.log = open(os.path.join(tmp, "sandbox.log"), "a")
        try:
            self._start(binds)
        except BaseException:
            self.close()
            raise

    def _start(self, binds):
        spec = {"binds": [{"src": s, "dst": d} for s, d in binds], "cgroups": cgroup_mounts()}
        spec_path = os.path.join(self.tmp, "sandbox.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns.name,
             "unshare", "-m", "-p", "-f", "--mount-proc", "--propagation", "private",
             "/usr/bin/python3", "-I", os.path.join(HERE, "nsholder.py"), spec_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError("sandbox holder did not start: %r (see %s)" % (line, self.log.name))
        self.pid = self._init_pid()

    def _init_pid(self):
        """The holder's PID as seen from here: unshare's only child."""
        for _ in range(100):
            try:
                with open("/proc/%d/task/%d/children" % (self.holder.pid, self.holder.pid)) as f:
                    kids = f.read().split()
            except FileNotFoundError:
                kids = []
            if kids:
                return int(kids[0])
            time.sleep(0.05)
        raise RuntimeError("cannot find the sandbox's init process")

    def argv(self, argv, wd=None):
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "-p", "--wd=%s" % (wd or self.tmp)] + \
            [str(a) for a in argv]

    def run(self, *argv, env=None, check=True, timeout=120, input=None):
        """Run a command inside the sandbox; log it and its output."""
        full = self.argv(argv)
        t0 = time.monotonic()
        p = subprocess.run(full, env=env, input=input, capture_output=True, text=True, timeout=timeout)
        self.log.write("$ %s  [rc=%d %.1fs]\n%s%s" % (" ".join(map(str, argv)), p.returncode,
                                                      time.monotonic() - t0, p.stdout, p.stderr))
        self.log.flush()
        if check and p.returncode != 0:
            raise AssertionError("%s failed (rc=%d):\n%s\n%s" % (" ".join(map(str, argv)),
                                                                p.returncode, p.stdout, p.stderr))
        return p

    def popen(self, *argv, env=None, stdout=None, stderr=None):
        return subprocess.Popen(self.argv(argv), env=env, stdin=subprocess.DEVNULL,
                                stdout=stdout or self.log, stderr=stderr or self.log)

    def close(self):
        if self.holder is not None and self.holder.poll() is None:
            try:
                self.holder.stdin.close()
                self.holder.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                if self.pid:
                    try:
                        os.kill(self.pid, 9)
                    except ProcessLookupError:
                        pass
                self.holder.kill()
                self.holder.wait()
        self.netns.delete()
        self.log.close()


class Podman:
    """podman configured to live in one sandbox (see tests/e2e/test_podman.py):
    CNI backend with ``plugin_dir``, cgroups disabled (crun refuses this
    machine's hybrid layout), ulimits pinned below the hard limits, vfs
    storage and every state dir in ``tmp``."""

    def __init__(self, tmp, plugin_dir):
        self.tmp = tmp
        root = os.path.join(tmp, "root")
        self.etc = os.path.join(root, "etc-containers")
        self.var_lib = os.path.join(root, "var-lib")
        self.net_d = os.path.join(tmp, "net.d")
        os.makedirs(self.etc)
        os.makedirs(self.net_d)
        self._write_config(plugin_dir)
        # podman's cleanup runs (conmon's exit command) do not inherit our
        # env: the suite logs to its default path, in the private /var/log
        self.log = os.path.join(root, "var-log", "pycni", "pycni.log")
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": tmp, "TMPDIR": "/run/tmp"}
        self.sandbox = Sandbox(tmp, [
            (os.path.join(root, "run"), "/run"), (self.var_lib, "/var/lib"),
            (os.path.join(root, "var-log"), "/var/log"),
            (self.etc, "/etc/containers"), (os.path.join(root, "etc-cni"), "/etc/cni")])
        os.makedirs(os.path.join(root, "run", "tmp"), exist_ok=True)

    def _write_config(self, plugin_dir):
        ulimits = "" if has_cap(CAP_SYS_RESOURCE) else \
            "default_ulimits = %s\n" % json.dumps(pinned_ulimits())
        files = {
            "containers.conf": (
                '[containers]\ncgroups = "disabled"\nlog_driver = "k8s-file"\n%s'
                '[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["%s"]\n'
                'network_config_dir = "%s"\n'
                '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                'events_logfile_path = "%s/events.log"\ntmp_dir = "/run/libpod"\n'
                % (ulimits, plugin_dir, self.net_d, self.tmp)),
            "storage.conf": ('[storage]\ndriver = "vfs"\ngraphroot = "%s/graph"\n'
                             'runroot = "/run/containers/storage"\n' % self.tmp),
            "policy.json": '{"default": [{"type": "insecureAcceptAnything"}]}\n',
            "registries.conf": "unqualified-search-registries = []\n",
        }
        for name, text in files.items():
            with open(os.path.join(self.etc, name), "w") as f:
                f.write(text)

    def __call__(self, *argv, check=True, timeout=120):
        return self.sandbox.run("podman", *argv, env=self.env, check=check, timeout=timeout)

    def inspect(self, name):
        return json.loads(self("inspect", name).stdout)[0]

    def close(self):
        self("rm", "-a", "-f", "-t", "0", check=False, timeout=60)
        self.sandbox.close()


# ------------------------------------------------------------ shared checks


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)


def short_tmp(prefix):
    """A temp dir with a short path: unix socket paths must stay under 108 bytes."""
    import tempfile
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    return d


def connect_client(sandbox_ns, client_ns, sandbox_ip="10.199.0.1", client_ip="10.199.0.2"):
    """A veth between the sandbox ("the node") and a client netns ("another machine")."""
    cnitest.sh("ip", "link", "add", "cli0", "type", "veth", "peer", "name", "eth0",
               "netns", client_ns.name, netns=sandbox_ns.name)
    cnitest.sh("ip", "addr", "add", sandbox_ip + "/24", "dev", "cli0", netns=sandbox_ns.name)
    cnitest.sh("ip", "link", "set", "cli0", "up", netns=sandbox_ns.name)
    client_ns.run("ip", "addr", "add", client_ip + "/24", "dev", "eth0")
    client_ns.run("ip", "link", "set", "eth0", "up")
    client_ns.run("ip", "route", "add", "default", "via", sandbox_ip)
    return sandbox_ip


def http_get(url, netns=None, sandbox=None):
    """GET ``url`` from a netns or inside the sandbox; the body, or None.

    Python's urllib, not busybox wget: the static busybox crashes in glibc's
    NSS code on this host (inside the containers it has no nsswitch.conf).
    """
    argv = ["/usr/bin/python3", "-I", "-c",
            "import sys, urllib.request as u\n"
            "sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())", url]
    if sandbox is not None:
        p = sandbox.run(*argv, check=False, timeout=30)
    else:
        p = cnitest.sh(*argv, netns=netns, check=False, timeout=30)
    return p.stdout if p.returncode == 0 else None


def ruleset(sandbox):
    """iptables (v4+v6) and nft text of the sandbox, to look for leftovers."""
    out = []
    for argv in (("iptables-save",), ("ip6tables-save",), ("nft", "list", "ruleset")):
        out.append(sandbox.run(*argv, check=False).stdout)
    return "\n".join(out)


def log_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def verbs_logged(lines, plugin, cid):
    """[(verb, outcome)] of the suite's log lines for ``plugin`` and container ``cid``."""
    out = []
    for ln in lines:
        parts = ln.split()
        if len(parts) < 7 or not parts[1].startswith(plugin + "["):
            continue
        if "cid=%s" % cid[:64] in parts:
            out.append((parts[2], parts[6]))
    return out


def cgroup_dirs():
    """Top-level cgroup dirs of the machine (a runtime must leave none behind)."""
    out = set()
    for m in cgroup_mounts():
        try:
            for name in os.listdir(m["dst"]):
                if os.path.isdir(os.path.join(m["dst"], name)):
                    out.add(os.path.join(m["dst"], name))
        except OSError:
            pass
    return out


def remove_cgroup_tree(name):
    """rmdir /sys/fs/cgroup/*/<name> depth first (empty cgroups only)."""
    for m in cgroup_mounts():
        top = os.path.join(m["dst"], name.strip("/"))
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
