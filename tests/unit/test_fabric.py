"""cnilib.ops.fabric without root: node descriptions, VTEP MACs, subnet.env, rules."""

import pytest

from cnilib.ops import fabric
from cnilib.ops.fabric import FabricError, Plan, parse_nodes

NODES = [{"name": "node1", "publicIP": "192.0.2.1", "subnet": "10.244.1.0/24"},
         {"name": "node2", "publicIP": "192.0.2.2", "subnet": "10.244.2.0/24"}]
DUAL = [dict(NODES[0], publicIPv6="2001:db8::1", subnetV6="fd00:10:244:1::/64"),
        dict(NODES[1], publicIPv6="2001:db8::2", subnetV6="fd00:10:244:2::/64")]


@pytest.mark.parametrize("ip,mac", [("192.0.2.1", "0e:fe:c0:00:02:01"),
                                    ("10.133.2.252", "0e:fe:0a:85:02:fc"),
                                    ("2001:db8::1", "0e:f6:00:00:00:01"),
                                    ("2001:db8::a:b0c:d0e", "0e:f6:0b:0c:0d:0e")])
def test_vtep_mac(ip, mac):
    assert fabric.vtep_mac(ip) == mac
    first = int(mac[:2], 16)
    assert first & 1 == 0 and first & 2 == 2     # unicast, locally administered


def test_vtep_mac_is_distinct_per_ip():
    macs = {fabric.vtep_mac("10.0.%d.%d" % (a, b)) for a in range(8) for b in range(256)}
    assert len(macs) == 8 * 256


def test_parse_nodes_and_plan():
    nodes = parse_nodes(NODES)
    plan = Plan(nodes, "node1", "10.244.0.0/16")
    assert plan.me.name == "node1" and [p.name for p in plan.peers] == ["node2"]
    assert not plan.dual
    assert parse_nodes({"nodes": NODES})[1].subnet == nodes[1].subnet


def test_subnet_env_text_is_flanneld_s():
    plan = Plan(parse_nodes(NODES), "node2", "10.244.0.0/16", ipmasq=True)
    assert fabric.subnet_env_text(plan, 1450) == (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.2.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    plan = Plan(parse_nodes(DUAL), "node1", "10.244.0.0/16", "fd00:10:244::/56", ipmasq=False)
    assert fabric.subnet_env_text(plan, 1500) == (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
        "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")


def test_subnet_env_text_parses_back():
    from cnilib import flannel
    plan = Plan(parse_nodes(DUAL), "node1", "10.244.0.0/16", "fd00:10:244::/56")
    env = flannel.parse_subnet_env(fabric.subnet_env_text(plan, 1450))
    assert env.subnets() == ["10.244.1.0/24", "fd00:10:244:1::/64"] and env.ipmasq is True


@pytest.mark.parametrize("data,text", [
    ([], "non-empty JSON list"),
    ({"x": 1}, "non-empty JSON list"),
    (["n"], "node 0 is not an object"),
    ([{"publicIP": "192.0.2.1", "subnet": "10.244.1.0/24"}], "has no \"name\""),
    ([{"name": "a", "subnet": "10.244.1.0/24"}], "has no 'publicIP'"),
    ([{"name": "a", "publicIP": "192.0.2.1"}], "has no 'subnet'"),
    ([{"name": "a", "publicIP": "2001:db8::1", "subnet": "10.244.1.0/24"}], "is not an IPv4 address"),
    ([{"name": "a", "publicIP": "192.0.2.300", "subnet": "10.244.1.0/24"}], "is not an IP address"),
    ([{"name": "a", "publicIP": "192.0.2.1", "subnet": "10.244.1.0"}], "is not a CIDR"),
    ([{"name": "a", "publicIP": "192.0.2.1", "subnet": "fd00::/64"}], "is not an IPv4 network"),
    ([{"name": "a", "publicIP": "192.0.2.1", "subnet": "10.244.1.0/24", "subnetV6": "fd00::/64"}],
     "has a subnetV6 but no publicIPv6"),
    ([NODES[0], dict(NODES[1], name="node1")], "have the same name node1"),
    ([NODES[0], dict(NODES[1], publicIP="192.0.2.1")], "have the same publicIP 192.0.2.1"),
    ([NODES[0], dict(NODES[1], subnet="10.244.1.128/25")], "overlap"),
    ([DUAL[0], dict(DUAL[1], publicIPv6="2001:db9::1")], "have the same IPv6 VTEP MAC"),
])
def test_parse_nodes_refuses(data, text):
    with pytest.raises(FabricError) as ei:
        parse_nodes(data, "nodes.json")
    assert text in str(ei.value)


@pytest.mark.parametrize("kw,text", [
    (dict(me="node9"), "node 'node9' is not in the nodes file (it has node1, node2)"),
    (dict(network="10.245.0.0/16"), "subnet 10.244.1.0/24 is outside the network 10.245.0.0/16"),
    (dict(backend="udp"), "backend 'udp' is not supported"),
    (dict(network="10.244.0.0"), "--network: '10.244.0.0' is not a CIDR"),
    (dict(network6="fd00:10:244::/56"), "has no subnetV6 but --network-v6"),
])
def test_plan_refuses(kw, text):
    args = dict(nodes=parse_nodes(NODES), me="node1", network="10.244.0.0/16")
    args.update(kw)
    with pytest.raises(FabricError) as ei:
        Plan(**args)
    assert text in str(ei.value)


def test_plan_needs_network_v6_for_v6_subnets():
    with pytest.raises(FabricError) as ei:
        Plan(parse_nodes(DUAL), "node1", "10.244.0.0/16")
    assert "no --network-v6" in str(ei.value)


def test_masq_rules_are_flanneld_s():
    assert fabric.masq_rules("10.244.0.0/16", "10.244.1.0/24") == [
        '-m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
        '-s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
        '-s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
        '-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
        '! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" '
        '-j MASQUERADE --random-fully']
    assert "! -d ff00::/8" in fabric.masq_rules("fd00::/56", "fd00:0:0:1::/64", 6)[4]
    assert fabric.forward_rules("10.244.0.0/16") == [
        '-s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        '-d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT']


SAVED_EMPTY = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
JUMP = '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'


def test_chain_batch_creates_then_is_a_no_op():
    rules = fabric.masq_rules("10.244.0.0/16", "10.244.1.0/24")
    lines = fabric.chain_batch(SAVED_EMPTY, "POSTROUTING", "FLANNEL-POSTRTG", "flanneld masq", rules)
    assert lines[0] == ":FLANNEL-POSTRTG - [0:0]" and lines[1] == JUMP
    assert lines[2:] == ["-A FLANNEL-POSTRTG " + r for r in rules]
    # what iptables-save shows after that batch: nothing more to do
    saved = SAVED_EMPTY.replace("COMMIT", ":FLANNEL-POSTRTG - [0:0]\n" + "\n".join(lines[1:]) + "\nCOMMIT")
    assert fabric.chain_batch(saved, "POSTROUTING", "FLANNEL-POSTRTG", "flanneld masq", rules) == []


def test_chain_batch_rewrites_and_dedups_jumps():
    old = ("*nat\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n%s\n%s\n"
           "-A FLANNEL-POSTRTG -s 10.9.0.0/16 -j RETURN\nCOMMIT\n" % (JUMP, JUMP))
    rules = ["-j RETURN"]
    lines = fabric.chain_batch(old, "POSTROUTING", "FLANNEL-POSTRTG", "flanneld masq", rules)
    assert lines == ["-F FLANNEL-POSTRTG", "-D" + JUMP[2:], "-D" + JUMP[2:], JUMP,
                     "-A FLANNEL-POSTRTG -j RETURN"]
    assert fabric.chain_batch(old, "POSTROUTING", "FLANNEL-POSTRTG", "flanneld masq", None) == [
        "-D" + JUMP[2:], "-D" + JUMP[2:], "-F FLANNEL-POSTRTG", "-X FLANNEL-POSTRTG"]
    assert fabric.chain_batch(SAVED_EMPTY, "POSTROUTING", "FLANNEL-POSTRTG", "flanneld masq", None) == []


def test_cli_usage_errors(capsys):
    assert fabric.main(["up"]) == 1
    assert "up needs --nodes FILE and --node NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        fabric.main(["sideways"])
    assert ei.value.code == 2
