"""The shared nftables tables' bookkeeping, without a kernel: element keys,
records, the add/take-over/conflict plan, and GC's sweep of a listing."""

import os

import pytest

from cnilib.base import errors
from cnilib.base.log import Log
from cnilib.firewall import naming, records, shared

ATT = ("cbr0", "abc123", "eth0")
OTHER = ("cbr0", "zzz999", "eth0")
TBL = shared.Table("masq", "inet", "pycni-test", "masquerade", {"postrouting": 2}, lambda: "SKELETON\n",
                   legacy="masq")


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("PYCNI_STATE_DIR", str(tmp_path))
    return tmp_path


def test_keys_are_the_kernels_registers():
    assert shared.ip_key(4, "10.1.2.3") == bytes([10, 1, 2, 3])
    assert len(shared.ip_key(6, "fd00::1")) == 16
    assert shared.port_key("udp", 53) == bytes([17, 0, 0, 0, 0, 53, 0, 0])
    assert shared.ip_port_key(4, "10.1.2.3", "sctp", 9000) == bytes([10, 1, 2, 3, 132, 0, 0, 0, 0x23, 0x28, 0,
                                                                     0])
    assert shared.ifname_key("cni0") == b"cni0" + b"\0" * 12
    want = b"v" + b"\0" * 15 + bytes.fromhex("0a0000000001") + b"\0\0"
    assert shared.ifname_mac_key("v", "0a:00:00:00:00:01") == want
    e = shared.Elem("s", b"\x01\x02", "c", "l")
    back = shared.Elem.from_json(e.to_json())
    assert (back.set, back.key, back.chain, back.label) == ("s", b"\x01\x02", "c", "l")


def test_records_round_trip_and_are_keyed(state):
    assert records.load("masq", *ATT) is None
    records.save("masq", *ATT, {"elems": [["saddr4", "0a000002", "c", "10.0.0.2"]]})
    rec = records.load("masq", *ATT)
    assert rec["elems"][0][1] == "0a000002" and (rec["net"], rec["cid"], rec["if"]) == ATT
    assert records.load_hash("masq", naming.attachment_hash(*ATT)) == rec
    assert records.load("masq", "cbr0", "abc123", "eth1") is None
    records.save("masq", *OTHER, {})
    records.save("masq", "other", "x", "eth0", {})
    assert sorted(r["cid"] for r in records.scan("masq", "cbr0")) == ["abc123", "zzz999"]
    (state / "nft" / "masq" / ".pycni-tmp-1-x").write_text("torn")
    (state / "nft" / "masq" / "0123456789abcdef").write_text("{not json")
    assert len(records.scan("masq")) == 3
    assert records.remove("masq", *ATT) and not records.remove("masq", *ATT)


class FakeNf:
    """The element lookups shared._plan asks, from a dict."""

    def __init__(self, elements):
        self.elements = elements

    def element(self, family, table, set_name, key):
        return self.elements.get((set_name, key))


def elem(ip):
    return shared.Elem("saddr4", shared.ip_key(4, ip), "subnet-x", ip)


def test_plan_creates_free_keys_and_leaves_its_own_alone():
    log = Log("t", {})
    mine = {"chain": "subnet-x", "comment": naming.element_comment(*ATT)}
    nf = FakeNf({("saddr4", shared.ip_key(4, "10.0.0.3")): mine})
    ops = shared._plan(nf, TBL, ATT, [elem("10.0.0.2"), elem("10.0.0.3")], [], log)
    assert ops == [("create", "inet", "pycni-test", "saddr4", shared.ip_key(4, "10.0.0.2"), "subnet-x",
                    naming.element_comment(*ATT))]


def test_plan_refuses_a_key_held_by_a_live_attachment():
    records.save("masq", *OTHER, {})
    nf = FakeNf({("saddr4", shared.ip_key(4, "10.0.0.2")): {"chain": "subnet-x",
                                                            "comment": naming.element_comment(*OTHER)}})
    with pytest.raises(errors.CniError) as e:
        shared._plan(nf, TBL, ATT, [elem("10.0.0.2")], [], Log("t", {}))
    assert "10.0.0.2 is already held by another attachment (network cbr0, container zzz999, " \
           "interface eth0)" in e.value.msg


def test_plan_takes_over_a_key_whose_holder_has_no_record():
    log = Log("t", {})
    stale = {"chain": "subnet-old", "comment": naming.element_comment(*OTHER)}
    key = shared.ip_key(4, "10.0.0.2")
    ops = shared._plan(FakeNf({("saddr4", key): stale}), TBL, ATT, [elem("10.0.0.2")], [], log)
    assert [o[0] for o in ops] == ["delete", "create"]
    assert any("taken over" in line for line in log.lines)


def test_plan_drops_only_its_own_old_elements():
    mine = {"chain": "subnet-x", "comment": naming.element_comment(*ATT)}
    theirs = {"chain": "subnet-x", "comment": naming.element_comment(*OTHER)}
    nf = FakeNf({("saddr4", shared.ip_key(4, "10.0.0.7")): mine,
                 ("saddr4", shared.ip_key(4, "10.0.0.8")): theirs})
    ops = shared._plan(nf, TBL, ATT, [], [elem("10.0.0.7"), elem("10.0.0.8"), elem("10.0.0.9")], Log("t", {}))
    assert ops == [("delete", "inet", "pycni-test", "saddr4", shared.ip_key(4, "10.0.0.7"))]


LISTING = [
    {"metainfo": {"version": "1.0.6"}},
    {"map": {"family": "inet", "name": "saddr4", "table": "pycni-test", "type": "ipv4_addr", "map": "verdict",
             "elem": [[{"elem": {"val": "10.0.0.2", "comment": naming.element_comment(*ATT)}},
                       {"jump": {"target": "subnet-x"}}],
                      [{"elem": {"val": "10.0.0.3", "comment": naming.element_comment(*OTHER)}},
                       {"jump": {"target": "subnet-x"}}],
                      [{"elem": {"val": "10.0.0.4", "comment": naming.element_comment("net2", "q", "eth0")}},
                       {"jump": {"target": "subnet-x"}}],
                      ["10.0.0.5", {"jump": {"target": "subnet-x"}}]]}},
    {"map": {"family": "inet", "name": "ports4", "table": "pycni-test",
             "type": ["inet_proto", "inet_service"],
             "map": "verdict", "elem": [[{"elem": {"val": {"concat": ["tcp", 8080]},
                                                   "comment": naming.element_comment(*OTHER)}},
                                         {"jump": {"target": naming.attachment_chain("hp", *OTHER)}}]]}},
    {"set": {"family": "inet", "name": "ports", "table": "pycni-test", "type": "ifname",
             "elem": [{"elem": {"val": "veth1", "comment": naming.element_comment(*OTHER)}}]}},
    {"chain": {"family": "inet", "table": "pycni-test", "name": naming.attachment_chain("hp", *OTHER)}},
    {"chain": {"family": "inet", "table": "pycni-test", "name": naming.attachment_chain("hp", *ATT)}},
    {"chain": {"family": "inet", "table": "pycni-test", "name": "hostports"}},
]


def test_sweep_removes_what_names_a_dead_attachment_of_this_network_only():
    keep = {naming.element_key(*ATT)}
    prefix = naming.net_hash("cbr0") + "-"
    script = shared.sweep_script(TBL, LISTING, lambda k: k.startswith(prefix) and k not in keep, "hp")
    assert script == (
        "delete element inet pycni-test saddr4 { 10.0.0.3 }\n"
        "delete element inet pycni-test ports4 { tcp . 8080 }\n"
        'delete element inet pycni-test ports { "veth1" }\n'
        "delete chain inet pycni-test %s\n" % naming.attachment_chain("hp", *OTHER))
    assert shared.sweep_script(TBL, LISTING, lambda k: False, "hp") == ""


def test_a_holder_whose_netns_is_gone_is_dead(tmp_path):
    ns = tmp_path / "netns"
    ns.write_text("")
    rec = records.save("masq", *OTHER, records.netns_identity(str(ns)))
    assert records.alive(rec) is True
    assert records.alive({}) is None and records.netns_identity("") == {}
    key = shared.ip_key(4, "10.0.0.2")
    nf = FakeNf({("saddr4", key): {"chain": "subnet-x", "comment": naming.element_comment(*OTHER)}})
    with pytest.raises(errors.CniError):
        shared._plan(nf, TBL, ATT, [elem("10.0.0.2")], [], Log("t", {}))
    ns.unlink()                                  # the pod died without a DEL
    assert records.alive(rec) is False
    log = Log("t", {})
    ops = shared._plan(nf, TBL, ATT, [elem("10.0.0.2")], [], log)
    assert [o[0] for o in ops] == ["delete", "create"]
    assert any("whose netns %s is gone: taken over" % ns in line for line in log.lines)


def test_whois_groups_the_shared_tables_by_attachment():
    from cnilib.ops import nodestate, rulesets
    hp_old, hp_new = naming.attachment_chain("hp", *OTHER), naming.attachment_chain("hp", *ATT)

    def dnat(chain, port, ip):
        return {"rule": {"family": "inet", "table": "pycni-hostport", "chain": chain, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": port}},
            {"dnat": {"family": "ip", "addr": ip, "port": 80}}]}}
    items = [
        {"table": {"family": "inet", "name": "pycni-hostport"}},
        {"map": {"family": "inet", "name": "ports4", "table": "pycni-hostport",
                 "type": ["inet_proto", "inet_service"],
                 "elem": [[{"elem": {"val": {"concat": ["tcp", 8081]},
                                     "comment": naming.element_comment(*ATT)}},
                           {"jump": {"target": hp_new}}]]}},
        {"map": {"family": "inet", "name": "masq4", "table": "pycni-hostport", "type": "ipv4_addr",
                 "elem": [[{"elem": {"val": "10.0.0.3", "comment": naming.element_comment(*OTHER)}},
                           {"jump": {"target": "hairpin-x"}}]]}},
        {"chain": {"family": "inet", "table": "pycni-hostport", "name": hp_old}},
        {"chain": {"family": "inet", "table": "pycni-hostport", "name": hp_new}},
        dnat(hp_old, 8081, "10.0.0.3"), dnat(hp_new, 8081, "10.0.0.4"),
    ]
    chains, _ = rulesets.parse_ruleset(items)
    new, old = sorted(nodestate.nft_shared_groups(items, chains), key=lambda g: g.cid != "abc123")
    assert (new.kind, new.network, new.cid, new.ifname) == ("hp", "cbr0", "abc123", "eth0")
    assert new.ports == [("tcp", None, 8081, "10.0.0.4", 80)]
    assert old.ports == []                       # its hostPort was taken over: no longer its
    assert old.att_hash == naming.attachment_hash(*OTHER) and old.where.startswith("nft inet pycni-hostport ")
    assert old.delete == [["nft", "delete", "element", "inet", "pycni-hostport", "masq4", "{ 10.0.0.3 }"],
                          ["nft", "delete", "chain", "inet", "pycni-hostport", hp_old]]


def test_a_holder_is_its_netns_by_device_and_inode(tmp_path):
    ns = tmp_path / "netns"
    ns.write_text("")
    st = os.stat(ns)
    ident = records.netns_identity(str(ns))
    assert ident == {"netns": str(ns), "netns_ino": st.st_ino, "netns_dev": st.st_dev}
    assert records.alive(dict(ident)) is True
    # the same inode number on another file system is another file
    assert records.alive(dict(ident, netns_dev=st.st_dev + 1)) is False
    # a record written before the device was kept compares the inode alone
    assert records.alive({"netns": str(ns), "netns_ino": st.st_ino}) is True


class FakeNfDump:
    """Lookups and set dumps (for shared.Overlap), from a dict."""

    def __init__(self, held):
        self.held = held

    def element(self, family, table, set_name, key):
        return self.held.get((set_name, key))

    def elements(self, family, table, set_name):
        return [dict(v, key=k) for (s, k), v in self.held.items() if s == set_name]


def test_a_wildcard_and_a_specific_hostport_clash_both_ways():
    """Issue 16 item 5: the plan refuses a hostPort on every address while
    another live attachment holds it on one address, and the reverse."""
    from cnilib.firewall import portmap_rules as R
    records.save("hostport", *OTHER, {})
    theirs = {"chain": "hp-theirs", "comment": naming.element_comment(*OTHER)}
    tbl = shared.Table("hostport", "inet", R.TABLE_NAME, "portmap", {}, lambda: "")
    wild = [R.Mapping(8080, 80, "tcp", None, None)]
    one = [R.Mapping(8080, 80, "tcp", "192.0.2.10", 4)]
    ctrs = {4: ("10.88.0.5", 24)}
    for held, wanted, shown in ((one, wild, "clashes with hostPort 192.0.2.10:8080/tcp"),
                                (wild, one, "clashes with hostPort 8080/tcp (IPv4)")):
        held_elems, _x = R.nft_elements("hp-theirs", held, ctrs, snat=False)
        nf = FakeNfDump({(e.set, e.key): theirs for e in held_elems})
        want_elems, _x = R.nft_elements("hp-mine", wanted, ctrs, snat=False)
        with pytest.raises(errors.CniError) as e:
            shared._plan(nf, tbl, ATT, want_elems, [], Log("t", {}))
        assert shown in e.value.msg and "container zzz999" in e.value.msg, e.value.msg
    # another port, or the other family, is no clash
    other_port = [R.Mapping(8081, 80, "tcp", None, None)]
    held_elems, _x = R.nft_elements("hp-theirs", one, ctrs, snat=False)
    nf = FakeNfDump({(e.set, e.key): theirs for e in held_elems})
    mine = R.nft_elements("hp-mine", other_port, ctrs, snat=False)[0]
    assert [o[0] for o in shared._plan(nf, tbl, ATT, mine, [], Log("t", {}))] == ["create"]
    # a dead holder's clashing element is taken over (deleted), with a warning
    records.remove("hostport", *OTHER)
    log = Log("t", {})
    ops = shared._plan(nf, tbl, ATT, R.nft_elements("hp-mine", wild, ctrs, snat=False)[0], [], log)
    assert [o[0] for o in ops] == ["delete", "create"] and ops[0][3] == "hostip4"
    assert any("taken over" in line for line in log.lines)
