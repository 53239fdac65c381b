"""flannel through the built plugins: two node namespaces joined by an underlay
veth, ``cnilib.ops.fabric`` doing flanneld's part on each, pods attached with
flannel -> bridge -> host-local, and real traffic between them.

Whatever ``bridge``/``host-local`` comes first on CNI_PATH is the delegate:
the suite's own once built, the Go reference plugins until then.  Every node
has its own subnet file, dataDir and ipam dataDir under tmp_path (the nodes
share one filesystem, as in flannel-fabric.md section 8).
"""

import json
import os
import subprocess
import sys
import threading
import time

import chained
import pytest
from cnitest import (
    ALL_VERSIONS,
    GO_CNI,
    UNDERLAY4,
    UNDERLAY6,
    assert_cni_error,
    join_underlay,
    run_fabric,
    run_plugin,
)

pytestmark = pytest.mark.root

NETWORK, NETWORK6 = "10.244.0.0/16", "fd00:10:244::/56"
NET_NAME = "cbr0"
V4_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
          "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


class Node:
    """A node netns plus its per-node paths and plugin runner."""

    def __init__(self, ns, index, root, plugins, env):
        self.ns, self.index, self.plugins, self.env = ns, index, plugins, env
        self.name = "node%d" % index
        self.dir = root / self.name
        self.dir.mkdir()
        self.subnet_file = str(self.dir / "run-flannel" / "subnet.env")
        self.data_dir = str(self.dir / "flannel")
        self.ipam_dir = str(self.dir / "networks")

    def conf(self, version="1.0.0", **over):
        c = {"cniVersion": version, "name": NET_NAME, "type": "flannel",
             "subnetFile": self.subnet_file, "dataDir": self.data_dir,
             "delegate": {"hairpinMode": True, "isDefaultGateway": True},
             "ipam": {"dataDir": self.ipam_dir}}
        c.update(over)
        return c

    def run(self, command, cid, ctr=None, conf=None, extra_env=None, **kw):
        env = dict(self.env)
        env.update(extra_env or {})
        netns = ctr if isinstance(ctr, str) else (ctr.path if ctr is not None else "")
        return run_plugin(os.path.join(self.plugins, "flannel"), command,
                          conf if conf is not None else self.conf(), containerid=cid,
                          netns=netns, ifname="eth0",
                          path="%s:%s" % (self.plugins, GO_CNI), host_netns=self.ns.name,
                          extra_env=env, **kw)

    def write_env(self, text=V4_ENV):
        os.makedirs(os.path.dirname(self.subnet_file), exist_ok=True)
        with open(self.subnet_file, "w") as f:
            f.write(text)

    def saved(self, cid):
        return os.path.join(self.data_dir, cid)

    def leases(self):
        d = os.path.join(self.ipam_dir, NET_NAME)
        if not os.path.isdir(d):
            return []
        return sorted(f for f in os.listdir(d)
                      if f != "lock" and not f.startswith(("last_reserved_ip", ".pycni-attachments")))

    def pod_veths(self):
        out = self.ns.run("ip", "-j", "link", "show", "type", "veth").stdout
        return [line["ifname"] for line in json.loads(out or "[]") if line["ifname"] != "eth0"]

    def fabric(self, *args):
        return run_fabric(self.ns, *args, "--subnet-file", self.subnet_file, env=self.env)


@pytest.fixture
def run_env(statedir, tmp_path):
    return {"PYCNI_RUN_DIR": str(tmp_path / "run"), "PYCNI_STATE_DIR": str(tmp_path / "pstate")}


@pytest.fixture
def node(plugins, go_plugins, netns_factory, tmp_path, run_env):
    """One node (no fabric): subnet.env is written by the test."""
    return Node(netns_factory(), 1, tmp_path, plugins, run_env)


def make_cluster(plugins, netns_factory, tmp_path, run_env, v6):
    nodes = [Node(netns_factory(), i + 1, tmp_path, plugins, run_env) for i in range(2)]
    join_underlay(nodes[0].ns, nodes[1].ns, v6=v6)
    desc = []
    for i, n in enumerate(nodes):
        d = {"name": n.name, "publicIP": UNDERLAY4[i], "subnet": "10.244.%d.0/24" % n.index}
        if v6:
            d.update(publicIPv6=UNDERLAY6[i], subnetV6="fd00:10:244:%d::/64" % n.index)
        desc.append(d)
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps(desc))
    return nodes, str(path)


def fabric_up(nodes, nodes_file, backend, v6, *extra):
    for n in nodes:
        args = ["up", "--nodes", nodes_file, "--node", n.name, "--backend", backend] + list(extra)
        if v6:
            args += ["--network-v6", NETWORK6]
        r = n.fabric(*args)
        assert r.returncode == 0, r


def ping(ctr, address, *extra):
    """Ping until one reply (neighbour resolution and DAD may eat the first tries)."""
    for _ in range(5):
        r = ctr.run("ping", "-c", "1", "-W", "2", *extra, address, check=False)
        if r.returncode == 0:
            return r
    raise AssertionError("%s cannot ping %s %s: %s"
                         % (ctr.name, address, " ".join(extra), r.stdout + r.stderr))


def pod_ips(result):
    return {ip["address"].split("/")[0] for ip in result["ips"]}


def assert_clean(node, cid, ctr=None):
    """DEL left nothing: no lease, no saved file, no host veth, no eth0 in the pod."""
    assert node.leases() == []
    assert not os.path.lexists(node.saved(cid))
    assert node.pod_veths() == []
    if ctr is not None:
        assert "eth0" not in ctr.links()


def subnet_env(node):
    with open(node.subnet_file) as f:
        return dict(line.split("=", 1) for line in f.read().split())


# ------------------------------------------------------------ two nodes


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
@pytest.mark.parametrize("stack", ["ipv4", "dual"])
def test_pods_talk_across_nodes(plugins, go_plugins, netns_factory, tmp_path, run_env, backend, stack):
    v6 = stack == "dual"
    nodes, nodes_file = make_cluster(plugins, netns_factory, tmp_path, run_env, v6)
    fabric_up(nodes, nodes_file, backend, v6)
    env1 = subnet_env(nodes[0])
    assert env1["FLANNEL_SUBNET"] == "10.244.1.1/24" and env1["FLANNEL_IPMASQ"] == "true"
    assert env1["FLANNEL_MTU"] == ("1450" if backend == "vxlan" else "1500")
    assert oct(os.stat(nodes[0].subnet_file).st_mode & 0o777) == "0o644"

    pods, results = [], []
    for n in nodes:
        ctr = netns_factory()
        r = n.run("ADD", "pod-%s" % n.name, ctr)
        assert r.rc == 0, r
        pods.append(ctr)
        results.append(r.json)
        saved = json.loads(open(n.saved("pod-%s" % n.name)).read())
        assert saved["ipam"]["dataDir"] == n.ipam_dir and saved["mtu"] == int(subnet_env(n)["FLANNEL_MTU"])
    ip1, ip2 = (sorted(pod_ips(r)) for r in results)
    assert "10.244.1.2" in ip1 and "10.244.2.2" in ip2
    if v6:
        assert "fd00:10:244:1::2" in ip1 and "fd00:10:244:2::2" in ip2
    for a in (0, 1):
        for address in (ip2 if a == 0 else ip1):
            ping(pods[a], address)
    # a full-size packet crosses with don't-fragment (1422 B payload = 1450 IP over vxlan)
    payload = int(env1["FLANNEL_MTU"]) - 28
    ping(pods[0], "10.244.2.2", "-M", "do", "-s", str(payload))
    r = pods[0].run("ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(payload + 1), "10.244.2.2",
                    check=False)
    assert r.returncode != 0

    # a hostPort on node1 (portmap chained after flannel) reached from the pod on node2
    n1 = nodes[0]
    pm_conf = chained.chained_conf("portmap", results[0], name=NET_NAME,
                                   runtimeConfig={"portMappings": [
                                       {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    pm = run_plugin(os.path.join(n1.plugins, "portmap"), "ADD", pm_conf, containerid="pod-node1",
                    netns=pods[0].path, ifname="eth0", path=n1.plugins, host_netns=n1.ns.name,
                    extra_env=n1.env)
    assert pm.rc == 0, pm
    server = subprocess.Popen(["ip", "netns", "exec", pods[0].name, sys.executable, "-c", chained.SERVER,
                               "pod1", "80"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        for host in [UNDERLAY4[0]] + ([UNDERLAY6[0]] if v6 else []):
            got = pods[1].run(sys.executable, "-c", chained.CLIENT, "tcp", host, "8080", check=False).stdout
            assert got.startswith("pod1 "), (host, got)
    finally:
        server.kill()
        server.wait()
    pm = run_plugin(os.path.join(n1.plugins, "portmap"), "DEL", pm_conf, containerid="pod-node1",
                    netns=pods[0].path, ifname="eth0", path=n1.plugins, host_netns=n1.ns.name,
                    extra_env=n1.env)
    assert pm.rc == 0, pm

    for n, ctr in zip(nodes, pods):
        r = n.run("DEL", "pod-%s" % n.name, ctr)
        assert r.rc == 0 and r.stdout == "", r
        assert_clean(n, "pod-%s" % n.name, ctr)
        assert n.run("DEL", "pod-%s" % n.name, ctr).rc == 0     # again

    for n in nodes:
        r = n.fabric("down", "--network", NETWORK, *(["--network-v6", NETWORK6] if v6 else []))
        assert r.returncode == 0, r
        assert_node_clean(n)


def assert_node_clean(n):
    links = n.ns.links()
    assert not [link for link in links if link.startswith("flannel")], links
    for cmd in ("iptables-save", "ip6tables-save"):
        assert "FLANNEL" not in n.ns.run(cmd).stdout
    for fam in ("-4", "-6"):
        routes = n.ns.run("ip", "-j", fam, "route", "show").stdout
        assert not [r for r in json.loads(routes or "[]") if r.get("gateway")
                    and r["dst"].startswith(("10.244.", "fd00:10:244:"))], routes
    assert not os.path.exists(n.subnet_file)


def test_fabric_up_is_idempotent_and_converges(plugins, go_plugins, netns_factory, tmp_path, run_env):
    nodes, nodes_file = make_cluster(plugins, netns_factory, tmp_path, run_env, v6=False)
    n1 = nodes[0]
    # a third node that later leaves the cluster
    three = json.loads(open(nodes_file).read()) + [
        {"name": "node3", "publicIP": "192.0.2.3", "subnet": "10.244.3.0/24"}]
    path3 = tmp_path / "nodes3.json"
    path3.write_text(json.dumps(three))
    args = ["up", "--nodes", str(path3), "--node", "node1"]
    assert n1.fabric(*args).returncode == 0

    def state():
        out = [n1.ns.run(*c).stdout for c in (
            ("ip", "-d", "link", "show", "flannel.1"), ("ip", "addr", "show", "flannel.1"),
            ("ip", "route"), ("ip", "neigh", "show", "dev", "flannel.1"),
            ("bridge", "fdb", "show", "dev", "flannel.1"), ("iptables-save",))]
        return [[ln for ln in o.splitlines() if not ln.startswith("#")] for o in out]
    first = state()
    assert "10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink " in first[2]
    assert "0e:fe:c0:00:02:03 dst 192.0.2.3 self permanent" in [ln.strip() for ln in first[4]]
    assert n1.fabric(*args).returncode == 0
    assert state() == first     # same device (same ifindex), same entries, same rules
    # node3 leaves: its route, neighbour and fdb entry go
    assert n1.fabric("up", "--nodes", nodes_file, "--node", "node1").returncode == 0
    after = ["\n".join(lines) for lines in state()]
    assert "10.244.3.0" not in after[2] + after[3] and "192.0.2.3" not in after[4]
    assert "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink" in after[2]
    # an address inside the network that is not the lease goes too
    n1.ns.run("ip", "addr", "add", "10.244.9.0/32", "dev", "flannel.1")
    assert n1.fabric("up", "--nodes", nodes_file, "--node", "node1").returncode == 0
    assert n1.ns.addrs("flannel.1")[0] == "10.244.1.0/32" and "10.244.9.0/32" not in n1.ns.addrs("flannel.1")


def test_fabric_no_ipmasq_keeps_forward_rules(plugins, go_plugins, netns_factory, tmp_path, run_env):
    nodes, nodes_file = make_cluster(plugins, netns_factory, tmp_path, run_env, v6=False)
    n1 = nodes[0]
    assert n1.fabric("up", "--nodes", nodes_file, "--node", "node1").returncode == 0
    assert "FLANNEL-POSTRTG" in n1.ns.run("iptables-save", "-t", "nat").stdout
    r = n1.fabric("up", "--nodes", nodes_file, "--node", "node1", "--no-ipmasq")
    assert r.returncode == 0, r
    assert "FLANNEL" not in n1.ns.run("iptables-save", "-t", "nat").stdout
    assert '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT' in \
        n1.ns.run("iptables-save", "-t", "filter").stdout
    assert subnet_env(n1)["FLANNEL_IPMASQ"] == "false"


def test_fabric_refuses_bad_descriptions(plugins, go_plugins, netns_factory, tmp_path, run_env):
    nodes, nodes_file = make_cluster(plugins, netns_factory, tmp_path, run_env, v6=False)
    n1 = nodes[0]
    r = n1.fabric("up", "--nodes", nodes_file, "--node", "node9")
    assert r.returncode == 1 and "node 'node9' is not in the nodes file" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "node1", "publicIP": "192.0.2.1", "subnet": "10.99.1.0/24"}]))
    r = n1.fabric("up", "--nodes", str(bad), "--node", "node1")
    assert r.returncode == 1 and "outside the network 10.244.0.0/16" in r.stderr
    assert "Traceback" not in r.stderr
    assert n1.ns.links().keys() == {"lo", "eth0"}


# ------------------------------------------------------------ one node: ADD/DEL paths


def test_subnet_env_appears_late(node, ctr):
    def write_later():
        time.sleep(1.5)
        node.write_env()
    t = threading.Thread(target=write_later)
    t.start()
    try:
        r = node.run("ADD", "late1", ctr)
    finally:
        t.join()
    assert r.rc == 0, r
    assert "10.244.1.2" in pod_ips(r.json)
    assert node.run("DEL", "late1", ctr).rc == 0
    assert_clean(node, "late1", ctr)


def test_subnet_env_never_appears(node, ctr):
    r = node.run("ADD", "never1", ctr, conf=node.conf(subnetFileWait=0.3))
    err = assert_cni_error(r, 11)
    assert node.subnet_file in err["msg"] and "does not exist" in err["msg"] and "waited 0.3 s" in err["msg"]
    assert "flanneld" in err["details"]
    assert not os.path.exists(node.data_dir) or os.listdir(node.data_dir) == []
    assert "cni0" not in node.ns.links()


def test_subnet_env_incomplete_names_missing_keys(node, ctr):
    node.write_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n")
    err = assert_cni_error(node.run("ADD", "inc1", ctr, conf=node.conf(subnetFileWait=0)), 11)
    assert err["msg"].endswith("%s is missing FLANNEL_MTU, FLANNEL_IPMASQ" % node.subnet_file)


@pytest.mark.parametrize("v", ALL_VERSIONS)
def test_add_check_del_every_version(node, ctr, v):
    node.write_env()
    conf = node.conf(v)
    r = node.run("ADD", "ver1", ctr, conf=conf)
    go_bridge = not os.path.exists(os.path.join(node.plugins, "bridge"))
    if v == "1.1.0" and go_bridge:
        err = assert_cni_error(r, 1)        # Debian's bridge 1.1.1 stops at 1.0.0
        assert "bridge ADD" in err["msg"]
        assert not os.path.exists(node.saved("ver1"))
        assert node.run("DEL", "ver1", ctr, conf=node.conf("1.0.0")).rc == 0
        assert_clean(node, "ver1", ctr)
        return
    assert r.rc == 0, r
    res = r.json
    assert res["cniVersion"] == v
    if v in ("0.1.0", "0.2.0"):
        assert res["ip4"]["ip"] == "10.244.1.2/24"
    else:
        assert [ip["address"] for ip in res["ips"]] == ["10.244.1.2/24"]
        assert {"dst": "10.244.0.0/16"} in res["routes"]
    if v >= "0.4.0":
        assert_check_ok(node, node.run("CHECK", "ver1", ctr, conf=dict(conf, prevResult=res)))
    assert node.run("DEL", "ver1", ctr, conf=conf).rc == 0
    assert_clean(node, "ver1", ctr)


@pytest.mark.parametrize("state", ["missing", "empty", "corrupt"])
@pytest.mark.parametrize("with_env", [True, False], ids=["subnet.env", "no-subnet.env"])
def test_del_without_usable_saved_file(node, netns_factory, state, with_env):
    node.write_env()
    ctr = netns_factory()
    assert node.run("ADD", "lost1", ctr).rc == 0
    assert node.leases() and node.pod_veths()
    path = node.saved("lost1")
    if state == "missing":
        os.unlink(path)
    else:
        with open(path, "w") as f:
            f.write("" if state == "empty" else '{"cniVersion":"1.0.0","name":"cb')
    if not with_env:
        os.unlink(node.subnet_file)
    r = node.run("DEL", "lost1", ctr)
    assert r.rc == 0 and r.stdout == "", r
    assert_clean(node, "lost1", ctr)
    assert node.run("DEL", "lost1", ctr).rc == 0


def test_del_without_anything_after_netns_is_gone(node, netns_factory):
    node.write_env()
    ctr = netns_factory()
    assert node.run("ADD", "gone1", ctr).rc == 0
    os.unlink(node.saved("gone1"))
    os.unlink(node.subnet_file)
    path = ctr.path
    ctr.delete()
    r = node.run("DEL", "gone1", path)
    assert r.rc == 0, r
    assert_clean(node, "gone1")


def test_go_saved_file_is_honoured(node, ctr, tmp_path):
    """A file the Go plugin saved (plain JSON at <dataDir>/<cid>) drives DEL,
    even when the current config would build something else."""
    node.write_env()
    go_ipam = str(tmp_path / "go-ipam")
    delegate = ('{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"dataDir":"%s",'
                '"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],'
                '"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,'
                '"name":"cbr0","type":"bridge"}' % go_ipam)
    r = run_plugin(os.path.join(GO_CNI, "bridge"), "ADD", delegate, containerid="go1", netns=ctr.path,
                   ifname="eth0", path=GO_CNI, host_netns=node.ns.name)
    assert r.rc == 0, r
    os.makedirs(node.data_dir, 0o700)
    with open(node.saved("go1"), "w") as f:
        f.write(delegate)
    assert os.listdir(os.path.join(go_ipam, NET_NAME))
    r = node.run("DEL", "go1", ctr)
    assert r.rc == 0, r
    assert sorted(os.listdir(os.path.join(go_ipam, NET_NAME))) == ["last_reserved_ip.0", "lock"]
    assert_clean(node, "go1", ctr)


def go_bridge(node):
    return not os.path.exists(os.path.join(node.plugins, "bridge"))


def assert_check_ok(node, r):
    """CHECK passed the delegate's CHECK.  Debian's bridge 1.1.1 cannot find a
    gateway-less route (flannel's route to the cluster network) and fails
    every CHECK; plugins v1.3.0 fixed it (c347755f): accept that one error."""
    if go_bridge(node) and r.rc == 1:
        err = assert_cni_error(r, 999)
        assert err["msg"].startswith("bridge CHECK: Expected Route {Dst:{IP:10.244.0.0 Mask:ffff0000} "
                                     "GW:<nil>} not found"), err
        return
    assert r.rc == 0, r


def test_check(node, ctr):
    node.write_env()
    r = node.run("ADD", "chk1", ctr)
    assert r.rc == 0
    conf = dict(node.conf(), prevResult=r.json)
    assert_check_ok(node, node.run("CHECK", "chk1", ctr, conf=conf))
    # the delegate's CHECK runs: a pod without its address fails it
    ctr.run("ip", "addr", "flush", "dev", "eth0")
    assert node.run("CHECK", "chk1", ctr, conf=conf).rc == 1
    node.write_env(V4_ENV.replace("10.244.1.1/24", "10.244.7.1/24"))
    err = assert_cni_error(node.run("CHECK", "chk1", ctr, conf=conf), 999)
    assert "subnet changed since ADD" in err["msg"] and "10.244.7.0/24" in err["msg"]
    err = assert_cni_error(node.run("CHECK", "nope1", ctr, conf=conf), 3)
    assert "nope1" in err["msg"]
    assert node.run("DEL", "chk1", ctr).rc == 0


def test_status(node):
    conf = node.conf("1.1.0")
    err = assert_cni_error(node.run("STATUS", "", conf=conf), 50)
    assert node.subnet_file in err["msg"]
    node.write_env("FLANNEL_NETWORK=10.244.0.0/16\n")
    err = assert_cni_error(node.run("STATUS", "", conf=conf), 50)
    assert "missing FLANNEL_SUBNET" in err["msg"]
    node.write_env()
    r = node.run("STATUS", "", conf=conf)
    assert r.rc == 0 and r.stdout == "", r


def test_gc_removes_saved_files_of_stale_attachments(node, netns_factory):
    node.write_env()
    ctrs = {}
    for cid in ("gcA", "gcB"):
        ctrs[cid] = netns_factory()
        assert node.run("ADD", cid, ctrs[cid]).rc == 0
    with open(node.saved("other1"), "w") as f:
        f.write('{"name":"othernet","type":"bridge"}')
    with open(node.saved("junk1"), "w") as f:
        f.write("{")
    conf = node.conf("1.1.0")
    r = node.run("GC", "", conf=conf)            # no list: keep everything
    assert r.rc == 0, r
    assert sorted(os.listdir(node.data_dir)) == ["gcA", "gcB", "junk1", "other1"]
    conf["cni.dev/valid-attachments"] = [{"containerID": "gcA", "ifname": "eth0"}]
    r = node.run("GC", "", conf=conf)
    assert r.rc == 0, r
    assert sorted(os.listdir(node.data_dir)) == ["gcA", "other1"]
    for cid, ctr in ctrs.items():
        assert node.run("DEL", cid, ctr).rc == 0
    assert_clean(node, "gcA")


# ------------------------------------------------------------ crashes and failures


def test_failure_after_delegate_add_is_undone(node, ctr):
    node.write_env()
    r = node.run("ADD", "fp1", ctr, extra_env={"PYCNI_FAILPOINTS": "flannel-after-delegate-add=error"})
    assert_cni_error(r, 999)
    assert_clean(node, "fp1", ctr)


@pytest.mark.parametrize("point", ["flannel-before-save", "flannel-after-save"])
def test_crash_then_del_cleans_up(node, ctr, point):
    node.write_env()
    r = node.run("ADD", "crash1", ctr, extra_env={"PYCNI_FAILPOINTS": point + "=kill"})
    assert r.rc == -9, r
    assert os.path.exists(node.saved("crash1")) == (point == "flannel-after-save")
    assert node.run("DEL", "crash1", ctr).rc == 0
    assert_clean(node, "crash1", ctr)
    r = node.run("ADD", "crash1", ctr)            # nothing blocks the next ADD
    assert r.rc == 0, r
    assert node.run("DEL", "crash1", ctr).rc == 0


def test_bad_delegate_config_changes_nothing(node, ctr):
    node.write_env()
    err = assert_cni_error(node.run("ADD", "bad1", ctr, conf=node.conf(delegate={"name": "x"})), 7)
    assert err["msg"] == "'delegate' dictionary must not have 'name' field, it'll be set by flannel"
    assert not os.path.exists(node.data_dir)
    assert "cni0" not in node.ns.links()


def test_del_replays_saved_config_whatever_the_current_one(node, ctr):
    """DEL uses the saved bytes: a delegate block broken since ADD, or a
    subnet.env gone, does not stop it."""
    node.write_env()
    assert node.run("ADD", "replay1", ctr).rc == 0
    os.unlink(node.subnet_file)
    r = node.run("DEL", "replay1", ctr, conf=node.conf(delegate={"name": "x", "type": 5}))
    assert r.rc == 0, r
    assert_clean(node, "replay1", ctr)


@pytest.mark.parametrize("with_env", [True, False], ids=["subnet.env", "no subnet.env"])
@pytest.mark.parametrize("bad", [
    {"delegate": {"ipam": {"type": "host-local"}}}, {"delegate": {"name": "x"}}, {"delegate": "bridge"},
    {"subnetFile": 5, "dataDir": ["x"]}, {"ipam": ["host-local"]}, {"ipam": {"type": "../../bin/sh"}},
    {"dataDir": "/tmp/\x00x", "subnetFile": "/run/\x00"}, {"subnetFileWait": "soon"},
], ids=["delegate ipam", "delegate name", "delegate string", "paths wrong type", "ipam list",
        "ipam type injection", "paths with NUL", "wait as string"])
def test_del_of_nothing_succeeds_with_a_config_add_refuses(node, ctr, bad, with_env):
    """flannel DEL with a config its ADD refuses (a delegate holding ipam)
    failed with code 7 although nothing was saved: the runtime retried it
    for ever and the pod never went away.  Upstream flannel succeeds."""
    if with_env:
        node.write_env()
    conf = node.conf(**dict({"subnetFileWait": 0}, **bad))
    assert node.run("ADD", "never1", ctr, conf=conf).rc == 1
    links = set(node.ns.links())
    r = node.run("DEL", "never1", ctr, conf=conf)
    assert r.rc == 0 and r.stdout == "", r
    assert set(node.ns.links()) == links and node.leases() == []
    assert not os.path.lexists(node.saved("never1"))


def test_del_with_a_config_add_refuses_still_cleans_up_what_is_there(node, ctr):
    """The saved config is lost and the config now puts ipam in the
    delegate: the lease is released through the top-level ipam, the veth
    found by its alias."""
    node.write_env()
    assert node.run("ADD", "lost1", ctr).rc == 0
    os.unlink(node.saved("lost1"))
    assert node.leases() and node.pod_veths()
    r = node.run("DEL", "lost1", ctr, conf=node.conf(delegate={"ipam": {"type": "host-local"}}))
    assert r.rc == 0, r
    assert_clean(node, "lost1", ctr)


def test_pycni_fabric_with_netns(plugins, go_plugins, netns_factory, tmp_path, run_env):
    """``pycni fabric --netns`` of the form under test works from outside the node."""
    import subprocess
    nodes, nodes_file = make_cluster(plugins, netns_factory, tmp_path, run_env, v6=False)
    env = dict(os.environ, **run_env)
    root_links = set(os.listdir("/sys/class/net"))
    for n in nodes:
        r = subprocess.run([os.path.join(plugins, "pycni"), "fabric", "up", "--netns", n.ns.name,
                            "--nodes", nodes_file, "--node", n.name, "--subnet-file", n.subnet_file],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r
        assert "flannel.1: vxlan id 1 local %s" % UNDERLAY4[n.index - 1] in r.stdout
        assert "flannel.1" in n.ns.links()
    assert set(os.listdir("/sys/class/net")) == root_links
    ctr = netns_factory()
    assert nodes[1].run("ADD", "netns-pod", ctr).rc == 0
    nodes[0].ns.run("ping", "-c", "1", "-W", "5", "10.244.2.2")   # host -> remote pod over vxlan
    assert nodes[1].run("DEL", "netns-pod", ctr).rc == 0
    for n in nodes:
        r = subprocess.run([os.path.join(plugins, "pycni"), "fabric", "down", "--netns", n.ns.name,
                            "--subnet-file", n.subnet_file], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r
        assert_node_clean(n)
    r = subprocess.run([os.path.join(plugins, "pycni"), "fabric", "down", "--netns", "pycni-no-such-ns"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "does not exist" in r.stderr
