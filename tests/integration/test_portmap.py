"""portmap through the built plugins, with real traffic, against both backends.

One semantic suite, parametrized over the backend (nftables, iptables) and
the install form: a listener in a container attached by the Go bridge is
reached through the host's address from an outside namespace, from the
host itself (its own address and 127.0.0.1) and from another container on
the same bridge (hairpin); over TCP and UDP, IPv4 and IPv6.  After DEL the
port is closed and no rule is left.
"""

import json
import os
import re

import chained
import pytest
from chained import BRIDGE4, HOST4, HOST6, OUT4, OUT6
from cnitest import ALL_VERSIONS, GO_CNI, assert_cni_error, read_text, run_plugin

from cnilib.firewall import naming

pytestmark = pytest.mark.root

BACKENDS = ("nftables", "iptables")
MAPS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8081, "containerPort": 80, "protocol": "udp"}]


@pytest.fixture
def node(netns_factory, tmp_path, go_plugins, statedir):
    n = chained.Node(netns_factory, tmp_path)
    n.run_dir = str(tmp_path / "run")
    n.env = {"PYCNI_RUN_DIR": n.run_dir, "PYCNI_STATE_DIR": str(tmp_path / "pstate")}
    yield n
    n.close()


def pm(node, plugins, verb, conf, cid="c1", ifname="eth0", env=None):
    extra = dict(node.env)
    extra.update(env or {})
    ns = node.ctrs.get(cid)
    return run_plugin(os.path.join(plugins, "portmap"), verb, conf, containerid=cid,
                      netns=ns.path if ns else "/var/run/netns/pycni-gone", ifname=ifname, path=plugins,
                      host_netns=node.host.name, extra_env=extra)


def pm_conf(node, cid, backend, maps=MAPS, **kw):
    c = chained.chained_conf("portmap", node.results[cid], backend=backend, **kw)
    if maps is not None:
        c["runtimeConfig"] = {"portMappings": maps}
    return c


def as_040(result):
    out = dict(result, cniVersion="0.4.0")
    out["ips"] = [dict(ip, version="6" if ":" in ip["address"] else "4") for ip in result["ips"]]
    return out


def norm(result):
    """A result without its empty keys (the Go bridge prints "dns": {})."""
    return {k: v for k, v in result.items() if v not in ({}, [], None)}


# what an attachment's port mappings leave, in any backend or design: the
# previous per-attachment tables, the iptables chain, a DNAT rule, our chain
# or an element whose comment names an attachment (the shared skeleton of
# inet pycni-hostport stays, as the Go plugin's cni_hostport table does)
LEFTOVER = re.compile(r'pycni-hp-|CNI-DN-|dnat (ip6? )?to|--to-destination|chain hp-|'
                      r'comment "pycni [0-9a-f]{12}-')


def no_portmap_rules(node):
    return LEFTOVER.search(node.ruleset()) is None


def reachable(node, cid="c1"):
    """Answers on every path the issue names, keyed by path."""
    out = node.outside
    return {
        "outside tcp4": node.ask(out, "tcp", HOST4, 8080),
        "outside udp4": node.ask(out, "udp", HOST4, 8081),
        "outside tcp6": node.ask(out, "tcp", HOST6, 8080),
        "outside udp6": node.ask(out, "udp", HOST6, 8081),
        "host own ip": node.ask(node.host, "tcp", HOST4, 8080),
        "host localhost": node.ask(node.host, "tcp", "127.0.0.1", 8080),
        "host localhost udp": node.ask(node.host, "udp", "127.0.0.1", 8081),
        "hairpin via bridge ip": node.ask(node.ctrs["c2"], "tcp", BRIDGE4, 8080),
        "hairpin via host ip": node.ask(node.ctrs["c2"], "udp", HOST4, 8081),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostports_reached_everywhere_then_closed(plugins, node, backend):
    node.attach("c1")
    node.attach("c2")
    node.serve("c1")
    r = pm(node, plugins, "ADD", pm_conf(node, "c1", backend))
    assert r.rc == 0, r
    assert r.json == norm(node.results["c1"])                  # prevResult passed through
    got = reachable(node)
    assert got == {
        "outside tcp4": "c1 " + OUT4,                           # client address preserved
        "outside udp4": "c1 " + OUT4,
        "outside tcp6": "c1 fd77::2",
        "outside udp6": "c1 fd77::2",
        "host own ip": "c1 " + HOST4,
        "host localhost": "c1 " + BRIDGE4,                      # masqueraded (route_localnet)
        "host localhost udp": "c1 " + BRIDGE4,
        "hairpin via bridge ip": "c1 " + BRIDGE4,               # masqueraded hairpin
        "hairpin via host ip": "c1 " + BRIDGE4,
    }
    assert node.host.run("sysctl", "-n", "net.ipv4.conf.cni0.route_localnet").stdout.strip() == "1"
    assert pm(node, plugins, "CHECK", pm_conf(node, "c1", backend)).rc == 0
    once = node.ruleset()
    assert pm(node, plugins, "ADD", pm_conf(node, "c1", backend)).rc == 0      # idempotent
    assert node.ruleset() == once
    r = pm(node, plugins, "DEL", pm_conf(node, "c1", backend))
    assert r.rc == 0 and r.stdout == "", r
    assert all(v.startswith("ERR") for v in reachable(node).values()), reachable(node)
    assert no_portmap_rules(node), node.ruleset()
    after = node.ruleset()
    assert pm(node, plugins, "DEL", pm_conf(node, "c1", backend)).rc == 0        # DEL again
    assert node.ruleset() == after
    assert pm(node, plugins, "ADD", pm_conf(node, "c1", backend)).rc == 0
    assert pm(node, plugins, "DEL", pm_conf(node, "c1", backend)).rc == 0
    assert node.ruleset() == after          # what stays is shared, never per attachment


@pytest.mark.parametrize("backend", BACKENDS)
def test_del_without_mappings_or_prev_result_cleans_everything(plugins, node, backend):
    node.attach("c1")
    node.serve("c1")
    assert pm(node, plugins, "ADD", pm_conf(node, "c1", backend)).rc == 0
    assert node.ask(node.outside, "tcp", HOST4, 8080) == "c1 " + OUT4
    bare = chained.chained_conf("portmap", None)
    if backend == "iptables":       # even a config that no longer validates
        bare["runtimeConfig"] = {"portMappings": [{"hostPort": 0, "containerPort": 80}]}
    r = pm(node, plugins, "DEL", bare)
    assert r.rc == 0, r
    assert node.ask(node.outside, "tcp", HOST4, 8080).startswith("ERR")
    assert no_portmap_rules(node), node.ruleset()


@pytest.mark.parametrize("added,deleted", [("nftables", "iptables"), ("iptables", "nftables")])
def test_del_after_a_backend_switch_cleans_everything(plugins, node, added, deleted):
    """ADD under one backend, DEL with a config naming the other (an edited
    conflist, a node that lost nft): DEL tears down both backends."""
    node.attach("c1")
    node.serve("c1")
    assert pm(node, plugins, "ADD", pm_conf(node, "c1", added)).rc == 0
    assert node.ask(node.outside, "tcp", HOST4, 8080) == "c1 " + OUT4
    r = pm(node, plugins, "DEL", pm_conf(node, "c1", deleted))
    assert r.rc == 0, r
    assert node.ask(node.outside, "tcp", HOST4, 8080).startswith("ERR")
    assert no_portmap_rules(node), node.ruleset()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_networks_keep_each_others_ports(plugins, node, backend):
    node.attach("c1")
    node.serve("c1")
    # the second network's addresses, on the same veth for the test's sake
    node.ctrs["c1"].run("ip", "addr", "add", "10.88.0.200/24", "dev", "eth0")
    node.ctrs["c1"].run("ip", "addr", "add", "fd88::200/64", "dev", "eth0", "nodad")
    prev2 = json.loads(json.dumps(node.results["c1"]))
    for i in prev2["interfaces"]:
        if i.get("sandbox"):
            i["name"] = "net1"
    for ip in prev2["ips"]:
        ip["address"] = "10.88.0.200/24" if ":" not in ip["address"] else "fd88::200/64"
    one = pm_conf(node, "c1", backend, maps=[MAPS[0]])
    two = chained.chained_conf("portmap", prev2, name="othernet", backend=backend,
                               runtimeConfig={"portMappings": [{"hostPort": 9090, "containerPort": 80,
                                                                "protocol": "tcp"}]})
    assert pm(node, plugins, "ADD", one).rc == 0
    assert pm(node, plugins, "ADD", two, ifname="net1").rc == 0
    assert node.ask(node.outside, "tcp", HOST4, 9090) == "c1 " + OUT4
    assert pm(node, plugins, "DEL", two, ifname="net1").rc == 0
    assert node.ask(node.outside, "tcp", HOST4, 9090).startswith("ERR")
    assert node.ask(node.outside, "tcp", HOST4, 8080) == "c1 " + OUT4
    assert pm(node, plugins, "CHECK", one).rc == 0
    assert pm(node, plugins, "DEL", one).rc == 0
    assert no_portmap_rules(node)


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_fails_when_rules_are_gone_and_add_repairs(plugins, node, backend):
    node.attach("c1")
    conf = pm_conf(node, "c1", backend)
    assert pm(node, plugins, "ADD", conf).rc == 0
    if backend == "nftables":       # our chain flushed, and the shared dispatch too
        chain = naming.attachment_chain("hp", "pmnet", "c1", "eth0")
        node.host.run("nft", "flush", "chain", "inet", "pycni-hostport", chain)
        node.host.run("nft", "flush", "chain", "inet", "pycni-hostport", "hostports")
    else:
        node.host.run("iptables", "-t", "nat", "-F", "PREROUTING")      # a firewall reload
    err = assert_cni_error(pm(node, plugins, "CHECK", conf), 999)
    assert "expected" in err["msg"] or "lacks" in err["msg"]
    assert pm(node, plugins, "ADD", conf).rc == 0
    assert pm(node, plugins, "CHECK", conf).rc == 0
    assert pm(node, plugins, "DEL", conf).rc == 0
    assert_cni_error(pm(node, plugins, "CHECK", conf), 999)


def test_udp_conntrack_flushed_on_add_and_del(plugins, node):
    node.attach("c1")
    node.serve("c1")
    # conntrack runs in the host netns once some rule needs it
    node.host.run("nft", "add table inet keepct; add chain inet keepct c "
                  "{ type filter hook prerouting priority 0; }; add rule inet keepct c ct state new accept")
    # a client that keeps its source port, as statsd/DNS clients do
    assert node.ask(node.outside, "udp", HOST4, 8081, sport=40000, timeout=1).startswith("ERR")
    assert "dport=8081" in node.host.run("conntrack", "-L", "-p", "udp").stdout
    assert pm(node, plugins, "ADD", pm_conf(node, "c1", "nftables")).rc == 0
    assert node.ask(node.outside, "udp", HOST4, 8081, sport=40000) == "c1 " + OUT4
    assert "dport=8081" in node.host.run("conntrack", "-L", "-p", "udp").stdout
    assert pm(node, plugins, "DEL", chained.chained_conf("portmap", None)).rc == 0
    assert "dport=8081" not in node.host.run("conntrack", "-L", "-p", "udp").stdout


def test_rules_of_the_go_plugin_are_removed(plugins, node):
    """The reference portmap (iptables) and its nftables layout, emulated: our DEL clears both."""
    node.attach("c1")
    node.serve("c1")
    conf = pm_conf(node, "c1", None)
    del conf["backend"]
    conf["cniVersion"] = "0.4.0"
    conf["prevResult"] = as_040(conf["prevResult"])
    r = run_plugin(os.path.join(GO_CNI, "portmap"), "ADD", conf,
                   containerid="c1", netns=node.ctrs["c1"].path, ifname="eth0", path=GO_CNI,
                   host_netns=node.host.name)
    assert r.rc == 0, r
    assert node.ask(node.outside, "tcp", HOST4, 8080) == "c1 " + OUT4
    ip = node.ip("c1")
    node.host.run("nft", "-f", "-", input=(
        'add table ip cni_hostport { comment "CNI portmap plugin"; }\n'
        "add chain ip cni_hostport hostports\nadd chain ip cni_hostport masquerading\n"
        'add rule ip cni_hostport hostports udp dport 7000 dnat to %s:53 comment "c1"\n'
        'add rule ip cni_hostport hostports tcp dport 7001 dnat to %s:53 comment "other"\n'
        'add rule ip cni_hostport masquerading ip saddr %s ip daddr %s masquerade comment "c1"\n'
        % (ip, ip, ip, ip)))
    assert "CNI-DN-" in node.ruleset()
    r = pm(node, plugins, "DEL", chained.chained_conf("portmap", None))
    assert r.rc == 0, r
    text = node.ruleset()
    assert "CNI-DN-" not in text and "dport 7000" not in text and 'comment "c1"' not in text, text
    assert "dport 7001" in text                                # another container's rule stays
    assert node.ask(node.outside, "tcp", HOST4, 8080).startswith("ERR")


def test_gc_removes_only_stale_attachments(plugins, node):
    node.attach("c1")
    node.attach("c2")
    for cid, backend, port in (("c1", "nftables", 8080), ("c2", "nftables", 8090), ("c2", "iptables", 8091)):
        maps = [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]
        assert pm(node, plugins, "ADD", pm_conf(node, cid, backend, maps=maps, cniVersion="1.1.0"),
                  cid=cid).rc == 0
    gc = {"cniVersion": "1.1.0", "name": "pmnet", "type": "portmap",
          "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    r = run_plugin(os.path.join(plugins, "portmap"), "GC", gc, path=plugins, host_netns=node.host.name,
                   extra_env=node.env)
    assert r.rc == 0, r
    text = node.ruleset()
    assert "dport 8080" in text and "8090" not in text and "8091" not in text and "CNI-DN-" not in text


def test_failed_add_leaves_nothing(plugins, node):
    node.attach("c1")
    r = pm(node, plugins, "ADD", pm_conf(node, "c1", "nftables"),
           env={"PYCNI_FAILPOINTS": "portmap-after-rules=error"})
    assert_cni_error(r, 999)
    assert no_portmap_rules(node)


def test_no_mappings_touches_nothing(plugins, node):
    node.attach("c1")
    before = node.ruleset()
    for maps in (None, []):
        r = pm(node, plugins, "ADD", pm_conf(node, "c1", None, maps=maps))
        assert r.rc == 0 and r.json == norm(node.results["c1"]), r
    assert node.ruleset() == before


@pytest.mark.parametrize("v", ALL_VERSIONS)
def test_result_is_prev_result_in_every_version(plugins, node, v):
    node.attach("c1")
    prev = dict(node.results["c1"], cniVersion=v)
    if v < "0.3.0":
        prev = {"cniVersion": v, "ip4": {"ip": node.results["c1"]["ips"][0]["address"]}}
    elif v < "1.0.0":
        prev = dict(as_040(prev), cniVersion=v)
    conf = chained.chained_conf("portmap", prev, version=v, runtimeConfig={"portMappings": MAPS[:1]})
    r = pm(node, plugins, "ADD", conf)
    assert r.rc == 0, r
    assert r.json == norm(prev)
    assert "dport 8080" in node.ruleset()
    if v >= "0.4.0":
        assert pm(node, plugins, "CHECK", conf).rc == 0
    assert pm(node, plugins, "DEL", conf).rc == 0
    assert no_portmap_rules(node)


HOSTILE = [
    ("port 0", [{"hostPort": 0, "containerPort": 80}], {}),
    ("port 70000", [{"hostPort": 70000, "containerPort": 80}], {}),
    ("icmp", [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}], {}),
    ("injected hostIP", [{"hostPort": 80, "containerPort": 80, "hostIP": "1.2.3.4 accept; flush ruleset"}],
     {}),
    ("injected protocol", [{"hostPort": 80, "containerPort": 80, "protocol": "tcp; flush ruleset"}], {}),
    ("condition escape", MAPS, {"conditionsV4": ["ip", "saddr", "1.1.1.1;", "flush", "ruleset"]}),
    ("iptables condition quote", MAPS, {"conditionsV4": ["-m", "comment", "--comment", 'x" -j ACCEPT']}),
    ("other backend's option", MAPS, {"backend": "nftables", "externalSetMarkChain": "KUBE-MARK-MASQ"}),
    ("mark bit", MAPS, {"markMasqBit": 40}),
    ("not a list", {"hostPort": 80}, {}),
]


@pytest.mark.parametrize("what,maps,extra", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_values_refused_with_nothing_changed(plugins, node, what, maps, extra):
    node.attach("c1")
    before = node.ruleset()
    conf = pm_conf(node, "c1", None, maps=maps)
    del conf["backend"]
    conf.update(extra)
    for verb in ("ADD", "CHECK"):
        assert_cni_error(pm(node, plugins, verb, conf), 7)
    assert pm(node, plugins, "DEL", conf).rc == 0          # cleans up by key, never wedges
    assert node.ruleset() == before
    assert_cni_error(pm(node, plugins, "ADD", dict(conf, prevResult=None, runtimeConfig={})), 7)


BAD_PREV = [
    ("address banana", {"ips": [{"address": "banana", "interface": 2}]}),
    ("address without prefix", {"ips": [{"address": "10.1.2.3", "interface": 2}]}),
    ("gateway garbage", {"ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1; drop"}]}),
    ("route dst garbage", {"routes": [{"dst": "default"}]}),
]


@pytest.mark.parametrize("what,bad", BAD_PREV, ids=[b[0] for b in BAD_PREV])
@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_prev_result_that_does_not_parse_is_a_cni_error(plugins, node, what, bad, backend):
    """portmap read "address": "banana" as a result without an address:
    exit 0, nothing mapped, and the runtime believed the hostPort was up.
    Every chained plugin parses prevResult in cnilib.cni: code 6 on ADD and
    CHECK, and DEL still cleans up by the attachment's key."""
    node.attach("c1")
    good = pm_conf(node, "c1", backend)
    assert pm(node, plugins, "ADD", good).rc == 0
    mapped = node.ruleset()
    conf = dict(good, prevResult=dict(good["prevResult"], **bad))
    for verb in ("ADD", "CHECK"):
        err = assert_cni_error(pm(node, plugins, verb, conf), 6)
        assert err["msg"].startswith("prevResult.") and "is not" in err["msg"], err
    assert node.ruleset() == mapped
    r = pm(node, plugins, "DEL", conf)
    assert r.rc == 0 and r.stdout == "", r
    assert no_portmap_rules(node)


OPTIONS = [
    ("iptables", {"externalSetMarkChain": "KUBE-MARK-MASQ", "conditionsV4": ["!", "-s", "10.66.0.0/16"]}),
    ("iptables", {"markMasqBit": 14, "masqAll": True, "conditionsV6": ["-m", "comment", "--comment", "a b"]}),
    ("nftables", {"conditionsV4": ["ip", "saddr", "!=", "{", "10.66.0.0/16,", "10.67.0.0/16", "}"],
                  "masqAll": True}),
    ("nftables", {"snat": False}),
]


@pytest.mark.parametrize("backend,extra", OPTIONS, ids=["external-mark", "mark-bit", "nft-conds", "no-snat"])
def test_options_reach_the_kernel(plugins, node, backend, extra):
    node.attach("c1")
    node.serve("c1")
    for cmd in ("iptables", "ip6tables"):
        node.host.run(cmd, "-t", "nat", "-N", "KUBE-MARK-MASQ")
    maps = MAPS + [{"hostPort": 9000, "containerPort": 80, "protocol": "sctp"},
                   {"hostPort": 8082, "containerPort": 80, "protocol": "tcp", "hostIP": HOST4}]
    conf = pm_conf(node, "c1", backend, maps=maps, **extra)
    r = pm(node, plugins, "ADD", conf)
    assert r.rc == 0, r
    seen = BRIDGE4 if extra.get("masqAll") else OUT4          # masqAll hides every client
    assert node.ask(node.outside, "tcp", HOST4, 8082) == "c1 " + seen
    assert node.ask(node.outside, "udp", HOST6, 8081) == "c1 " + ("fd88::1" if extra.get("masqAll") else OUT6)
    assert pm(node, plugins, "CHECK", conf).rc == 0
    assert pm(node, plugins, "DEL", conf).rc == 0
    assert no_portmap_rules(node), node.ruleset()


def test_a_held_iptables_lock_is_waited_for_within_a_bound(plugins, node):
    """Issue 16 item 13: the suite's iptables lock was waited for without a
    bound (an ADD hung as long as any holder did); now code 11 after the
    bound, naming the holder, with nothing changed; the retry works."""
    import fcntl
    node.attach("c1")
    node.serve("c1")
    os.makedirs(node.run_dir, exist_ok=True)
    before = node.ruleset()
    fd = os.open(os.path.join(node.run_dir, "iptables.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = pm(node, plugins, "ADD", pm_conf(node, "c1", "iptables"),
               env={"PYCNI_IPTABLES_LOCK_WAIT": "1"})
        err = assert_cni_error(r, 11)
        assert "iptables lock" in err["msg"] and "by pid %d" % os.getpid() in err["msg"], err
        assert node.ruleset() == before
    finally:
        os.close(fd)
    assert pm(node, plugins, "ADD", pm_conf(node, "c1", "iptables")).rc == 0
    assert node.ask(node.outside, "tcp", HOST4, 8080) == "c1 " + OUT4
    assert pm(node, plugins, "DEL", pm_conf(node, "c1", "iptables")).rc == 0
    assert no_portmap_rules(node), node.ruleset()


# a UDP service the node binds to 127.0.0.1 only; it notes each sender in
# the file argv[2] and answers it (an attacker needs no answer: one
# datagram that reaches it is the hole)
LOCAL_ONLY = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, a = u.recvfrom(100)
    with open(sys.argv[2], "a") as f:
        f.write(a[0] + "\n")
    try:
        u.sendto(b"node-local\n", a)
    except OSError:
        pass
"""


def aim_at_node_localhost(node, cid):
    """What an attacker in pod ``cid`` does (CVE-2020-8558): route 127.0.0.1
    out of eth0 to its gateway, so the packet reaches the node's bridge with
    a loopback destination."""
    ns = node.ctrs[cid]
    ns.run("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf.eth0.route_localnet=1")
    ns.run("ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local", check=False)
    ns.run("ip", "route", "del", "local", "127.0.0.1", "dev", "lo", "table", "local", check=False)
    ns.run("ip", "route", "add", "127.0.0.1/32", "via", BRIDGE4, "dev", "eth0", "src", node.ip(cid))


def senders(path):
    import time
    time.sleep(0.3)
    return read_text(path).split()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pod_cannot_reach_what_the_node_binds_to_localhost(plugins, node, backend, tmp_path):
    """Issue 16 item 9: with route_localnet on the bridge (for localhost
    hostPorts), a pod reached the node's 127.0.0.1 services through the
    iptables backend; both backends now drop 127.0.0.0/8 arriving on the
    bridge (raw PREROUTING), and localhost hostPorts keep working."""
    import subprocess
    import sys
    node.attach("c1")
    node.attach("c2")
    node.serve("c1")
    log = str(tmp_path / "senders")
    srv = subprocess.Popen(["ip", "netns", "exec", node.host.name, sys.executable, "-c", LOCAL_ONLY,
                            "9999", log], stdout=subprocess.PIPE, text=True)
    node.servers.append(srv)
    assert srv.stdout.readline().strip() == "ready"
    aim_at_node_localhost(node, "c2")
    assert node.ask(node.host, "udp", "127.0.0.1", 9999) == "node-local"          # the service is up
    assert pm(node, plugins, "ADD", pm_conf(node, "c1", backend)).rc == 0
    assert node.host.run("sysctl", "-n", "net.ipv4.conf.cni0.route_localnet").stdout.strip() == "1"
    node.ask(node.ctrs["c2"], "udp", "127.0.0.1", 9999, timeout=0.5)
    assert senders(log) == ["127.0.0.1"], "the pod reached the node's 127.0.0.1:9999"
    assert node.ask(node.host, "tcp", "127.0.0.1", 8080) == "c1 " + BRIDGE4            # what it is for
    assert node.ask(node.host, "udp", "127.0.0.1", 8081) == "c1 " + BRIDGE4
    assert pm(node, plugins, "CHECK", pm_conf(node, "c1", backend)).rc == 0
    # the guard lives as long as route_localnet: after the last DEL too
    assert pm(node, plugins, "DEL", pm_conf(node, "c1", backend)).rc == 0
    assert node.host.run("sysctl", "-n", "net.ipv4.conf.cni0.route_localnet").stdout.strip() == "1"
    node.ask(node.ctrs["c2"], "udp", "127.0.0.1", 9999, timeout=0.5)
    assert senders(log) == ["127.0.0.1"], "the pod reached the node's 127.0.0.1:9999"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thousand_mappings_on_one_pod(plugins, node, backend):
    """Issue 16 item 6: nftables failed every ADD above ~255 hostPorts
    (IPv4; ~125 dual-stack) with ENOBUFS/EMSGSIZE.  1,000 mappings, half
    tcp half udp, on both families: ADD, traffic to a sample, CHECK, DEL
    leaving nothing."""
    node.attach("c1")
    node.serve("c1")
    maps = [{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp" if i % 2 else "udp"}
            for i in range(1000)]
    r = pm(node, plugins, "ADD", pm_conf(node, "c1", backend, maps=maps))
    assert r.rc == 0, r
    for port in (20001, 20499, 20999):
        assert node.ask(node.outside, "tcp", HOST4, port) == "c1 " + OUT4
        assert node.ask(node.outside, "tcp", HOST6, port) == "c1 fd77::2"
    for port in (20000, 20998):
        assert node.ask(node.outside, "udp", HOST4, port) == "c1 " + OUT4
    assert pm(node, plugins, "CHECK", pm_conf(node, "c1", backend, maps=maps)).rc == 0
    assert pm(node, plugins, "DEL", pm_conf(node, "c1", backend, maps=maps)).rc == 0
    assert node.ask(node.outside, "tcp", HOST4, 20001).startswith("ERR")
    assert no_portmap_rules(node), node.ruleset()[:2000]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sixty_four_pods_of_sixteen_mappings(plugins, node, backend):
    """Issue 16 item 6, the other shape: 64 pods with 16 hostPorts each on
    one node; traffic to a sample; DEL of all of them leaves nothing."""
    pods = ["p%02d" % i for i in range(64)]
    maps = {cid: [{"hostPort": 30000 + 16 * i + j, "containerPort": 80, "protocol": "tcp"}
                  for j in range(16)] for i, cid in enumerate(pods)}
    for cid in pods:
        node.attach(cid)
        r = pm(node, plugins, "ADD", pm_conf(node, cid, backend, maps=maps[cid]), cid=cid)
        assert r.rc == 0, r
    for i in (0, 31, 63):
        node.serve(pods[i])
        for j in (0, 15):
            assert node.ask(node.outside, "tcp", HOST4, 30000 + 16 * i + j) == "%s %s" % (pods[i], OUT4)
    for cid in pods:
        assert pm(node, plugins, "DEL", pm_conf(node, cid, backend, maps=maps[cid]), cid=cid).rc == 0
    assert node.ask(node.outside, "tcp", HOST4, 30000).startswith("ERR")
    assert no_portmap_rules(node), node.ruleset()[:2000]


WILD = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
ON_HOST4 = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": HOST4}]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first,later", [(WILD, ON_HOST4), (ON_HOST4, WILD)],
                         ids=["wild-first", "specific-first"])
def test_a_wildcard_and_a_specific_hostport_clash_both_ways(plugins, node, backend, first, later):
    """Issue 16 item 5: on nftables a later pod's hostPort on a specific
    hostIP took the traffic of an earlier pod's hostPort on every address
    (the specific map is looked up first).  Now the later ADD is refused
    as an exact clash is, naming the holder, both ways round; the earlier
    pod keeps its traffic.  The iptables backend (as Go) keeps first-wins
    without refusing: its per-pod chains are visited in ADD order, so the
    earlier pod keeps its traffic there too."""
    node.attach("c1")
    node.attach("c2")
    node.serve("c1")
    node.serve("c2")
    assert pm(node, plugins, "ADD", pm_conf(node, "c1", backend, maps=first), cid="c1").rc == 0
    before = node.ruleset()
    r = pm(node, plugins, "ADD", pm_conf(node, "c2", backend, maps=later), cid="c2")
    if backend == "nftables":
        err = assert_cni_error(r, 999)
        assert "clashes with" in err["msg"] and "held by another attachment (network pmnet, container c1, " \
               "interface eth0)" in err["msg"], err
        assert node.ruleset() == before
    else:
        assert r.rc == 0, r
    assert node.ask(node.outside, "tcp", HOST4, 8080) == "c1 " + OUT4         # the earlier pod keeps it
    assert pm(node, plugins, "DEL", pm_conf(node, "c2", backend, maps=later), cid="c2").rc == 0
    assert node.ask(node.outside, "tcp", HOST4, 8080) == "c1 " + OUT4
    assert pm(node, plugins, "DEL", pm_conf(node, "c1", backend, maps=first), cid="c1").rc == 0
    assert pm(node, plugins, "ADD", pm_conf(node, "c2", backend, maps=later), cid="c2").rc == 0   # free now
    assert node.ask(node.outside, "tcp", HOST4, 8080) == "c2 " + OUT4
    assert pm(node, plugins, "DEL", pm_conf(node, "c2", backend, maps=later), cid="c2").rc == 0
    assert no_portmap_rules(node), node.ruleset()
