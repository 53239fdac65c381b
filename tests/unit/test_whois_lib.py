"""The pure parts of pycni whois: reading state files, joining layers into
attachments, marking orphans, queries, rendering; the raw link parser and
the rule readers."""

import json
import os
import struct

from cnilib.firewall import naming
from cnilib.ipam import store
from cnilib.kernel.link import LinkBrief, parse_link_brief
from cnilib.ops import nodestate, resultcache, rulesets, whois


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    return path


def cache_entry(cache, net, cid, ifn, netns="", result=None, caps=None):
    e = {"kind": "cniCacheV1", "containerId": cid, "config": "", "ifName": ifn, "networkName": net}
    if netns:
        e["netns"] = netns
    if caps:
        e["capabilityArgs"] = caps
    e["result"] = result or {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.9/24"}]}
    return write(os.path.join(cache, "results", "%s-%s-%s" % (net, cid, ifn)), json.dumps(e))


def locations(tmp_path):
    loc = nodestate.Locations(str(tmp_path / "net.d"), [str(tmp_path / "ipam")],
                              [str(tmp_path / "flannel")], str(tmp_path / "cache"), [],
                              [str(tmp_path / "tuning")], [str(tmp_path / "bin")])
    loc.load_configs()
    return loc


def brief(index, name, kind="veth", alias=None, master=0, peer=2, nsid=None, mtu=1450):
    b = LinkBrief()
    b.index, b.name, b.kind, b.alias, b.master, b.peer_index = index, name, kind, alias, master, peer
    b.link_netnsid, b.mtu, b.mac, b.operstate, b.flags, b.slave_kind = nsid, mtu, None, "UP", 1, None
    return b


def test_files_only_join_and_orphans(tmp_path):
    loc = locations(tmp_path)
    ipam = str(tmp_path / "ipam")
    write(os.path.join(ipam, "cbr0", "10.1.0.9"), "c1\r\neth0")
    write(os.path.join(ipam, "cbr0", "10.1.0.10"), "legacy")            # id-only lease
    write(os.path.join(ipam, "cbr0", "10.1.0.11"), b"")                 # torn
    write(os.path.join(ipam, "cbr0", "lock"), b"")
    write(os.path.join(ipam, "cbr0", "last_reserved_ip.0"), "10.1.0.11")
    cache_entry(str(tmp_path / "cache"), "cbr0", "c1", "eth0", netns="/var/run/netns/pycni-test-gone",
                caps={"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]})
    write(str(tmp_path / "cache" / "results" / "cbr0-bad-eth0"), "{nope")
    write(str(tmp_path / "flannel" / "c1"), json.dumps({"name": "cbr0", "type": "bridge"}))
    write(str(tmp_path / "flannel" / "c9"), b"")
    write(str(tmp_path / "tuning" / "cbr0" / "c1:eth0.json"), "{}")
    node = whois.build(loc, kernel=False)
    rows = {r.key: r for r in node.rows}
    r = rows[("cbr0", "c1", "eth0")]
    assert [lease.ip for lease in r.leases] == ["10.1.0.9"] and r.saved.cid == "c1" and r.tuning is not None
    assert r.ips() == ["10.1.0.9/24"]
    assert r.host_ports() == [("tcp", None, 80, None, 8080, "cache only: no rule found")]
    assert r.orphan == ["lease", "cache", "saved", "tuning"] and not r.live
    assert rows[("cbr0", "legacy", None)].orphan == ["lease"]
    assert [os.path.basename(e.path) for e in node.cache if e.problem] == ["cbr0-bad-eth0"]
    assert [(s.cid, s.state) for s in node.saved] == [("c1", "ok"), ("c9", "empty")]
    assert [lease.ip for lease in node.leases if lease.torn] == ["10.1.0.11"]
    assert node.lease_nets == {"cbr0"}


def test_veths_join_by_alias_hash_and_cache(tmp_path):
    loc = locations(tmp_path)
    node = whois.Node(loc)
    cache = str(tmp_path / "cache")
    cache_entry(cache, "net", "c2", "eth0", result={"cniVersion": "1.0.0", "interfaces": [
        {"name": "cni0"}, {"name": "vethgo"}, {"name": "eth0", "sandbox": "/x"}], "ips": []})
    cache_entry(cache,
                "net", "c3", "eth1", result={"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.30/24"}]})
    node.cache = resultcache.read_cache(cache, [])
    for ip, owner in (("10.1.0.9", "c1\r\neth0"), ("10.1.0.20", "c2\r\neth0"), ("10.1.0.30", "c3\r\neth1")):
        write(os.path.join(str(tmp_path / "ipam"), "net", ip), owner)
    node.leases, node.lease_nets = store.read_leases([str(tmp_path / "ipam")], [])
    node.links = [brief(1, "lo", kind=None), brief(4, "cni0", kind="bridge"),
                  brief(5, "vethA", alias=naming.veth_alias("net", "c1", "eth0", "ns/pod"), master=4),
                  brief(6, "vethgo", master=4),
                  brief(7, "vethH", alias="pycni att=%s if=eth1"
                        % naming.attachment_hash("net", "c3", "eth1"),
                        master=4),
                  brief(8, "vethX", alias="pycni net=net cid=nolease if=eth0", master=4),
                  brief(9, "docker-veth", master=0)]
    whois._join(node, None)
    rows = {r.key: r for r in node.rows}
    assert rows[("net", "c1", "eth0")].veth.name == "vethA" and rows[("net", "c1", "eth0")].pod == "ns/pod"
    assert rows[("net", "c2", "eth0")].veth.name == "vethgo"
    assert rows[("net", "c3", "eth1")].veth.name == "vethH"
    assert rows[("net", "nolease", "eth0")].orphan == ["veth"]
    assert all(r.orphan == [] for k, r in rows.items() if k[1] != "nolease")
    assert "docker-veth" not in [r.veth.name for r in node.rows if r.veth]
    assert node.bridges == {"cni0"}
    # queries
    assert [r.cid for r in whois.find(node, "vethA")] == ["c1"]
    assert [r.cid for r in whois.find(node, "10.1.0.9")] == ["c1"]
    assert [r.cid for r in whois.find(node, "10.1.0.30/24")] == ["c3"]
    assert [r.cid for r in whois.find(node, "nolea")] == ["nolease"]
    assert [r.cid for r in whois.find(node, "ns/pod")] == ["c1"] == [r.cid for r in whois.find(node, "pod")]
    assert whois.find(node, "no") == []                 # a prefix needs 3 characters
    table = whois.render_table(node.rows).splitlines()
    assert table[0].split()[:3] == ["NETWORK", "CONTAINER", "IF"]
    assert any(row.split()[0] == "net" and "ORPHAN veth" in row for row in table)


def test_rules_join_by_hash_and_go_chain(tmp_path):
    loc = locations(tmp_path)
    node = whois.Node(loc)
    node.links = [brief(5, "vethA", alias=naming.veth_alias("net", "c1", "eth0"), master=0)]
    t_live = naming.attachment_table("hp", "net", "c1", "eth0")
    t_dead = naming.attachment_table("masq", "net", "dead", "eth0")
    items = [{"table": {"family": "inet", "name": t_live}}, {"table": {"family": "inet", "name": t_dead}},
             {"table": {"family": "inet", "name": "other"}},
             {"chain": {"family": "inet", "table": t_live, "name": "hostports"}},
             {"rule": {"family": "inet", "table": t_live, "chain": "hostports", "expr": [
                 {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
                 {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                            "right": 8080}},
                 {"dnat": {"family": "ip", "addr": "10.1.0.9", "port": 80}}]}}]
    chains, _ = rulesets.parse_ruleset(items)
    node.groups = nodestate.nft_rule_groups(chains)
    chain = naming.go_chain("net", "gone")
    dn = naming.go_chain("net", "c1", "CNI-DN-")
    save = ("*nat\n:POSTROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n:%s - [0:0]\n:%s - [0:0]\n"
            '-A POSTROUTING -s 10.1.0.7/32 -m comment --comment "name: \\"net\\" id: \\"gone\\"" -j %s\n'
            '-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"net\\" id: \\"c1\\"" '
            "-m multiport --dports 9090 -j %s\n"
            "-A %s -p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.1.0.9:90\n"
            "-A %s -d 10.1.0.0/24 -j ACCEPT\nCOMMIT\n") % (chain, dn, chain, dn, dn, chain)
    node.groups += nodestate.ipt_rule_groups(4, rulesets.parse_save(save))
    whois._join(node, None)
    rows = {r.key: r for r in node.rows}
    live = rows[("net", "c1", "eth0")]
    assert sorted(g.where for g in live.rules) == sorted(["nft inet %s" % t_live, "iptables -t nat %s" % dn])
    assert sorted(p[2] for p in live.host_ports()) == [8080, 9090] and live.orphan == []
    gone = rows[("net", "gone", None)]
    assert gone.orphan == ["rules"] and gone.rules[0].delete == [
        ["iptables", "-t", "nat", "-D", "POSTROUTING", "-s", "10.1.0.7/32", "-m", "comment", "--comment",
         'name: "net" id: "gone"', "-j", chain],
        ["iptables", "-t", "nat", "-F", chain], ["iptables", "-t", "nat", "-X", chain]]
    dead = [r for r in node.rows if any(g.att_hash and t_dead.endswith(g.att_hash) for g in r.rules)][0]
    assert dead.orphan == ["rules"] and dead.rules[0].delete == [["nft", "delete", "table", "inet", t_dead]]
    # gc --dry-run's view: everything of network "net" outside {(c1, eth0)}
    got = whois.gc_preview(node, "net", [("c1", "eth0")])
    assert sorted(kind for kind, _ in got) == ["rules", "rules"]
    got = whois.gc_preview(node, "net", [])
    assert any(t.startswith("vethA (c1/eth0) LIVE") for kind, t in got if kind == "veth")


def test_parse_table_comment():
    text = ('table inet pycni-hp-a-b {\n\tcomment "pycni hp net=cbr0 id=abc if=eth0"\n'
            "\tchain hostports {\n\t}\n}\n")
    assert nodestate.parse_table_comment(text) == {"net": "cbr0", "id": "abc", "if": "eth0"}
    assert nodestate.parse_table_comment("table inet x {\n}\n") == {}


def _attr(t, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + b"\0" * ((4 - n % 4) % 4)


def test_parse_link_brief():
    attrs = (_attr(3, b"vethA\0") + _attr(4, struct.pack("=I", 1450)) + _attr(5, struct.pack("=I", 2))
             + _attr(10, struct.pack("=I", 4)) + _attr(16, b"\x06") + _attr(1, bytes.fromhex("0efec0000201"))
             + _attr(20, b"pycni net=n cid=c if=eth0\0") + _attr(37, struct.pack("=i", 3))
             + _attr(18 | 0x8000, _attr(1, b"veth\0") + _attr(4, b"bridge\0")))
    body = struct.pack("=BBHiII", 0, 0, 1, 7, 0x1043, 0) + attrs
    msg = struct.pack("=IHHII", 16 + len(body), 16, 2, 1, 0) + body
    b = parse_link_brief(msg)
    assert (b.index, b.name, b.mtu, b.peer_index, b.master, b.operstate, b.mac, b.link_netnsid) == (
        7, "vethA", 1450, 2, 4, "UP", "0e:fe:c0:00:02:01", 3)
    assert (b.kind, b.slave_kind, b.alias, b.up) == ("veth", "bridge", "pycni net=n cid=c if=eth0", True)
    bare = struct.pack("=BBHiII", 0, 0, 1, 1, 0, 0) + _attr(3, b"lo\0")
    b = parse_link_brief(struct.pack("=IHHII", 16 + len(bare), 16, 2, 1, 0) + bare)
    assert (b.name, b.kind, b.link_netnsid, b.alias, b.mac) == ("lo", None, None, None, None)


def test_locations_follow_the_configs(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
        {"type": "flannel", "subnetFile": "/s/subnet.env", "dataDir": "/f", "ipam": {"dataDir": "/i"}},
        {"type": "tuning", "dataDir": "/t"},
        {"type": "portmap"}]}
    write(str(tmp_path / "net.d" / "10-x.conflist"), json.dumps(conf))
    write(str(tmp_path / "net.d" / "20-y.conflist"), json.dumps(
        {"cniVersion": "1.0.0", "name": "y",
         "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}}]}))
    loc = nodestate.Locations(str(tmp_path / "net.d"), cache_dir="/c")
    loc.load_configs()
    assert loc.data_dirs == ["/var/lib/cni/networks", "/i"]
    assert loc.flannel_dirs == ["/var/lib/cni/flannel", "/f"]
    assert loc.subnet_files == ["/s/subnet.env"] and not loc.explicit_subnet
    assert loc.tuning_dirs == ["/run/cni/tuning", "/t"]
    only = nodestate.Locations.of_network(loc.networks()[1], loc.conf_dir, "/c")
    assert (only.data_dirs, only.flannel_dirs, only.subnet_files) == (["/var/lib/cni/networks"], [], [])
