"""bridge through the built plugins, in namespaces: traffic, results, options.

Every test runs in a host netns of its own with a bridge of its own; IPAM
is the host-local first on CNI_PATH (see bridge_env).
"""

import json
import os
import subprocess
import threading

import pytest
from bridge_env import ctr_link, ctr_routes, ping, vlan_filtering_supported
from cnitest import ALL_VERSIONS, assert_cni_error

pytestmark = pytest.mark.root


def test_two_containers_ping_through_cni0(node):
    node.bridge = "cni0"      # the default name, inside the test's own host netns
    conf = node.conf(isGateway=True)
    del conf["bridge"]
    a, b = node.container(), node.container()
    ra = node.add(conf, a, cid="ca")
    rb = node.add(conf, b, cid="cb")
    ip_a = ra["ips"][0]["address"].split("/")[0]
    ip_b = rb["ips"][0]["address"].split("/")[0]
    assert ra["interfaces"][0]["name"] == "cni0"
    assert ping(a, ip_b) and ping(b, ip_a)
    assert ping(a, "10.22.0.1")                       # the gateway on the bridge
    assert node.addrs("cni0")[0] == "10.22.0.1/24"
    for veth in (ra["interfaces"][1]["name"], rb["interfaces"][1]["name"]):
        assert node.links()[veth]["master"] == "cni0"
    node.delete(conf, a, cid="ca")
    node.delete(conf, b, cid="cb")
    node.assert_clean()
    assert "cni0" in node.links()                     # DEL never removes the bridge


@pytest.mark.parametrize("v", ALL_VERSIONS)
def test_add_check_del_every_version(node, v):
    conf = node.conf(v, isDefaultGateway=True, ipMasq=True)
    ctr = node.container()
    res = node.add(conf, ctr)
    assert res["cniVersion"] == v
    eth0 = ctr_link(ctr)
    assert "UP" in eth0["flags"]
    if v in ("0.1.0", "0.2.0"):
        assert res["ip4"]["ip"] == "10.22.0.2/24" and res["ip4"]["gateway"] == "10.22.0.1"
        assert {"dst": "0.0.0.0/0", "gw": "10.22.0.1"} in res["ip4"]["routes"]
    else:
        names = [i["name"] for i in res["interfaces"]]
        assert names[0] == node.bridge and names[1].startswith("veth") and names[2] == "eth0"
        assert len(names[1]) == 12 and int(names[1][4:], 16) >= 0
        assert res["interfaces"][2] == {"name": "eth0", "mac": eth0["address"], "sandbox": ctr.path}
        assert res["interfaces"][1]["mac"] == node.links()[names[1]]["address"]
        assert res["interfaces"][0]["mac"] == node.links()[node.bridge]["address"]
        ip = res["ips"][0]
        assert ip["address"] == "10.22.0.2/24" and ip["gateway"] == "10.22.0.1"
        assert ip["interface"] == 2
        assert ("version" in ip) == (v in ("0.3.0", "0.3.1", "0.4.0"))
        assert {"dst": "0.0.0.0/0", "gw": "10.22.0.1"} in res["routes"]
    assert [r for r in ctr_routes(ctr) if r["dst"] == "default"][0]["gateway"] == "10.22.0.1"
    if conf["ipam"]["type"] == "host-local":
        assert node.leases() == ["10.22.0.2"]
    if v >= "0.4.0":
        r = node.check(conf, ctr, res)
        assert r.rc == 0, r
    node.delete(dict(conf, prevResult=res) if v >= "0.4.0" else conf, ctr)
    assert "eth0" not in ctr.links()
    node.assert_clean()
    node.delete(conf, ctr)              # containerd's second DEL, without prevResult
    node.assert_clean()


def test_check_fails_clearly_when_the_address_is_gone(node):
    conf = node.conf("1.0.0", isGateway=True)
    ctr = node.container()
    res = node.add(conf, ctr)
    assert node.check(conf, ctr, res).rc == 0
    ctr.run("ip", "addr", "del", "10.22.0.2/24", "dev", "eth0")
    err = assert_cni_error(node.check(conf, ctr, res), 999)
    assert err["msg"] == "address 10.22.0.2/24 from prevResult is missing on eth0 in %s" % ctr.path
    err = assert_cni_error(node.run("CHECK", conf, ctr), 7)
    assert "prevResult" in err["msg"]


def test_check_notices_a_veth_moved_off_the_bridge_and_missing_rules(node):
    conf = node.conf("1.0.0", isGateway=True, ipMasq=True)
    ctr = node.container()
    res = node.add(conf, ctr)
    node.host.run("nft", "flush", "chain", "inet", "pycni-masq", "postrouting")    # a firewall reload
    err = assert_cni_error(node.check(conf, ctr, res), 999)
    assert "masquerade rules" in err["msg"] and "chain postrouting" in err["details"]
    node.add(conf, node.container(), cid="c2")       # the next ADD repairs the shared skeleton
    assert node.check(conf, ctr, res).rc == 0
    node.host.run("nft", "delete", "table", "inet", "pycni-masq")
    err = assert_cni_error(node.check(conf, ctr, res), 999)
    assert "masquerade rules" in err["msg"]
    node.host.run("ip", "link", "set", res["interfaces"][1]["name"], "nomaster")
    err = assert_cni_error(node.check(conf, ctr, res), 999)
    assert "not on bridge %s" % node.bridge in err["msg"]


def test_mtu_on_both_veth_ends_and_a_new_bridge(node):
    conf = node.conf(mtu=1400, isGateway=True)
    ctr = node.container()
    res = node.add(conf, ctr)
    assert ctr_link(ctr)["mtu"] == 1400
    assert node.links()[res["interfaces"][1]["name"]]["mtu"] == 1400
    assert node.links()[node.bridge]["mtu"] == 1400
    assert ctr.run("ping", "-c1", "-W3", "-M", "do", "-s", "1372", "10.22.0.1").returncode == 0


def test_hairpin_and_port_isolation(node):
    a, b = node.container(), node.container()
    ra = node.add(node.conf(hairpinMode=True, portIsolation=True), a, cid="ca")
    rb = node.add(node.conf(), b, cid="cb")
    ports = node.bridge_ports()
    pa, pb = ports[ra["interfaces"][1]["name"]], ports[rb["interfaces"][1]["name"]]
    assert pa["hairpin"] is True and pa["isolated"] is True
    assert pb["hairpin"] is False and pb["isolated"] is False
    # isolated ports cannot talk to each other, only to non-isolated ones
    c = node.container()
    rc = node.add(node.conf(portIsolation=True), c, cid="cc")
    ip_a, ip_c = (r["ips"][0]["address"].split("/")[0] for r in (ra, rc))
    assert ping(b, ip_a) and ping(b, ip_c)
    assert not ping(a, ip_c) and not ping(c, ip_a)


def test_promiscuous_bridge(node):
    ctr = node.container()
    node.add(node.conf(promiscMode=True), ctr)
    assert "PROMISC" in node.links()[node.bridge]["flags"]


def test_vlan_access_port(node):
    conf = node.conf(vlan=100)
    ctr = node.container()
    if not vlan_filtering_supported(node.host):
        # this kernel lacks CONFIG_BRIDGE_VLAN_FILTERING: a clear error, nothing left
        err = assert_cni_error(node.run("ADD", conf, ctr), 999)
        assert "VLAN filtering" in err["msg"]
        assert node.bridge not in node.links() and node.veths() == [] and node.leases() == []
        node.delete(conf, ctr)
        pytest.skip("kernel without bridge VLAN filtering: only the refusal was checked")
    res = node.add(conf, ctr)
    out = json.loads(node.host.run("bridge", "-j", "vlan", "show").stdout)
    port = [p for p in out if p["ifname"] == res["interfaces"][1]["name"]][0]
    assert port["vlans"] == [{"vlan": 100, "flags": ["PVID", "Egress Untagged"]}]


def test_layer2_without_ipam(node):
    conf = node.conf(ipam={})
    ctr = node.container()
    res = node.add(conf, ctr)
    assert "ips" not in res and len(res["interfaces"]) == 3
    assert "UP" in ctr_link(ctr)["flags"]
    assert ctr.addrs("eth0") == [a for a in ctr.addrs("eth0") if a.startswith("fe80")]
    node.delete(conf, ctr)
    assert node.veths() == []


def test_layer2_with_a_result_version_that_needs_an_ip_is_refused_up_front(node):
    ctr = node.container()
    err = assert_cni_error(node.run("ADD", node.conf("0.2.0", ipam={}), ctr), 1)
    assert "0.2.0" in err["msg"]
    assert node.links().keys() == {"lo"} and "eth0" not in ctr.links()


def test_disable_container_interface(node):
    conf = node.conf(ipam={}, disableContainerInterface=True)
    ctr = node.container()
    node.add(conf, ctr)
    assert "UP" not in ctr_link(ctr)["flags"]


def test_container_mac_from_capability_and_cni_args(node):
    ctr = node.container()
    conf = node.conf(runtimeConfig={"mac": "0a:58:0a:16:00:99"})
    res = node.add(conf, ctr, args="IgnoreUnknown=1;MAC=0a:58:0a:16:00:11")
    assert ctr_link(ctr)["address"] == "0a:58:0a:16:00:99"
    assert res["interfaces"][2]["mac"] == "0a:58:0a:16:00:99"
    other = node.container()
    node.add(node.conf(), other, cid="c2", args="IgnoreUnknown=1;MAC=0a:58:0a:16:00:11")
    assert ctr_link(other)["address"] == "0a:58:0a:16:00:11"


def test_host_veth_alias_names_the_pod(node):
    ctr = node.container()
    res = node.add(node.conf(), ctr, cid="abc123",
                   args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1")
    alias = node.links()[res["interfaces"][1]["name"]]["ifalias"]
    assert alias == "pycni net=bnet cid=abc123 if=eth0 pod=default/web-0"


def test_dual_stack_ping_and_default_routes(node):
    ipam = {"type": "host-local", "dataDir": node.data_dir,
            "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]]}
    conf = node.conf(ipam=ipam, isDefaultGateway=True)
    a, b = node.container(), node.container()
    ra = node.add(conf, a, cid="ca")
    node.add(conf, b, cid="cb")
    assert [i["address"] for i in ra["ips"]] == ["10.22.0.2/24", "fd00:22::2/64"]
    assert {"dst": "::/0", "gw": "fd00:22::1"} in ra["routes"]
    assert ping(a, "10.22.0.3") and ping(a, "fd00:22::3") and ping(b, "fd00:22::2")
    assert ping(a, "fd00:22::1")                    # the bridge's gateway, no DAD wait
    assert [r for r in ctr_routes(a, "-6") if r["dst"] == "default"][0]["gateway"] == "fd00:22::1"
    assert ctr_link(a) and a.run("sysctl", "-n", "net.ipv6.conf.eth0.accept_dad").stdout.strip() == "0"
    # the sysctls the reference sets, whether through /proc or netlink here
    sysctl = lambda ns, name: ns.run("sysctl", "-n", name).stdout.strip()  # noqa: E731
    assert sysctl(a, "net.ipv4.conf.eth0.arp_notify") == "1"
    host_veth = ra["interfaces"][1]["name"]
    assert sysctl(node.host, "net.ipv6.conf.%s.accept_ra" % host_veth) == "0"
    assert sysctl(node.host, "net.ipv6.conf.%s.accept_ra" % ra["interfaces"][0]["name"]) == "0"
    assert sysctl(node.host, "net.ipv4.ip_forward") == "1"
    assert sysctl(node.host, "net.ipv6.conf.all.forwarding") == "1"
    assert node.check(conf, a, ra, cid="ca").rc == 0
    node.delete(conf, a, cid="ca")
    node.delete(conf, b, cid="cb")
    node.assert_clean()


def test_ipv6_only_with_dad(node):
    ipam = {"type": "host-local", "dataDir": node.data_dir, "ranges": [[{"subnet": "fd00:23::/64"}]]}
    conf = node.conf(ipam=ipam, isDefaultGateway=True, enabledad=True)
    a, b = node.container(), node.container()
    node.add(conf, a, cid="ca")
    node.add(conf, b, cid="cb")
    assert a.run("sysctl", "-n", "net.ipv6.conf.eth0.accept_dad").stdout.strip() == "1"
    out = a.run("ip", "-j", "-6", "addr", "show", "dev", "eth0").stdout
    flags = [ai for link in json.loads(out) for ai in link["addr_info"] if ai["local"] == "fd00:23::2"]
    assert flags and not flags[0].get("tentative")      # ADD waited for DAD to finish
    assert ping(a, "fd00:23::3") and ping(b, "fd00:23::1")


def test_parallel_adds_on_a_fresh_bridge_get_one_gateway(node):
    conf = node.conf(isGateway=True, ipMasq=True)
    ctrs = [node.container() for _ in range(8)]
    runs = [None] * len(ctrs)

    def add(i):
        runs[i] = node.run("ADD", conf, ctrs[i], cid="par%d" % i)
    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(ctrs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.rc == 0 for r in runs), [r for r in runs if r.rc]
    assert [a for a in node.addrs(node.bridge) if not a.startswith("fe80")] == ["10.22.0.1/24"]
    assert len(node.veths()) == 8 and len(node.leases()) == 8


def test_ipam_of_another_type(node):
    """The Go static IPAM, found on CNI_PATH like any other."""
    ipam = {"type": "static", "addresses": [{"address": "10.22.0.77/24", "gateway": "10.22.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}]}
    conf = node.conf(ipam=ipam, isDefaultGateway=True)
    ctr = node.container()
    res = node.add(conf, ctr)
    assert res["ips"][0]["address"] == "10.22.0.77/24"
    # static's route without gw: the gateway is filled in, no duplicate default route
    assert res["routes"] == [{"dst": "0.0.0.0/0"}]
    assert [r for r in ctr_routes(ctr) if r["dst"] == "default"][0]["gateway"] == "10.22.0.1"
    node.delete(conf, ctr)


def test_dns_from_the_config_replaces_ipam_dns(node):
    ipam = {"type": "static", "addresses": [{"address": "10.22.0.77/24"}],
            "dns": {"nameservers": ["10.0.0.53"]}}
    ctr = node.container()
    res = node.add(node.conf(ipam=ipam), ctr)
    assert res["dns"] == {"nameservers": ["10.0.0.53"]}
    other = node.container()
    res = node.add(node.conf(ipam=ipam, dns={"nameservers": ["1.1.1.1"], "search": ["x"]}), other,
                   cid="c2")
    assert res["dns"] == {"nameservers": ["1.1.1.1"], "search": ["x"]}


def test_macspoofchk_drops_a_forged_source_mac(node):
    conf = node.conf(macspoofchk=True)
    a, b = node.container(), node.container()
    node.add(conf, a, cid="ca")
    node.add(node.conf(), b, cid="cb")
    assert ping(a, "10.22.0.3")
    elems = node.nft_elements("pycni-spoof", "bridge")
    assert sorted(s for s, _v, _c in elems) == ["allowed", "ports"]
    assert all(" id=ca " in c for _s, _v, c in elems)
    a.run("ip", "link", "set", "eth0", "address", "0a:58:0a:16:00:42")
    b.run("ip", "neigh", "flush", "all")
    assert not ping(a, "10.22.0.3")
    node.delete(conf, a, cid="ca")
    assert node.nft_elements("pycni-spoof", "bridge") == []


def test_second_add_without_del_is_refused_and_keeps_the_first(node):
    conf = node.conf(isGateway=True, ipMasq=True)
    ctr = node.container()
    node.add(conf, ctr)
    before = (node.veths(), node.leases(), node.nft_tables(), node.owned(), node.records())
    err = assert_cni_error(node.run("ADD", conf, ctr), 999)
    assert "already exists" in err["msg"]
    assert (node.veths(), node.leases(), node.nft_tables(), node.owned(), node.records()) == before


def test_status_and_gc_forward_to_ipam(node):
    ctr1, ctr2 = node.container(), node.container()
    conf = node.conf("1.1.0", ipMasq=True, isGateway=True)
    conf2 = dict(conf, ipam=node.ipam("1.1.0", host=3))
    node.add(conf, ctr1, cid="keep")
    node.add(conf2, ctr2, cid="gone")
    assert {cid for _ip, cid in node.masq_owners()} == {"keep", "gone"}
    r = node.run("STATUS", conf)
    assert r.rc == 0, r
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    r = node.run("GC", gc)
    assert r.rc == 0, r
    assert {cid for _ip, cid in node.masq_owners()} == {"keep"}
    assert len(node.records()) == 1
    if conf["ipam"]["type"] == "fake-ipam":
        calls = [json.loads(ln) for ln in open(node.calls)]
        gcs = [c for c in calls if c["cmd"] == "GC"]
        assert gcs and gcs[0]["valid"] == [{"containerID": "keep", "ifname": "eth0"}]
        open(os.path.join(node.tmp, "notready"), "w").close()
        conf["ipam"]["notReadyFile"] = os.path.join(node.tmp, "notready")
        err = assert_cni_error(node.run("STATUS", conf), 50)
        assert "fake pool exhausted" in err["msg"]
    else:
        # GC reached host-local with the list: the lease of "gone" is freed, "keep"'s stays
        owners = []
        for d in {conf["ipam"]["dataDir"], conf2["ipam"]["dataDir"]}:
            for root, _dirs, files in os.walk(d):
                owners += [open(os.path.join(root, f)).read().splitlines()[0] for f in files
                           if f[0].isdigit() and not f.startswith("last_reserved")]
        assert owners == ["keep"], owners
        # host-local not ready (its dataDir cannot hold leases): bridge says so, with the reason
        blocker = os.path.join(node.tmp, "not-a-dir")
        open(blocker, "w").close()
        bad = dict(conf, ipam=dict(conf["ipam"], dataDir=os.path.join(blocker, "leases")))
        err = assert_cni_error(node.run("STATUS", bad), 50)
        assert "host-local cannot write leases" in err["msg"] and "not-a-dir" in err["msg"]
    # a GC without the list removes nothing
    r = node.run("GC", conf)
    assert r.rc == 0 and {cid for _ip, cid in node.masq_owners()} == {"keep"}


def test_a_new_pod_announces_itself_with_gratuitous_arp(node):
    """Neighbours learn the new pod's MAC at once (a reused IP's old entry is replaced)."""
    conf = node.conf(isGateway=True)
    node.add(conf, node.container(), cid="first")            # the bridge exists now
    td = subprocess.Popen(["ip", "netns", "exec", node.host.name, "tcpdump", "-e", "-n", "-l",
                           "--immediate-mode", "-c", "1", "-i", node.bridge, "arp"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in td.stderr:
            if "listening on" in line:
                break
        ctr = node.container()
        res = node.add(conf, ctr, cid="second")
        seen = td.communicate(timeout=20)[0]
    finally:
        td.kill()
        td.wait()
    ip = res["ips"][0]["address"].split("/")[0]
    mac = res["interfaces"][2]["mac"]
    assert "%s > ff:ff:ff:ff:ff:ff" % mac in seen and "who-has %s" % ip in seen
    assert "tell %s" % ip in seen


def test_through_the_warm_agent(node, agent):
    """The same ADD/DEL served by a forked agent worker in the caller's netns."""
    conf = node.conf(isDefaultGateway=True, ipMasq=True)
    a, b = node.container(), node.container()
    env = {"PYCNI_AGENT_SOCKET": agent}
    ra = node.add(conf, a, cid="ag1", env=env)
    node.add(conf, b, cid="ag2")                    # and one done in-process
    assert ping(b, ra["ips"][0]["address"].split("/")[0])
    assert {cid for _ip, cid in node.masq_owners()} == {"ag1", "ag2"}
    node.delete(conf, a, cid="ag1", env=env)
    node.delete(conf, b, cid="ag2", env=env)
    node.assert_clean()
