"""host-local config: the reference's defaults, order of range sets, and every error it gives."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnilib.base import addr, errors
from cnilib.ipam import config


def conf(ipam=None, version="1.0.0", **top):
    c = {"cniVersion": version, "name": "net1", "type": "bridge"}
    if ipam is not None:
        c["ipam"] = dict({"type": "host-local", "dataDir": "/tmp/x"}, **ipam)
    c.update(top)
    return c


def load(c, cni_args=None):
    return config.load(c, cni_args, c.get("cniVersion"))


def sets_str(cfg):
    return [str(rs) for rs in cfg.ranges]


# --------------------------------------------------------------- addresses
@pytest.mark.parametrize("text,want", [
    ("10.1.2.3", (4, 0x0A010203)),
    ("::ffff:10.1.2.3", (4, 0x0A010203)),       # IPv4-mapped reads as IPv4, as in Go
    ("2001:db8::1", (6, 0x20010DB8 << 96 | 1)),
    ("010.1.2.3", None), ("10.1.2", None), ("fe80::1%eth0", None), ("", None),
    ("10.1.2.3/24", None), ("1.2.3.4\x00", None), (None, None), ("１.2.3.4", None),
])
def test_parse(text, want):
    assert addr.parse(text) == want


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_ipv6_printed_like_go(n):
    if n >> 32 == 0xFFFF:          # Go prints IPv4-mapped addresses as IPv4
        assert addr.fmt(6, n) == str(ipaddress.IPv4Address(n & 0xFFFFFFFF))
    else:
        assert addr.fmt(6, n) == str(ipaddress.IPv6Address(n))  # RFC 5952, as Go
    assert addr.parse(addr.fmt(6, n))[1] == (n & 0xFFFFFFFF if n >> 32 == 0xFFFF else n)


@given(st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_ipv4_round_trip(n):
    assert addr.parse(addr.fmt(4, n)) == (4, n)


# --------------------------------------------------------------- defaults
def test_defaults_ipv4():
    cfg = load(conf({"ranges": [[{"subnet": "10.1.2.0/24"}]]}))
    (r,) = cfg.ranges[0].ranges
    assert str(r) == "10.1.2.1-10.1.2.254"       # rangeStart subnet+1, as the reference
    assert r.gateway_str() == "10.1.2.1"
    assert r.cidr() == "10.1.2.0/24"
    assert cfg.ranges[0].capacity() == 253        # .1 is the gateway
    assert cfg.data_dir == "/tmp/x" and cfg.name == "net1"


def test_defaults_ipv6_end_is_last_address():
    cfg = load(conf({"ranges": [[{"subnet": "fd00:1::/64"}]]}))
    assert str(cfg.ranges[0]) == "fd00:1::1-fd00:1::ffff:ffff:ffff:ffff"
    assert cfg.ranges[0].ranges[0].gateway_str() == "fd00:1::1"


def test_default_data_dir():
    c = conf({"ranges": [[{"subnet": "10.1.2.0/24"}]]})
    del c["ipam"]["dataDir"]
    assert load(c).data_dir == "/var/lib/cni/networks"


def test_explicit_bounds_and_gateway():
    cfg = load(conf({"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10",
                                  "rangeEnd": "10.1.2.20", "gateway": "10.1.2.254"}]]}))
    r = cfg.ranges[0].ranges[0]
    assert str(r) == "10.1.2.10-10.1.2.20" and r.gateway_str() == "10.1.2.254"
    assert cfg.ranges[0].capacity() == 11        # gateway outside the range: not subtracted


def test_order_runtime_then_legacy_then_ranges():
    c = conf({"subnet": "10.2.0.0/24", "gateway": "10.2.0.254",
              "ranges": [[{"subnet": "10.3.0.0/24"}], [{"subnet": "fd00::/64"}]]},
             runtimeConfig={"ipRanges": [[{"subnet": "10.1.0.0/24"}]]})
    cfg = load(c)
    assert sets_str(cfg) == ["10.1.0.1-10.1.0.254", "10.2.0.1-10.2.0.254", "10.3.0.1-10.3.0.254",
                             "fd00::1-fd00::ffff:ffff:ffff:ffff"]
    assert cfg.ranges[1].ranges[0].gateway_str() == "10.2.0.254"


def test_keys_match_in_any_case_like_go():
    c = conf({"Ranges": [[{"Subnet": "10.1.2.0/24", "RANGESTART": "10.1.2.100"}]],
              "DataDir": "/tmp/y"}, runtimeConfig={"IPs": ["10.1.2.150"]})
    cfg = load(c)
    assert str(cfg.ranges[0]) == "10.1.2.100-10.1.2.254"
    assert cfg.data_dir == "/tmp/y"
    assert cfg.requested == [(4, addr.parse("10.1.2.150")[1])]


def test_requested_order_and_merge():
    c = conf({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00::/64"}]]},
             args={"cni": {"ips": ["fd00::5/64", "10.1.2.7"]}},
             runtimeConfig={"ips": ["10.1.2.7/24"]})
    cfg = load(c, {"IP": "10.1.2.9"})
    assert [addr.fmt(*ip) for ip in cfg.requested] == ["10.1.2.9", "fd00::5", "10.1.2.7"]


def test_routes_canonical_and_passed_through():
    cfg = load(conf({"ranges": [[{"subnet": "10.1.2.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "0:0::0/0", "gw": "FD00::1"},
                                {"dst": "10.9.0.0/16", "gw": "10.1.2.1", "priority": 5}]}))
    assert cfg.routes == [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"},
                          {"dst": "10.9.0.0/16", "gw": "10.1.2.1", "priority": 5}]


def test_resolv_conf(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("# comment\n; other\nnameserver 10.0.0.53\nnameserver fd00::53\n"
                 "domain example.com\nsearch a.example b.example\noptions ndots:5 edns0\nbogus\n")
    assert config.read_resolv_conf(str(p)) == {
        "nameservers": ["10.0.0.53", "fd00::53"], "domain": "example.com",
        "search": ["a.example", "b.example"], "options": ["ndots:5", "edns0"]}
    with pytest.raises(errors.IOFailure, match="cannot read ipam.resolvConf"):
        config.read_resolv_conf(str(tmp_path / "missing"))


# --------------------------------------------------------------- every reference error
S = "10.1.17.0/24"
ERRORS = [
    # (config, cni_args, message)
    (conf(), None, "IPAM config missing 'ipam' key"),
    (conf({}), None, "no IP ranges specified"),
    (conf({"ranges": []}), None, "no IP ranges specified"),
    (conf({"ranges": [[]]}), None, "invalid range set 0: empty range set"),
    (conf({"ranges": [[{"subnet": S}, {"subnet": "fd00::/64"}]]}), None,
     "invalid range set 0: mixed address families"),
    (conf({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]}), None,
     "invalid range set 0: subnets 10.0.0.1-10.0.0.254 and 10.0.0.1-10.0.0.126 overlap"),
    (conf({"ranges": [[{"subnet": "10.0.0.0/31"}]]}), None,
     "invalid range set 0: Network 10.0.0.0/31 too small to allocate from"),
    (conf({"ranges": [[{"subnet": "10.0.0.1/32"}]]}), None,
     "invalid range set 0: Network 10.0.0.1/32 too small to allocate from"),
    (conf({"ranges": [[{"subnet": "fd00::/127"}]]}), None,
     "invalid range set 0: Network fd00::/127 too small to allocate from"),
    (conf({"ranges": [[{"subnet": "::ffff:10.0.0.0/120"}]]}), None,
     "invalid range set 0: IPNet IP and Mask version mismatch"),
    (conf({"ranges": [[{"subnet": "10.1.17.1/24"}]]}), None,
     "invalid range set 0: Network has host bits set. For a subnet mask of length 24 the "
     "network address is 10.1.17.0"),
    (conf({"ranges": [[{"subnet": S, "rangeStart": "10.1.18.1"}]]}), None,
     "invalid range set 0: RangeStart 10.1.18.1 not in network 10.1.17.0/24"),
    (conf({"ranges": [[{"subnet": S, "rangeStart": "fd00::1"}]]}), None,
     "invalid range set 0: RangeStart fd00::1 not in network 10.1.17.0/24"),
    (conf({"ranges": [[{"subnet": S, "rangeEnd": "10.1.18.1"}]]}), None,
     "invalid range set 0: RangeEnd 10.1.18.1 not in network 10.1.17.0/24"),
    (conf({"ranges": [[{"subnet": S, "rangeStart": "10.1.17.50", "rangeEnd": "10.1.17.10"}]]}),
     None, "invalid range set 0: RangeStart 10.1.17.50 not in network 10.1.17.0/24"),
    (conf({"ranges": [[{"subnet": "junk"}]]}), None, "invalid range set 0: invalid CIDR address: junk"),
    (conf({"ranges": [[{"subnet": "10.0.0.0/33"}]]}), None,
     "invalid range set 0: invalid CIDR address: 10.0.0.0/33"),
    (conf({"ranges": [[{"subnet": S, "gateway": "junk"}]]}), None,
     "invalid range set 0: gateway: invalid IP address: junk"),
    (conf({"ranges": [[{"subnet": S, "gateway": "10.1.18.1"}]]}), None,
     "invalid range set 0: gateway 10.1.18.1 not in network 10.1.17.0/24"),
    (conf({"ranges": [[{"subnet": S, "gateway": "fd00::1"}]]}), None,
     "invalid range set 0: gateway fd00::1 not in network 10.1.17.0/24"),
    (conf({"ranges": [[{"subnet": S}], [{"subnet": "10.1.0.0/16"}]]}), None,
     "range set 0 overlaps with 1"),
    (conf({"subnet": "10.1.0.0/16", "ranges": [[{"subnet": S}]]}), None,
     "range set 0 overlaps with 1"),
    (conf({"ranges": [[{"subnet": S}], [{"subnet": "10.2.0.0/16"}]]}, version="0.2.0"), None,
     "CNI version 0.2.0 does not support more than 1 address per family"),
    (conf({"ranges": [[{"subnet": S}]]}, runtimeConfig={"ips": ["junk"]}), None,
     "cannot understand ip: invalid IP address junk in runtimeConfig.ips[0]"),
    (conf({"ranges": [[{"subnet": S}]]}, args={"cni": {"ips": ["10.1.17.5/99"]}}), None,
     "cannot understand ip: invalid IP address 10.1.17.5/99 in args.cni.ips[0]"),
    (conf({"ranges": [[{"subnet": S}]]}), {"IP": "junk"},
     "cannot understand ip: invalid IP address junk in CNI_ARGS IP"),
    (conf({"ranges": [[{"subnet": S}]], "dataDir": "var/lib/cni"}), None,
     "ipam.dataDir 'var/lib/cni' is not an absolute path"),
    (conf({"ranges": [[{"subnet": S}]], "routes": [{"dst": "nope"}]}), None,
     "ipam.routes[0].dst: invalid CIDR address: nope"),
    (conf({"ranges": [[{"subnet": S}]], "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}), None,
     "ipam.routes[0].gw: invalid IP address: x"),
    (conf({"ranges": [[{}]]}), None, "key ipam.ranges[0][0].subnet is required"),
    (conf({"ranges": [[{"subnet": 10}]]}), None, "key ipam.ranges[0][0].subnet"),
    (conf({"ranges": "10.0.0.0/24"}), None, "key ipam.ranges"),
]


@pytest.mark.parametrize("c,cni_args,msg", ERRORS, ids=[e[2][:60] for e in ERRORS])
def test_reference_errors(c, cni_args, msg):
    with pytest.raises(errors.InvalidConfig) as ei:
        load(c, cni_args)
    assert ei.value.code == 7
    assert msg in ei.value.msg
    assert "\n" not in ei.value.msg


def test_error_details_say_how_to_fix():
    with pytest.raises(errors.InvalidConfig) as ei:
        load(conf({"ranges": [[{"subnet": "10.1.17.1/24"}]]}))
    assert "write the subnet as 10.1.17.0/24" in ei.value.details


def test_one_set_per_family_is_fine_on_old_versions():
    cfg = load(conf({"ranges": [[{"subnet": S}], [{"subnet": "fd00::/64"}]]}, version="0.2.0"))
    assert len(cfg.ranges) == 2


def test_locate_needs_no_valid_ranges():
    c = conf({"ranges": [[{"subnet": "10.1.17.1/24"}]], "dataDir": "/tmp/z"})
    assert config.locate(c) == ("/tmp/z", "net1")
    c = conf({})
    del c["ipam"]["dataDir"]
    assert config.locate(c) == ("/var/lib/cni/networks", "net1")
    with pytest.raises(errors.InvalidConfig):
        config.locate(conf())
    with pytest.raises(errors.InvalidConfig):
        config.locate(conf({"dataDir": "relative"}))
