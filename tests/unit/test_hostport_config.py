"""portmap input checks: what is accepted, what is refused, and with which error."""

import pytest
from cnitest import pydantic_why

# the real pydantic first: cnilib.cni.validate would otherwise install its light
# pydantic_core stub in sys.modules, which breaks later imports of pydantic
pytest.importorskip("pydantic", reason=pydantic_why())

from cnilib.base import addr, errors
from cnilib.cni.types import Result  # noqa: E402
from cnilib.firewall import portmap  # noqa: E402


class Args:
    def __init__(self, conf, cid="c1", ifname="eth0", version="1.0.0"):
        self.conf, self.container_id, self.ifname, self.version = conf, cid, ifname, version
        self.netns = ""


PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.1.0.9/24", "interface": 0},
                {"address": "10.88.0.5/24", "interface": 2},
                {"address": "10.88.0.6/24", "interface": 2},
                {"address": "fd00::5/64"}]}


def conf(mappings=None, **kw):
    c = {"cniVersion": "1.0.0", "name": "net1", "type": "portmap", "prevResult": PREV}
    if mappings is not None:
        c["runtimeConfig"] = {"portMappings": mappings}
    c.update(kw)
    return c


def parse(c, need_prev=True):
    return portmap.parse(Args(c), need_prev)


def test_keys_in_any_case_and_defaults():
    cfg = parse(conf([{"HostPort": 8080, "ContainerPort": 80, "Protocol": "UDP", "HostIP": "::ffff:10.0.0.1"},
                      {"hostport": 9000, "containerport": 90}]))
    a, b = cfg.mappings
    assert (a.host_port, a.container_port, a.protocol, a.host_ip,
            a.host_family) == (8080, 80, "udp", "10.0.0.1", 4)
    assert (b.protocol, b.host_ip) == ("tcp", None)
    assert cfg.snat and cfg.mark_bit == 13 and cfg.backend is None
    assert cfg.ctrs == {4: ("10.88.0.5", 24), 6: ("fd00::5", 64)}
    assert cfg.udp_ports() == {8080}


@pytest.mark.parametrize("entry,needle", [
    ({"hostPort": 0, "containerPort": 80}, "hostPort"),
    ({"hostPort": 70000, "containerPort": 80}, "hostPort"),
    ({"hostPort": 80, "containerPort": -1}, "containerPort"),
    ({"hostPort": "80", "containerPort": 80}, "hostPort"),
    ({"hostPort": True, "containerPort": 80}, "hostPort"),
    ({"containerPort": 80}, "hostPort"),
    ({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}, "protocol"),
    ({"hostPort": 80, "containerPort": 80, "protocol": "tcp dport 1 accept"}, "protocol"),
    ({"hostPort": 80, "containerPort": 80, "hostIP": "1.2.3.4; drop"}, "hostIP"),
    ({"hostPort": 80, "containerPort": 80, "hostIP": "10.0.0.0/8"}, "hostIP"),
    ({"hostPort": 80, "containerPort": 80, "hostIP": "fe80::1%eth0"}, "hostIP"),
    ({"hostPort": 80, "containerPort": 80, "hostIP": "localhost"}, "hostIP"),
    ("8080:80", "portMappings"),
])
def test_bad_mappings_are_refused(entry, needle):
    with pytest.raises(errors.InvalidConfig) as e:
        parse(conf([entry]))
    assert needle in e.value.msg


def test_mappings_not_a_list():
    with pytest.raises(errors.InvalidConfig, match="expected a list"):
        parse(conf({"hostPort": 1}))


def test_no_prev_result():
    with pytest.raises(errors.InvalidConfig, match="chained plugin"):
        parse(dict(conf([]), prevResult=None))
    assert parse(dict(conf([]), prevResult=None), need_prev=False).ctrs == {}


@pytest.mark.parametrize("extra,msg", [
    ({"markMasqBit": 32}, "markMasqBit"),
    ({"markMasqBit": 3, "externalSetMarkChain": "KUBE-MARK-MASQ"}, "Cannot specify"),
    ({"externalSetMarkChain": "X; -j ACCEPT"}, "externalSetMarkChain"),
    ({"backend": "ebpf"}, "backend"),
    ({"backend": "nftables", "externalSetMarkChain": "KUBE-MARK-MASQ"}, "iptables-specific"),
    ({"backend": "nftables", "conditionsV4": ["-s", "10.0.0.0/8"]}, "iptables-specific"),
    ({"backend": "iptables", "conditionsV6": ["ip6", "saddr", "fd00::/8"]}, "nftables-specific"),
    ({"conditionsV4": ["-s", "10.0.0.0/8"], "conditionsV6": ["ip6", "saddr", "fd00::/8"]}, "mixes"),
    ({"conditionsV4": ["ip", "saddr", "1.2.3.4", ";", "flush", "ruleset"]}, "conditionsV4"),
    ({"conditionsV4": ["ip saddr 1.2.3.4\nflush ruleset"]}, "control"),
    ({"conditionsV4": ["-m", 'comment "x']}, "quote"),
    ({"conditionsV4": ["ip", "saddr", "{", "1.2.3.4"]}, "unbalanced"),
])
def test_bad_options_are_refused(extra, msg):
    with pytest.raises(errors.InvalidConfig) as e:
        parse(conf([{"hostPort": 80, "containerPort": 80}], **extra))
    assert msg in e.value.msg + e.value.details


def test_options_pick_the_backend():
    assert parse(conf([], externalSetMarkChain="KUBE-MARK-MASQ")).backend == "iptables"
    assert parse(conf([], conditionsV4=["!", "-d", "10.0.0.0/8"])).backend == "iptables"
    assert parse(conf([], conditionsV6=["ip6", "daddr", "!=", "fd00::/8"])).backend == "nftables"
    assert parse(conf([], backend="iptables", snat=False)).snat is False


def test_container_addresses_like_the_reference():
    r = Result.parse(PREV, "1.0.0")
    assert portmap.container_addrs(r, "eth0") == {4: ("10.88.0.5", 24), 6: ("fd00::5", 64)}
    assert portmap.container_addrs(r, "net1") == {6: ("fd00::5", 64)}


def test_valid_attachments():
    from cnilib.cni.args import valid_attachments
    assert valid_attachments({}) is None
    assert valid_attachments({"cni.dev/valid-attachments": None}) == set()
    assert valid_attachments({"cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]}) == {
        ("a", "eth0")}
    for bad in ([{"containerID": 1}], [{"containerID": "a", "ifname": ""}], {"a": 1}):
        with pytest.raises(errors.InvalidConfig):
            valid_attachments({"cni.dev/valid-attachments": bad})


def test_address_helpers():
    assert addr.rule_ip("010.1.1.1") is None
    assert addr.rule_ip("FD00::0:1") == (6, "fd00::1")
    assert addr.rule_cidr("::ffff:10.1.2.3/120") == (4, "10.1.2.3", 24)
    assert addr.rule_cidr("10.1.2.3/33") is None
    assert addr.rule_network(4, "10.1.2.3", 20) == "10.1.0.0"
    assert addr.rule_network(6, "fd00:1:2:3::9", 48) == "fd00:1:2::"
