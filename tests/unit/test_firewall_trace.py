"""cnilib.ops.doctor.trace: a packet walked through iptables-save text and nft JSON."""

from cnilib.ops import rulesets
from cnilib.ops.doctor import trace as fwtrace

POD_IN = fwtrace.Packet("10.244.2.2", "10.244.1.2", iif="flannel.1", oif="cni0")
VXLAN_IN = fwtrace.Packet("192.0.2.2", "192.0.2.1", "udp", 40000, 8472, iif="eth0")


def save(*chains, policy="ACCEPT", table="filter", extra=""):
    lines = ["*%s" % table, ":INPUT %s [0:0]" % policy, ":FORWARD %s [0:0]" % policy,
             ":OUTPUT ACCEPT [0:0]"]
    lines += [":%s - [0:0]" % c for c in chains]
    return "\n".join(lines) + "\n" + extra + "COMMIT\n"


def fwd(text, pkt=POD_IN):
    return fwtrace.ipt_decide(rulesets.parse_save(text), "forward", pkt)


def test_policy_drop_without_accept_drops():
    d = fwd(save(policy="DROP"))
    assert (d.verdict, d.by, d.certain) == ("drop", "policy DROP of filter FORWARD", True)


def test_flannel_fwd_accepts_under_policy_drop():
    text = save("FLANNEL-FWD", policy="DROP", extra=(
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT\n'
        '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT\n'))
    d = fwd(text)
    assert d.verdict == "accept" and d.certain
    assert d.by.startswith("-A FLANNEL-FWD -s 10.244.0.0/16")
    # a packet outside the pod network falls through to the policy
    assert fwd(text, fwtrace.Packet("192.168.0.1", "192.168.0.2")).verdict == "drop"


def test_reject_before_accept_wins_and_return_goes_back():
    text = save("X", extra=("-A FORWARD -j X\n"
                            "-A X -d 10.244.9.0/24 -j RETURN\n"
                            "-A X -i flannel.1 -j REJECT --reject-with icmp-host-prohibited\n"
                            "-A FORWARD -s 10.244.0.0/16 -j ACCEPT\n"))
    d = fwd(text)
    assert d.verdict == "reject" and "REJECT" in d.by
    d = fwd(text, fwtrace.Packet("10.244.2.2", "10.244.9.2", iif="flannel.1", oif="cni0"))
    assert d.verdict == "accept"


def test_negation_interfaces_ports_and_state():
    text = save(policy="DROP", extra=(
        "-A FORWARD ! -i eth+ -p tcp -m tcp --dport 80 -j ACCEPT\n"))
    assert fwd(text).verdict == "accept"
    assert fwd(text, fwtrace.Packet("10.0.0.1", "10.0.0.2", iif="eth0")).verdict == "drop"
    assert fwd(text, fwtrace.Packet("10.0.0.1", "10.0.0.2", "udp", dport=80, iif="x")).verdict == "drop"
    ct = save(policy="DROP", extra="-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
    assert fwd(ct).verdict == "drop"           # a new connection is neither
    mp = save(policy="DROP", extra="-A FORWARD -p tcp -m multiport --dports 22,70:90 -j ACCEPT\n")
    assert fwd(mp).verdict == "accept"


def test_unknown_match_makes_a_drop_uncertain_not_an_accept():
    text = save(extra="-A FORWARD -m physdev --physdev-is-bridged -j DROP\n")
    d = fwd(text)
    assert d.verdict == "accept" and not d.certain and "physdev" in d.doubts[0]
    text = save(policy="DROP", extra="-A FORWARD -m set --match-set pods src -j ACCEPT\n")
    d = fwd(text)
    assert d.verdict == "drop" and not d.certain


def test_input_hook_walks_raw_mangle_and_filter():
    text = save(extra="-A INPUT -p udp -m udp --dport 8472 -j REJECT --reject-with icmp-port-unreachable\n")
    d = fwtrace.ipt_decide(rulesets.parse_save(text), "input", VXLAN_IN)
    assert d.verdict == "reject" and d.where == "iptables -t filter INPUT"
    raw = "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -s 192.0.2.2/32 -p udp -j DROP\nCOMMIT\n"
    d = fwtrace.ipt_decide(rulesets.parse_save(raw + text), "prerouting", VXLAN_IN)
    assert d.verdict == "drop"
    assert fwtrace.ipt_decide(rulesets.parse_save(""), "input", VXLAN_IN) is None


def _rule(chain, *expr, table="fw", family="inet"):
    return {"rule": {"family": family, "table": table, "chain": chain, "expr": list(expr)}}


def _base(name, hook, prio=0, policy="accept", table="fw", family="inet"):
    return {"chain": {"family": family, "table": table, "name": name, "type": "filter",
                      "hook": hook, "prio": prio, "policy": policy}}


def _m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


UDP_DPORT = {"payload": {"protocol": "udp", "field": "dport"}}


def test_nft_drop_of_vxlan_in_input():
    items = [{"table": {"family": "inet", "name": "fw"}}, _base("input", "input"),
             _rule("input", _m(UDP_DPORT, 8472), {"counter": {"packets": 0, "bytes": 0}}, {"drop": None})]
    chains, _ = rulesets.parse_ruleset(items)
    d = fwtrace.nft_decide(chains, "input", VXLAN_IN)
    assert d.verdict == "drop" and d.certain
    assert d.by == "nft inet fw chain input: udp dport == 8472 drop"
    tcp = fwtrace.Packet("192.0.2.2", "192.0.2.1", "tcp", 40000, 8472)
    assert fwtrace.nft_decide(chains, "input", tcp).verdict == "accept"


def test_nft_every_base_chain_must_accept_and_jumps_are_followed():
    items = [{"table": {"family": "inet", "name": "a"}}, {"table": {"family": "ip", "name": "b"}},
             _base("fwd", "forward", prio=0, table="a"),
             _rule("fwd", _m({"payload": {"protocol": "ip", "field": "saddr"}},
                             {"prefix": {"addr": "10.244.0.0", "len": 16}}), {"accept": None}, table="a"),
             _base("fwd", "forward", prio=10, policy="drop", table="b", family="ip"),
             {"chain": {"family": "ip", "table": "b", "name": "pods"}},
             _rule("fwd", _m({"meta": {"key": "iifname"}}, "flannel*"), {"jump": {"target": "pods"}},
                   table="b", family="ip"),
             _rule("pods", _m({"ct": {"key": "state"}}, ["established", "related"], op="in"),
                   {"accept": None}, table="b", family="ip")]
    chains, _ = rulesets.parse_ruleset(items)
    d = fwtrace.nft_decide(chains, "forward", POD_IN)
    assert d.verdict == "drop" and d.by == "policy drop of nft ip b chain fwd"
    items.append(_rule("pods", _m({"payload": {"protocol": "ip", "field": "daddr"}},
                                  {"set": [{"prefix": {"addr": "10.244.1.0", "len": 24}}]}),
                       {"accept": None}, table="b", family="ip"))
    chains, _ = rulesets.parse_ruleset(items)
    assert fwtrace.nft_decide(chains, "forward", POD_IN).verdict == "accept"


def test_nft_skips_iptables_nft_tables_and_xt_is_uncertain():
    items = [{"table": {"family": "ip", "name": "filter"}}, _base("FORWARD", "forward", policy="drop",
                                                                  table="filter", family="ip")]
    chains, _ = rulesets.parse_ruleset(items)
    assert fwtrace.nft_decide(chains, "forward", POD_IN) is None
    assert fwtrace.nft_decide(chains, "forward", POD_IN, skip_iptables_tables=False).verdict == "drop"
    items = [{"table": {"family": "inet", "name": "x"}}, _base("f", "forward", table="x"),
             _rule("f", {"xt": {"type": "match", "name": "physdev"}}, {"drop": None}, table="x")]
    chains, _ = rulesets.parse_ruleset(items)
    d = fwtrace.nft_decide(chains, "forward", POD_IN)
    assert d.verdict == "accept" and not d.certain


def test_decide_combines_both_sources():
    ipt = rulesets.parse_save(save(policy="DROP"))
    assert fwtrace.decide(ipt, {}, "forward", POD_IN).verdict == "drop"
    assert fwtrace.decide({}, {}, "forward", POD_IN) is None
    ok = rulesets.parse_save(save())
    assert fwtrace.decide(ok, {}, "forward", POD_IN).passes
