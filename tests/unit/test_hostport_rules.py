"""portmap rule text, byte for byte, for both backends (no root needed).

The iptables vectors are what the reference plugin (Debian's
containernetworking-plugins 1.1.1, /usr/lib/cni/portmap) left in
iptables-save for tests/unit/golden/portmap/go-v1.1.1-input.json: our
renderer must print the same lines, so rules either plugin made are found
and compared by the other.
"""

import json
import os

import pytest

from cnilib.base import addr
from cnilib.firewall import portmap_rules as R

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "portmap")
CHAIN = "CNI-DN-3e9a3d0f9583cdc0e7133"
COMMENT = '"dnat name: \\"cbr0\\" id: \\"abc123\\""'


def golden(name):
    with open(os.path.join(GOLDEN, name)) as f:
        return f.read()


def go_mappings():
    conf = json.loads(golden("go-v1.1.1-input.json"))
    out = []
    for e in conf["runtimeConfig"]["portMappings"]:
        got = addr.rule_ip(e["hostIP"]) if e.get("hostIP") else None
        out.append(R.Mapping(e["hostPort"], e["containerPort"], e["protocol"],
                             got[1] if got else None, got[0] if got else None))
    return out


CTRS = {4: ("10.244.1.2", 24), 6: ("fd00::2", 64)}


# ------------------------------------------------------------------ iptables


def test_chain_name_is_the_reference_one():
    assert R.dn_chain("cbr0", "abc123") == CHAIN
    assert R.sn_chain("cbr0", "abc123") == "CNI-SN-3e9a3d0f9583cdc0e7133"


@pytest.mark.parametrize("fam", [4, 6])
def test_container_chain_matches_the_reference(fam):
    saved = golden("go-v1.1.1-ipv%d.save" % fam)
    want = [ln for ln in saved.splitlines() if ln.startswith("-A " + CHAIN)]
    assert R.ipt_dn_rules(CHAIN, fam, CTRS[fam], go_mappings()) == want


def test_entry_rules_match_the_reference_without_conditions():
    saved = golden("go-v1.1.1-ipv6.save")
    want = [ln for ln in saved.splitlines() if ln.startswith("-A CNI-HOSTPORT-DNAT")]
    assert R.ipt_entry_rules(CHAIN, "cbr0", "abc123", go_mappings()) == want


def test_entry_rules_with_conditions_append_them():
    got = R.ipt_entry_rules(CHAIN, "cbr0", "abc123", go_mappings()[:1], ["!", "-d", "10.9.0.0/16"])
    assert got == ["-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment %s -m multiport --dports 8080 "
                   "! -d 10.9.0.0/16 -j %s" % (COMMENT, CHAIN)]
    # what iptables-save prints for them is still recognised
    saved = golden("go-v1.1.1-ipv4.save")
    assert R.ipt_entry_ports(saved, CHAIN) == {("tcp", "8080"), ("udp", "8081"), ("sctp", "9000")}


def test_shared_rules_match_the_reference():
    saved = golden("go-v1.1.1-ipv4.save").splitlines()
    for _chain, line, _first in R.ipt_shared_rules():
        assert line in saved
    assert [c for c, _l, first in R.ipt_shared_rules() if first] == ["POSTROUTING"]


def test_mark_bit_and_external_chain():
    lines = [ln for _c, ln, _f in R.ipt_shared_rules(mark_bit=14)]
    assert lines[0].endswith("-j MARK --set-xmark 0x4000/0x4000")
    assert lines[1] == "-A CNI-HOSTPORT-MASQ -m mark --mark 0x4000/0x4000 -j MASQUERADE"
    ext = R.ipt_shared_rules(external_mark_chain="KUBE-MARK-MASQ")
    assert [c for c, _l, _f in ext] == ["PREROUTING", "OUTPUT"]
    assert R.shared_chains(external_mark_chain="KUBE-MARK-MASQ") == ["CNI-HOSTPORT-DNAT"]
    got = R.ipt_dn_rules(CHAIN, 4, CTRS[4], go_mappings()[:1], setmark_chain="KUBE-MARK-MASQ")
    assert got[0] == "-A %s -s 10.244.1.0/24 -p tcp -m tcp --dport 8080 -j KUBE-MARK-MASQ" % CHAIN


def test_no_snat_and_masq_all():
    m = [R.Mapping(8080, 80)]
    assert R.ipt_dn_rules(CHAIN, 4, CTRS[4], m, snat=False) == [
        "-A %s -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.244.1.2:80" % CHAIN]
    assert R.ipt_dn_rules(CHAIN, 6, CTRS[6], m, masq_all=True) == [
        "-A %s -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK" % CHAIN,
        "-A %s -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00::2]:80" % CHAIN]
    assert R.ipt_shared_rules(snat=False) == R.ipt_shared_rules()[3:]


def test_unspecified_host_ip_keeps_family_without_destination():
    m = [R.Mapping(53, 5353, "udp", "::", 6)]
    assert R.ipt_dn_rules(CHAIN, 4, CTRS[4], m) == []
    assert R.ipt_dn_rules(CHAIN, 6, CTRS[6], m, snat=False) == [
        "-A %s -p udp -m udp --dport 53 -j DNAT --to-destination [fd00::2]:5353" % CHAIN]
    v6 = [R.Mapping(80, 8080, "tcp", "fd00:77::1", 6)]
    assert R.ipt_dn_rules(CHAIN, 6, CTRS[6], v6, snat=False) == [
        "-A %s -d fd00:77::1/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00::2]:8080" % CHAIN]


def test_multiport_groups_of_fifteen_sorted_by_protocol():
    maps = [R.Mapping(p, 80, "udp") for p in range(1000, 1020)] + [R.Mapping(22, 22, "sctp")]
    groups = R.port_groups(maps)
    assert list(groups) == ["sctp", "udp"]
    assert groups["udp"] == [",".join(str(p) for p in range(1000, 1015)),
                             ",".join(str(p) for p in range(1015, 1020))]
    rules = R.ipt_entry_rules(CHAIN, "cbr0", "abc123", maps)
    assert len(rules) == 3 and rules[0].startswith("-A CNI-HOSTPORT-DNAT -p sctp ")


def test_long_comment_is_trimmed_like_the_reference():
    c = R.entry_comment("n" * 128, "c" * 128)
    assert len(c) == 255 and c.endswith("...")


def test_add_batch_on_an_empty_table_declares_and_inserts():
    shared = R.ipt_shared_rules()
    dn = R.ipt_dn_rules(CHAIN, 4, CTRS[4], go_mappings()[:1])
    entries = R.ipt_entry_rules(CHAIN, "cbr0", "abc123", go_mappings()[:1])
    lines = R.ipt_add_lines("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", CHAIN, dn, entries, shared,
                            R.shared_chains())
    assert lines[:4] == [":CNI-HOSTPORT-SETMARK - [0:0]", ":CNI-HOSTPORT-MASQ - [0:0]",
                         ":CNI-HOSTPORT-DNAT - [0:0]", ":%s - [0:0]" % CHAIN]
    assert ('-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" '
            '-j CNI-HOSTPORT-MASQ') in lines
    assert lines[-4:] == dn + entries


def test_add_batch_over_an_existing_chain_replaces_exactly():
    saved = golden("go-v1.1.1-ipv4.save")
    dn = R.ipt_dn_rules(CHAIN, 4, CTRS[4], go_mappings()[:1])
    entries = R.ipt_entry_rules(CHAIN, "cbr0", "abc123", go_mappings()[:1])
    lines = R.ipt_add_lines(saved, CHAIN, dn, entries, R.ipt_shared_rules(), R.shared_chains())
    assert not any(ln.startswith(":") for ln in lines)          # would flush shared chains
    assert [ln for ln in lines if ln.startswith("-D")] == [
        "-D CNI-HOSTPORT-DNAT ! -d 10.9.0.0/16 -p %s -m comment --comment %s -m multiport --dports %s -j %s"
        % (p, COMMENT, ports, CHAIN) for p, ports in (("sctp", "9000"), ("tcp", "8080"), ("udp", "8081"))]
    assert lines[3:] == ["-F " + CHAIN] + dn + entries


def test_teardown_batch_from_a_reference_save():
    saved = golden("go-v1.1.1-ipv4.save")
    lines = R.ipt_teardown_lines(saved, [CHAIN, R.sn_chain("cbr0", "abc123")])
    assert len(lines) == 5 and lines[-2:] == ["-F " + CHAIN, "-X " + CHAIN]
    assert all(ln.startswith("-D CNI-HOSTPORT-DNAT ") for ln in lines[:3])
    assert R.ipt_teardown_lines(saved, ["CNI-DN-0000000000000000000000"]) == []
    assert R.ipt_udp_ports(saved, CHAIN) == {8081}
    assert R.dn_chains_of_network(saved, "cbr0") == {"abc123": CHAIN}
    assert R.dn_chains_of_network(saved, "other") == {}


# ------------------------------------------------------------------ nftables

NFT_SKELETON = """\
add table inet pycni-hostport { comment "pycni portmap: hostPort -> one chain per attachment" ; }
add map inet pycni-hostport hostip4 { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map inet pycni-hostport hostip6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
add map inet pycni-hostport ports4 { type inet_proto . inet_service : verdict ; }
add map inet pycni-hostport ports6 { type inet_proto . inet_service : verdict ; }
add map inet pycni-hostport masq4 { type ipv4_addr : verdict ; }
add map inet pycni-hostport masq6 { type ipv6_addr : verdict ; }
add set inet pycni-hostport localnet { type ifname ; }
add chain inet pycni-hostport hostports
flush chain inet pycni-hostport hostports
add rule inet pycni-hostport hostports ip daddr . meta l4proto . th dport vmap @hostip4
add rule inet pycni-hostport hostports ip6 daddr . meta l4proto . th dport vmap @hostip6
add rule inet pycni-hostport hostports meta nfproto ipv4 meta l4proto . th dport vmap @ports4
add rule inet pycni-hostport hostports meta nfproto ipv6 meta l4proto . th dport vmap @ports6
add chain inet pycni-hostport prerouting { type nat hook prerouting priority -100 ; policy accept ; }
flush chain inet pycni-hostport prerouting
add rule inet pycni-hostport prerouting fib daddr type local jump hostports
add chain inet pycni-hostport output { type nat hook output priority -100 ; policy accept ; }
flush chain inet pycni-hostport output
add rule inet pycni-hostport output fib daddr type local jump hostports
add chain inet pycni-hostport postrouting { type nat hook postrouting priority 100 ; policy accept ; }
flush chain inet pycni-hostport postrouting
add rule inet pycni-hostport postrouting ct status dnat ip daddr vmap @masq4
add rule inet pycni-hostport postrouting ct status dnat ip6 daddr vmap @masq6
add chain inet pycni-hostport masq-all
flush chain inet pycni-hostport masq-all
add rule inet pycni-hostport masq-all masquerade
add chain inet pycni-hostport localnet-guard { type filter hook prerouting priority -300 ; policy accept ; }
flush chain inet pycni-hostport localnet-guard
add rule inet pycni-hostport localnet-guard iifname @localnet ip daddr 127.0.0.0/8 drop
"""

HP = "hp-5806acf520ba-58116a59a3570ffb"
T = "inet pycni-hostport"
NFT_CHAIN = """\
add chain %(t)s %(c)s { comment "pycni 5806acf520ba-58116a59a3570ffb net=cbr0 id=abc123 if=eth0" ; }
flush chain %(t)s %(c)s
add rule %(t)s %(c)s meta nfproto ipv4 ip saddr != 10.9.0.0/16 tcp dport 8080 dnat ip to 10.244.1.2:80
add rule %(t)s %(c)s ip daddr 10.1.2.3 ip saddr != 10.9.0.0/16 udp dport 8081 dnat ip to 10.244.1.2:81
add rule %(t)s %(c)s meta nfproto ipv4 ip saddr != 10.9.0.0/16 sctp dport 9000 dnat ip to 10.244.1.2:90
add rule %(t)s %(c)s meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00::2]:80
add rule %(t)s %(c)s meta nfproto ipv6 sctp dport 9000 dnat ip6 to [fd00::2]:90
add element %(t)s localnet { "cni0" comment "pycni portmap: route_localnet is on here" }
""" % {"t": T, "c": HP}


def test_nft_skeleton_golden():
    assert R.nft_skeleton() == NFT_SKELETON
    assert R.SKELETON_RULES == {"hostports": 4, "prerouting": 1, "output": 1, "postrouting": 2,
                                "masq-all": 1, "localnet-guard": 1}


def test_nft_attachment_chain_golden():
    from cnilib.firewall import naming
    assert naming.attachment_chain("hp", "cbr0", "abc123", "eth0") == HP
    got = R.nft_chain_script(HP, naming.element_comment("cbr0", "abc123", "eth0"), go_mappings(), CTRS,
                             conditions={4: ["ip", "saddr", "!=", "10.9.0.0/16"]}, guard_iface="cni0")
    assert got == NFT_CHAIN
    v6 = R.nft_chain_script(HP, "c", go_mappings(), {6: CTRS[6]}, guard_iface="cni0")
    assert "localnet" not in v6 and "ipv4" not in v6


def test_nft_elements_golden():
    elems, extra = R.nft_elements(HP, go_mappings(), CTRS)
    got = [(e.set, e.key.hex(), e.chain, e.label) for e in elems]
    hairpin4, hairpin6 = R.hairpin_chain(4, *CTRS[4])[0], R.hairpin_chain(6, *CTRS[6])[0]
    assert got == [
        ("ports4", "06000000" "1f900000", HP, "hostPort 8080/tcp (IPv4)"),
        ("hostip4", "0a010203" "11000000" "1f910000", HP, "hostPort 10.1.2.3:8081/udp"),
        ("ports4", "84000000" "23280000", HP, "hostPort 9000/sctp (IPv4)"),
        ("ports6", "06000000" "1f900000", HP, "hostPort 8080/tcp (IPv6)"),
        ("ports6", "84000000" "23280000", HP, "hostPort 9000/sctp (IPv6)"),
        ("masq4", "0af40102", hairpin4, "hostPort masquerade for 10.244.1.2"),
        ("masq6", "fd000000000000000000000000000002", hairpin6, "hostPort masquerade for fd00::2")]
    assert dict(extra)[hairpin4] == (
        'add chain %(t)s %(h)s { comment "masquerade hostPort connections from 10.244.1.0/24" ; }\n'
        "flush chain %(t)s %(h)s\n"
        "add rule %(t)s %(h)s ip saddr 10.244.1.0/24 masquerade\n"
        "add rule %(t)s %(h)s ip saddr 127.0.0.0/8 masquerade\n") % {"t": T, "h": hairpin4}
    assert dict(extra)[hairpin6].endswith("add rule %s %s ip6 saddr fd00::/64 masquerade\n" % (T, hairpin6))


def test_nft_elements_variants():
    same_port = [R.Mapping(8080, 80), R.Mapping(8080, 81)]      # one key, the first rule wins
    elems, _ = R.nft_elements(HP, same_port, {4: CTRS[4]}, snat=False)
    assert [e.set for e in elems] == ["ports4"]
    elems, extra = R.nft_elements(HP, go_mappings()[:1], {6: CTRS[6]}, masq_all=True)
    assert [(e.set, e.chain) for e in elems] == [("ports6", HP), ("masq6", "masq-all")] and extra == []


def test_nft_comment_is_bounded_and_quote_free():
    c = R.nft_comment('x"y\\z' + "a" * 300)
    assert c.startswith('"xyz') and len(c) == 129 and c.count('"') == 2


def test_nft_delete_script():
    assert R.nft_delete_script() == ""
    assert R.nft_delete_script([("inet", "T")], [("ip", "cni_hostport", "hostports", 7)]) == (
        "delete table inet T\ndelete rule ip cni_hostport hostports handle 7\n")


# what nft -j list table prints (nftables 1.0.6) for part of the golden chain
LISTING = [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "pycni-hostport", "handle": 1}},
    {"chain": {"family": "inet", "table": "pycni-hostport", "name": HP, "handle": 1}},
    {"rule": {"family": "inet", "table": "pycni-hostport", "chain": HP, "handle": 2, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
        {"dnat": {"family": "ip", "addr": "10.244.1.2", "port": 80}}]}},
    {"rule": {"family": "inet", "table": "pycni-hostport", "chain": HP, "handle": 3, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": "10.1.2.3"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 8081}},
        {"dnat": {"family": "ip", "addr": "10.244.1.2", "port": 81}}]}},
    {"rule": {"family": "ip", "table": "cni_hostport", "chain": "hostports", "handle": 9, "comment": "abc123",
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                                  "right": 53}},
                       {"dnat": {"addr": "10.244.1.2", "port": 53}}]}},
    {"rule": {"family": "ip", "table": "cni_hostport", "chain": "masquerading", "handle": 10,
              "comment": "other", "expr": []}},
]


def test_nft_listing_is_read_back():
    assert R.nft_chain_mappings(LISTING, HP) == [
        (4, "tcp", 8080, None, "10.244.1.2", 80), (4, "udp", 8081, "10.1.2.3", "10.244.1.2", 81)]
    two = go_mappings()[:2]
    assert R.expected_mappings(two, {4: CTRS[4]}) == R.nft_chain_mappings(LISTING, HP)
    assert R.go_nft_rules_of(LISTING, "abc123") == [("ip", "cni_hostport", "hostports", 9)]
    assert R.go_nft_rules_of(LISTING, "nobody") == []


# ------------------------------------------------------------------ raw netlink


def _nla(atype, payload, nested=False):
    import struct
    pad = (4 - len(payload) % 4) % 4
    return struct.pack("=HH", 4 + len(payload), atype | (0x8000 if nested else 0)) + payload + b"\0" * pad


def test_conntrack_message_is_read():
    import struct

    from cnilib.kernel import conntrack
    proto = _nla(2, _nla(1, b"\x11") + _nla(2, struct.pack("!H", 40000)) + _nla(3, struct.pack("!H", 8081)),
                 nested=True)
    orig = _nla(1, _nla(1, _nla(1, b"\x0a\x4d\x00\x02"), nested=True) + proto, nested=True)
    body = struct.pack("=BBH", 2, 0, 0) + orig + _nla(18, struct.pack("!H", 0))
    p, port, attrs = conntrack._orig_proto_dport(body)
    assert (p, port) == (17, 8081)
    assert set(attrs) == {conntrack.CTA_TUPLE_ORIG, conntrack.CTA_ZONE}


def test_plugins_import_light():
    """The VERSION path of portmap and firewall loads neither pyroute2 nor json/re."""
    import subprocess
    import sys

    from cnitest import ROOT
    prog = ("import sys; sys.path[0:0] = [%r]\nimport plugins.portmap, plugins.firewall\n"
            "print(' '.join(sorted(sys.modules)))" % ROOT)
    mods = set(subprocess.run([sys.executable, "-I", "-S", "-c", prog], capture_output=True, text=True,
                              check=True).stdout.split())
    heavy = {m for m in mods if m.split(".")[0] in ("pyroute2", "json", "re", "subprocess", "ipaddress",
                                                     "socket", "typing", "enum", "pydantic_core")}
    assert heavy == set()


def test_iptables_localnet_guard_is_canonical_and_added_once():
    """Issue 16 item 9: the iptables backend's guard, as iptables-save prints it."""
    line = R.ipt_localnet_guard("cni0")
    assert line == ('-A PREROUTING -d 127.0.0.0/8 -i cni0 -m comment --comment '
                    '"pycni portmap: route_localnet is on here" -j DROP')
    assert R.ipt_guard_lines("*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", "cni0") == [
        "-I PREROUTING 1" + line[len("-A PREROUTING"):]]
    assert R.ipt_guard_lines("*raw\n:PREROUTING ACCEPT [0:0]\n%s\nCOMMIT\n" % line, "cni0") == []
