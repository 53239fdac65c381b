"""The image (./build.sh image) and its installer, run by podman as the
DaemonSet's init container runs it (issue 18, delivery tier).

podman lives in a runtime sandbox (runtimes.Podman: its own netns, private
/run, /var/lib, /etc/containers, cgroups disabled since crun refuses this
machine's hybrid layout, ulimits pinned).  dist/pycni-image.tar is loaded
there; temp dirs play the node's /opt/cni/bin and /etc/cni/net.d, mounted
at /host/opt/cni/bin and /host/etc/cni/net.d as kube-pycni.yml mounts them.
A cached Debian root plays a node's whole root file system at /host.
Then the suite it installed runs bridge + portmap through the real libcni
client in sandbox namespaces, on this machine and chrooted into the root.
"""

import json
import os
import shutil
import subprocess
import time

import cnitest
import distroots
import pytest
import runtimes

from cnilib.ops import elf

pytestmark = [pytest.mark.root, pytest.mark.slow]

IMAGE_TAR = os.path.join(cnitest.DIST, "pycni-image.tar")
GO_BRIDGE = os.path.join(cnitest.GO_CNI, "bridge")


@pytest.fixture(scope="module")
def image():
    if not (shutil.which("podman") and shutil.which("buildah")):
        pytest.skip("podman or buildah is not installed")
    if not os.path.isfile(os.path.join(cnitest.DIST, "bin", "pycni")):
        pytest.skip("dist/bin is not built (./build.sh)")
    p = subprocess.run([os.path.join(cnitest.ROOT, "build.sh"), "image", "--no-build"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    version = subprocess.run([os.path.join(cnitest.DIST, "bin", "pycni"), "--version"],
                             capture_output=True, text=True).stdout.split()[1]
    return "localhost/pycni:" + version


@pytest.fixture(scope="module")
def pod(image):
    tmp = runtimes.short_tmp("pycni-image-")
    os.makedirs(os.path.join(tmp, "no-cni"))
    p = runtimes.Podman(tmp, os.path.join(tmp, "no-cni"))
    try:
        out = p("load", "-i", IMAGE_TAR).stdout
        assert image in out, out
        p.image = image
        yield p
    finally:
        p.close()
        if os.environ.get("PYCNI_E2E_KEEP") != "1":
            runtimes.rmtree(tmp)


class Node:
    """A node's plugin and conf dirs (temp dirs), as the DaemonSet sees them."""

    def __init__(self, pod, base):
        self.pod = pod
        self.bin = os.path.join(base, "opt", "cni", "bin")
        self.conf = os.path.join(base, "etc", "cni", "net.d")
        os.makedirs(self.bin)
        os.makedirs(self.conf)

    def run(self, *args, ro=False, env=(), mounts=None, opts=()):
        """``podman run`` of the image with the node's dirs mounted; extra
        args after the image go to its entrypoint (default: install)."""
        mounts = mounts or [(self.bin, "/host/opt/cni/bin"), (self.conf, "/host/etc/cni/net.d")]
        argv = ["run", "--rm", "--network", "none"] + list(opts)
        for src, dst in mounts:
            argv += ["-v", "%s:%s%s" % (src, dst, ":ro" if ro else "")]
        for e in env:
            argv += ["-e", e]
        return self.pod(*(argv + [self.pod.image] + list(args)), check=False, timeout=180)

    def snapshot(self, dir_times=True):
        return cnitest.tree_snapshot(self.bin, self.conf, dir_times=dir_times)


@pytest.fixture
def node(pod, tmp_path):
    base = runtimes.short_tmp("pycni-node-")
    try:
        yield Node(pod, base)
    finally:
        runtimes.rmtree(base)


def _version(path):
    p = subprocess.run([path], env={"CNI_COMMAND": "VERSION", "PYCNI_LOG": "off"},
                       capture_output=True, timeout=30)
    return p.returncode == 0 and b"supportedVersions" in p.stdout


def test_fresh_install_rerun_and_uninstall_restores_go(node):
    if not os.path.isfile(GO_BRIDGE):
        pytest.skip("Go reference plugins not installed (containernetworking-plugins)")
    shutil.copy2(GO_BRIDGE, os.path.join(node.bin, "bridge"))
    shutil.copy2(os.path.join(cnitest.GO_CNI, "macvlan"), os.path.join(node.bin, "macvlan"))
    go = open(GO_BRIDGE, "rb").read()
    r = node.run()                       # the default command: pycni install
    assert r.returncode == 0, r.stderr
    assert "installed 8 commands (bundle form" in r.stdout, r.stdout
    assert "answer VERSION on this container" in r.stdout, r.stdout
    for name in ("bridge", "host-local", "portmap", "loopback", "flannel", "firewall", "tuning", "pycni"):
        assert os.readlink(os.path.join(node.bin, name)).startswith(".pycni-versions/"), name
    for name in ("bridge", "host-local", "portmap", "loopback", "flannel", "firewall", "tuning"):
        assert _version(os.path.join(node.bin, name)), name
    assert open(os.path.join(node.bin, ".pycni-backup", "bridge"), "rb").read() == go
    assert os.listdir(node.conf) == []                   # no conflist asked for
    # the init container runs again on every pod start: nothing is rewritten
    before = node.snapshot()
    r = node.run()
    assert r.returncode == 0 and "nothing changed" in r.stdout, r.stdout + r.stderr
    assert node.snapshot() == before
    # a built-in conflist, then the same again: written once
    r = node.run("install", "--network", "flannel")
    assert r.returncode == 0 and "10-flannel.conflist written (it was absent)" in r.stdout, r.stdout
    before = node.snapshot()
    assert node.run("install", "--network", "flannel").returncode == 0
    assert node.snapshot() == before
    # uninstall puts the Go plugin back and takes everything of ours away
    r = node.run("uninstall")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(node.bin)) == ["bridge", "macvlan"]
    assert open(os.path.join(node.bin, "bridge"), "rb").read() == go
    assert os.listdir(node.conf) == []


def test_upgrade_over_an_older_copy(node, tmp_path):
    # the "older" copy: this bundle with one file changed, installed on the node by hand
    old = tmp_path / "old"
    shutil.copytree(os.path.join(cnitest.DIST, "bin"), old, symlinks=True)
    (old / ".pycni" / "pycni-build-tag").write_text("older\n")
    r = subprocess.run([str(old / "pycni"), "install", node.bin], capture_output=True, text=True,
                       env={"PYCNI_LOG": "off"}, timeout=120)
    assert r.returncode == 0, r.stderr
    old_id = json.load(open(os.path.join(node.bin, ".pycni-install.json")))["tree"]
    r = node.run()
    assert r.returncode == 0, r.stderr
    state = json.load(open(os.path.join(node.bin, ".pycni-install.json")))
    assert state["previous"] == old_id and state["tree"] != old_id
    assert sorted(os.listdir(os.path.join(node.bin, ".pycni-versions"))) == sorted([old_id, state["tree"]])
    assert os.readlink(os.path.join(node.bin, "portmap")) == ".pycni-versions/%s/portmap" % state["tree"]
    assert _version(os.path.join(node.bin, "portmap"))


def test_read_only_host_dir_fails_cleanly(node):
    open(os.path.join(node.bin, "bridge"), "wb").write(b"\x7fELF go")
    before = node.snapshot()
    r = node.run(ro=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stderr and "Read-only file system" in r.stderr, r.stderr
    assert "nothing was changed" in r.stderr and "Traceback" not in r.stderr
    assert node.snapshot() == before


# ---- the suite it installed, at work


def bridge_portmap(br, data):
    return [{"type": "bridge", "bridge": br, "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": data}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]


def test_installed_suite_runs_bridge_and_portmap(node, clients, netns_factory, tmp_path):
    assert node.run().returncode == 0
    clients.use(node.bin)
    ctr = netns_factory()
    conf = clients.conflist("imgnet", "1.0.0", bridge_portmap(cnitest.unique("br"), str(tmp_path / "ipam")))
    kw = dict(netns=ctr.path, cid="img-ctr", ifname="eth0",
              capargs={"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]})
    env_state = {"PYCNI_RUN_DIR": str(tmp_path / "run"), "PYCNI_STATE_DIR": str(tmp_path / "pstate")}
    base = clients.env
    clients.env = lambda **over: dict(base(**over), **env_state)
    add = clients.drive("add", conf, **kw)
    assert add.rc == 0, add
    ip = json.loads(add.stdout)["ips"][0]["address"].split("/")[0]
    assert ctr.run("ping", "-c1", "-W3", "10.66.0.1").returncode == 0
    assert ip in clients.host.run("nft", "list", "ruleset").stdout      # portmap's DNAT target
    chk = clients.drive("check", conf, **kw)
    assert chk.rc == 0, chk
    dl = clients.drive("del", conf, **kw)
    assert dl.rc == 0, dl
    assert "eth0" not in ctr.links()
    assert ip not in clients.host.run("nft", "list", "ruleset").stdout


@pytest.mark.parametrize("release", ["11", "12"])
def test_installer_and_suite_on_a_debian_root(pod, go_driver, netns_factory, tmp_path, release):
    """The node's / (a cached Debian root, read-only) at /host with its
    /opt/cni/bin writable, as kube-pycni.yml mounts them: the installer
    checks the plugins chrooted into it, so a bundle the node's glibc cannot
    load is refused there with the loader's words; one that loads then runs
    bridge + portmap ADD/CHECK/DEL chrooted into that root."""
    try:
        rootdir = distroots.root(release)
    except distroots.RootUnavailable as exc:
        pytest.skip(str(exc))
    base = runtimes.short_tmp("pycni-hroot-")
    try:
        opt = os.path.join(base, "opt")
        os.makedirs(os.path.join(opt, "cni", "bin"))
        node = Node.__new__(Node)
        node.pod, node.bin, node.conf = pod, os.path.join(opt, "cni", "bin"), os.path.join(base, "conf")
        os.makedirs(node.conf)
        # the init container's securityContext in deploy/kube-pycni.yml
        opts = ["--read-only", "--cap-drop", "all", "--cap-add", "SYS_CHROOT,DAC_OVERRIDE,FOWNER"]
        r = node.run(mounts=[(rootdir, "/host"), (opt, "/host/opt"), (node.conf, "/host/etc/cni/net.d")],
                     env=["PYCNI_HOST_ROOT=/host"], opts=opts)
        need, _ = elf.tree_glibc_needed(os.path.join(cnitest.DIST, "bin"))
        have = elf.glibc_provided(rootdir)
        if need and need > have:
            assert r.returncode == 1, r.stdout
            assert "on the node's root at /host" in r.stderr and "version `GLIBC_" in r.stderr, r.stderr
            assert "has glibc %s" % distroots.SUITES[release][1] in r.stderr, r.stderr
            assert os.listdir(node.bin) == []
            return
        assert r.returncode == 0, r.stderr
        assert "on the node's root at /host (glibc %s)" % distroots.SUITES[release][1] in r.stdout
        _suite_in_root(rootdir, node.bin, go_driver, netns_factory, tmp_path)
    finally:
        runtimes.rmtree(base)


def _suite_in_root(rootdir, bin_dir, driver, netns_factory, tmp_path):
    host, ctr = netns_factory(), netns_factory()
    state = tmp_path / "state"
    state.mkdir()
    conf = {"cniVersion": "1.0.0", "name": "rootnet",
            "plugins": bridge_portmap("cni0", "/tmp/state/ipam")}
    (state / "net.conflist").write_text(json.dumps(conf))
    inroot = distroots.InRoot(rootdir, binds={bin_dir: "/tmp/cni/bin", os.path.dirname(driver): "/tmp/drv",
                                              str(state): "/tmp/state"}, writable={str(state)})
    env = {"PYCNI_STATE_DIR": "/tmp/state/pstate", "PYCNI_RUN_DIR": "/tmp/state/run",
           "PYCNI_LOG": "/tmp/state/pycni.log"}
    caps = json.dumps({"portMappings": [{"hostPort": 18082, "containerPort": 80, "protocol": "tcp"}]})
    out = {}
    for verb in ("add", "check", "del"):
        r = inroot.run("/tmp/drv/" + os.path.basename(driver), verb, "--conflist", "/tmp/state/net.conflist",
                       "--cachedir", "/tmp/state/cache", "--path", "/tmp/cni/bin", "--netns", ctr.path,
                       "--cid", "root-ctr", "--ifname", "eth0", "--args", "", "--capargs", caps,
                       netns=host.name, env=env)
        assert r.returncode == 0, (verb, r.stdout, r.stderr, cnitest.read_text(str(state / "pycni.log")))
        out[verb] = r.stdout
        if verb == "add":
            assert ctr.run("ping", "-c1", "-W3", "10.66.0.1").returncode == 0
    assert "eth0" not in ctr.links()
    assert json.loads(out["add"])["ips"][0]["address"].startswith("10.66.0.")


def test_pause_stops_on_sigterm(pod):
    """The DaemonSet's main container, as kube-pycni.yml runs it."""
    name = cnitest.unique("pause")
    pod("run", "-d", "--name", name, "--network", "none", "--read-only", "--user", "65534",
        "--cap-drop", "all", pod.image, "pause")
    try:
        # PID 1 ignores SIGTERM until its handler is set: wait for pause to say so
        deadline = time.monotonic() + 60
        while "waiting for SIGTERM" not in pod("logs", name).stdout:
            assert time.monotonic() < deadline, pod("logs", name)
            time.sleep(0.2)
        assert pod("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
        pod("stop", "-t", "30", name)
        state = json.loads(pod("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, state
    finally:
        pod("rm", "-f", name, check=False)
