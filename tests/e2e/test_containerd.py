"""containerd 1.6 (CRI) drives the suite (issue 7, runtime tier).

A private containerd runs in a sandbox (runtimes.Sandbox: own netns, /run,
/var/lib, /var/log, /etc/cni) with its root, state, socket and config in
a temp dir.  Its CRI plugin points at the suite the way a node's config
does:

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir  = <our plugin dir>
      conf_dir = <tmp>/net.d      (conf/10-containerd-net.conflist)

containerd also runs the CNI loopback network itself ("cni-loopback",
cniVersion 0.3.1, ifname lo) from bin_dir.  The sandbox ("pause") image is
built here from busybox-static and imported with ``ctr images import``;
nothing is pulled.  Its process is busybox httpd, so the pod's published
port can be tried.  The test is the kubelet: a small CRI client
(tests/e2e/cri.py, standard library only) calls RunPodSandbox, PodSandboxStatus, StopPodSandbox
and RemovePodSandbox on the unix socket.

Settings this machine needs: restrict_oom_score_adj (no CAP_SYS_RESOURCE:
runc cannot lower oom_score_adj to the sandbox's -998), the native
snapshotter, and a cgroup_parent of our own that the test removes.
"""

import json
import os
import shutil
import time
import uuid

import cnitest
import pytest
import runtimes

pytestmark = [pytest.mark.root, pytest.mark.slow]

TYPES = ("bridge", "host-local", "portmap", "loopback")
PAUSE = "localhost/pycni/pause:1"
NET = "containerd-net"
HOSTPORT = 18081


def missing():
    for exe in ("containerd", "ctr", "containerd-shim-runc-v2", "runc"):
        if not shutil.which(exe):
            return "%s is not installed (Debian package containerd/runc)" % exe
    return None


class Containerd:
    def __init__(self, tmp, plugin_dir):
        self.tmp = tmp
        root = os.path.join(tmp, "root")
        self.var_lib = os.path.join(root, "var-lib")
        self.log = os.path.join(root, "var-log", "pycni", "pycni.log")
        self.dir = os.path.join(tmp, "containerd")
        self.net_d = os.path.join(tmp, "net.d")
        self.sock = os.path.join(self.dir, "containerd.sock")
        self.cgroup_parent = "/pycni-e2e-%s" % uuid.uuid4().hex[:8]
        os.makedirs(self.dir)
        os.makedirs(self.net_d)
        shutil.copy(os.path.join(cnitest.ROOT, "conf", "10-containerd-net.conflist"), self.net_d)
        with open(os.path.join(self.dir, "config.toml"), "w") as f:
            f.write(self.config(plugin_dir))
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": tmp}
        self.sandbox = runtimes.Sandbox(tmp, [
            (os.path.join(root, "run"), "/run"), (self.var_lib, "/var/lib"),
            (os.path.join(root, "var-log"), "/var/log"), (os.path.join(root, "etc-cni"), "/etc/cni")])
        self.daemon = None
        self.client = None

    def config(self, plugin_dir):
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return "\n".join([
            "version = 2",
            'root = "%s/root"' % self.dir,
            'state = "%s/state"' % self.dir,
            'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",'
            ' "io.containerd.tracing.processor.v1.otlp"]',
            "[grpc]", '  address = "%s"' % self.sock,
            "[%s]" % cri,
            '  sandbox_image = "%s"' % PAUSE,
            "  disable_apparmor = true",
            "  restrict_oom_score_adj = true",
            '  stream_server_address = "127.0.0.1"',
            "[%s.containerd]" % cri, '  snapshotter = "native"',
            "[%s.cni]" % cri,
            '  bin_dir = "%s"' % plugin_dir,
            '  conf_dir = "%s"' % self.net_d,
            '[plugins."io.containerd.internal.v1.opt"]', '  path = "%s/opt"' % self.dir,
            ""])

    def start(self):
        out = open(os.path.join(self.tmp, "containerd.log"), "w")
        self.daemon = self.sandbox.popen("containerd", "--config", os.path.join(self.dir, "config.toml"),
                                         env=self.env, stdout=out, stderr=out)
        out.close()
        import cri
        self.client = cri.Client(self.sock)
        for _ in range(300):
            if os.path.exists(self.sock) or self.daemon.poll() is not None:
                break
            time.sleep(0.1)
        if self.daemon.poll() is not None:
            raise AssertionError("containerd exited at start:\n" + self.daemon_log())
        try:
            self.client.wait_ready(timeout=60)
        except Exception as exc:
            raise AssertionError("containerd does not answer CRI calls: %s\n%s"
                                 % (exc, self.daemon_log())) from None

    def ctr(self, *argv):
        return self.sandbox.run("ctr", "--address", self.sock, "-n", "k8s.io", *argv, env=self.env)

    def daemon_log(self):
        with open(os.path.join(self.tmp, "containerd.log")) as f:
            return f.read()[-4000:]

    def close(self):
        self.sandbox.close()          # takes containerd, its shims and the pods with it
        runtimes.remove_cgroup_tree(self.cgroup_parent)


@pytest.fixture
def containerd(form):
    why = missing()
    if why:
        pytest.skip(why)
    tmp = runtimes.short_tmp("pycni-ctrd-")
    plugin_dir = runtimes.assemble_plugin_dir(form, os.path.join(tmp, "cni-bin"), TYPES)
    c = Containerd(tmp, plugin_dir)
    try:
        c.start()
        yield c
    finally:
        c.close()
        if os.environ.get("PYCNI_E2E_KEEP") != "1":
            runtimes.rmtree(tmp)


def pod_addrs(sandbox, netns_path):
    out = sandbox.run("nsenter", "--net=" + netns_path, "ip", "-j", "addr", "show").stdout
    return {line["ifname"]: line for line in json.loads(out)}


def test_pod_sandbox_gets_address_and_releases_it(containerd, netns_factory):
    import cri
    sb, client = containerd.sandbox, containerd.client
    image = runtimes.docker_archive(runtimes.busybox_rootfs_tar(), PAUSE,
                                    ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/var/www"])
    path = os.path.join(containerd.tmp, "pause.tar")
    with open(path, "wb") as f:
        f.write(image)
    containerd.ctr("images", "import", "--snapshotter", "native", path)
    assert client.version()["runtime_name"] == "containerd"

    config = cri.pod_sandbox_config(
        "web", str(uuid.uuid4()), namespace="pycni", cgroup_parent=containerd.cgroup_parent,
        log_directory=os.path.join(containerd.tmp, "pods"),
        port_mappings=[{"container_port": 80, "host_port": HOSTPORT}])
    try:
        sid = client.run_pod_sandbox(config)
    except Exception as exc:
        raise AssertionError("RunPodSandbox failed: %s\n%s" % (exc, containerd.daemon_log())) from None
    st = client.pod_sandbox_status(sid, verbose=True)
    assert st.ready, st.state
    assert st.ip.startswith("10.88."), st.ip
    assert [ip for ip in st.additional_ips if ip.startswith("fd00:10:88:")], st.additional_ips

    # the address the runtime reports is on the pod's eth0, and lo is up (CNI loopback)
    netns = st.netns_path()
    assert netns and netns.startswith("/var/run/netns/cni-"), st.info.keys()
    addrs = pod_addrs(sb, netns)
    assert st.ip in [a["local"] for a in addrs["eth0"]["addr_info"]]
    assert "UP" in addrs["lo"]["flags"]

    # its published port answers from another machine (containerd's HostPort keys)
    client_ns = netns_factory()
    node_ip = runtimes.connect_client(sb.netns, client_ns)
    assert runtimes.http_get("http://%s:%d/" % (node_ip, HOSTPORT), netns=client_ns.name) == "pycni\n"

    cni = os.path.join(containerd.var_lib, "cni")
    assert sorted(os.listdir(os.path.join(cni, "results"))) == sorted(
        ["cni-loopback-%s-lo" % sid, "%s-%s-eth0" % (NET, sid)])
    leases = os.path.join(cni, "networks", NET)
    assert open(os.path.join(leases, st.ip)).read().split()[0] == sid
    assert st.ip in runtimes.ruleset(sb)

    lines = runtimes.log_lines(containerd.log)
    for t in TYPES:
        assert ("ADD", "ok") in runtimes.verbs_logged(lines, t, sid), (t, lines[-20:])

    # StopPodSandbox releases everything; RemovePodSandbox runs DEL again
    # (no cached result left): both must succeed
    client.stop_pod_sandbox(sid)
    assert not client.pod_sandbox_status(sid).ready
    assert os.listdir(os.path.join(cni, "results")) == []
    assert sorted(f for f in os.listdir(leases) if not f.startswith(("lock", "last_reserved"))) == []
    assert not [n for n in sb.netns.links() if n.startswith("veth")]
    rules = runtimes.ruleset(sb)
    assert st.ip not in rules and sid not in rules, rules
    client.remove_pod_sandbox(sid)
    with pytest.raises(cri.RpcError):
        client.pod_sandbox_status(sid)          # gone: NotFound
    lines = runtimes.log_lines(containerd.log)
    for t in TYPES:
        logged = runtimes.verbs_logged(lines, t, sid)
        assert len([v for v in logged if v[0] == "DEL"]) >= 2, (t, logged)
        assert not [v for v in logged if v[1] != "ok"], (t, logged)
    assert not [ln for ln in lines if "Traceback" in ln]
