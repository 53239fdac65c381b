"""cnilib.kernel.netlink packs a pod's requests and parses the replies by hand;
pyroute2 (the suite's netlink library, loaded here as the reference) must
read every request back as meant, and the hand parsers must agree with
pyroute2's decode of messages pyroute2 packed.  No root needed."""

import struct

import pytest

from cnilib.kernel import netlink
from cnilib.kernel.brport import fdb_replace
from cnilib.kernel.link import link_del, link_get, link_set, link_set_allmulti, link_set_txqlen
from cnilib.kernel.route import (
    Addr,
    Neigh,
    Route,
    addr_add,
    addr_del,
    neigh_del,
    neigh_replace,
    route_add,
    route_del,
    route_get,
)


class Capture:
    """A Netlink stand-in that records each request as pyroute2 decodes it."""

    def __init__(self):
        self.sent = []

    def request(self, msg, msg_type, flags=0, what="", raw=True):
        assert isinstance(msg, bytes), "pod-path requests are packed by hand"
        name = {netlink.RTM_NEWLINK: "ifinfmsg", netlink.RTM_DELLINK: "ifinfmsg",
                netlink.RTM_GETLINK: "ifinfmsg", netlink.RTM_SETLINK: "ifinfmsg",
                netlink.RTM_NEWADDR: "ifaddrmsg", netlink.RTM_DELADDR: "ifaddrmsg",
                netlink.RTM_GETADDR: "ifaddrmsg",
                netlink.RTM_NEWROUTE: "rtmsg", netlink.RTM_DELROUTE: "rtmsg",
                netlink.RTM_GETROUTE: "rtmsg",
                netlink.RTM_NEWNEIGH: "ndmsg", netlink.RTM_DELNEIGH: "ndmsg",
                netlink.RTM_GETNEIGH: "ndmsg"}[msg_type]
        m = netlink.msgclass(name)(struct.pack("=IHHII", 16 + len(msg), msg_type, flags, 1, 0) + msg)
        m.decode()
        assert m["header"]["length"] == 16 + len(msg)
        self.sent.append((msg_type, flags, m))
        return []


def one(fn, *a, **kw):
    nl = Capture()
    fn(nl, *a, **kw)
    (t, flags, m), = nl.sent
    return t, flags, m


def test_link_set_touches_only_what_is_given():
    _, _, m = one(link_set, 5, up=True, mtu=1450, master=3, mac="0a:58:0a:f4:01:02",
                  name="eth1", alias="pycni net=n é", netns_fd=7)
    assert (m["index"], m["flags"], m["change"]) == (5, netlink.IFF_UP, netlink.IFF_UP)
    assert m.get_attr("IFLA_MTU") == 1450 and m.get_attr("IFLA_MASTER") == 3
    assert m.get_attr("IFLA_ADDRESS") == "0a:58:0a:f4:01:02"
    assert m.get_attr("IFLA_IFNAME") == "eth1" and m.get_attr("IFLA_IFALIAS") == "pycni net=n é"
    assert m.get_attr("IFLA_NET_NS_FD") == 7
    _, _, m = one(link_set, 5, up=False, promisc=True)
    assert m["change"] == netlink.IFF_UP | netlink.IFF_PROMISC and m["flags"] == netlink.IFF_PROMISC
    assert m["attrs"] == []


def test_link_get_and_del_by_name():
    t, _, m = one(link_get, "cni0")
    assert t == netlink.RTM_GETLINK and m.get_attr("IFLA_IFNAME") == "cni0"
    assert m.get_attr("IFLA_EXT_MASK") == netlink.RTEXT_FILTER_SKIP_STATS
    t, _, m = one(link_del, 0, "veth1234")
    assert t == netlink.RTM_DELLINK and m.get_attr("IFLA_IFNAME") == "veth1234"


def test_tuning_requests():
    _, _, m = one(link_set_txqlen, 4, 2000)
    assert m["index"] == 4 and m.get_attr("IFLA_TXQLEN") == 2000
    _, _, m = one(link_set_allmulti, 4, True)
    assert m["flags"] == m["change"] == netlink.IFF_ALLMULTI


@pytest.mark.parametrize("addr,plen,brd,nodad", [("10.244.1.1", 24, "10.244.1.255", False),
                                                   ("fd00:10:244:1::1", 64, None, True)])
def test_address_add_and_del(addr, plen, brd, nodad):
    t, flags, m = one(addr_add, 9, addr, plen, brd, nodad=nodad)
    assert t == netlink.RTM_NEWADDR and flags == netlink.NLM_F_CREATE | netlink.NLM_F_EXCL
    fam = netlink.AF_INET6 if ":" in addr else netlink.AF_INET
    assert (m["family"], m["prefixlen"], m["index"]) == (fam, plen, 9)
    assert m["flags"] == (netlink.IFA_F_NODAD if nodad else 0)
    assert m.get_attr("IFA_LOCAL") == addr and m.get_attr("IFA_ADDRESS") == addr
    assert m.get_attr("IFA_BROADCAST") == brd
    t, _, m = one(addr_del, 9, addr, plen)
    assert t == netlink.RTM_DELADDR and m.get_attr("IFA_LOCAL") == addr


@pytest.mark.parametrize("kw", [
    dict(dst="0.0.0.0/0", gateway="10.244.1.1", oif=0),
    dict(dst="10.244.0.0/16", gateway="10.244.1.1", oif=3, priority=100, onlink=True),
    dict(dst="10.244.2.0/24", oif=4, scope=netlink.RT_SCOPE_LINK, prefsrc="10.244.1.0"),
    dict(dst="fd00:10:244::/56", gateway="fd00:10:244:1::1", table=1000),
])
def test_route_add(kw):
    t, flags, m = one(route_add, replace=True, **kw)
    assert t == netlink.RTM_NEWROUTE and flags == netlink.NLM_F_CREATE | netlink.NLM_F_REPLACE
    addr, plen = kw["dst"].split("/")
    assert m["dst_len"] == int(plen)
    assert m.get_attr("RTA_DST") == (addr if int(plen) else None)
    assert m.get_attr("RTA_GATEWAY") == kw.get("gateway")
    assert (m.get_attr("RTA_OIF") or 0) == kw.get("oif", 0)
    assert (m.get_attr("RTA_PRIORITY") or 0) == kw.get("priority", 0)
    assert m.get_attr("RTA_PREFSRC") == kw.get("prefsrc")
    assert m.get_attr("RTA_TABLE") == kw.get("table", netlink.RT_TABLE_MAIN)
    assert m["table"] == (252 if kw.get("table", 254) > 255 else 254)
    assert m["flags"] == (netlink.RTNH_F_ONLINK if kw.get("onlink") else 0)
    assert m["proto"] == netlink.RTPROT_BOOT and m["type"] == netlink.RTN_UNICAST
    want_scope = kw.get("scope", netlink.RT_SCOPE_UNIVERSE if kw.get("gateway") else netlink.RT_SCOPE_LINK)
    assert m["scope"] == want_scope


def test_route_get_and_del():
    t, _, m = one(route_get, "fd00::5")
    assert t == netlink.RTM_GETROUTE and m["dst_len"] == 128 and m.get_attr("RTA_DST") == "fd00::5"
    t, _, m = one(route_del, "10.244.2.0/24", gateway="10.0.0.2")
    assert t == netlink.RTM_DELROUTE and m.get_attr("RTA_GATEWAY") == "10.0.0.2"


def test_neighbour_and_fdb_requests():
    _, flags, m = one(neigh_replace, 6, "10.244.2.0", "aa:bb:cc:dd:ee:01")
    assert flags == netlink.NLM_F_CREATE | netlink.NLM_F_REPLACE
    assert (m["family"], m["ifindex"], m["state"]) == (netlink.AF_INET, 6, netlink.NUD_PERMANENT)
    assert m.get_attr("NDA_DST") == "10.244.2.0" and m.get_attr("NDA_LLADDR") == "aa:bb:cc:dd:ee:01"
    _, _, m = one(fdb_replace, 6, "aa:bb:cc:dd:ee:01", "192.168.5.2")
    assert m["family"] == netlink.AF_BRIDGE and m["flags"] == netlink.NTF_SELF
    assert m.get_attr("NDA_DST") == "192.168.5.2" and m.get_attr("NDA_LLADDR") == "aa:bb:cc:dd:ee:01"
    t, _, m = one(neigh_del, 6, "fd00::2")
    assert t == netlink.RTM_DELNEIGH and m["family"] == netlink.AF_INET6
    assert m.get_attr("NDA_DST") == "fd00::2"


# ---- parsing: pyroute2 packs, the hand parsers read

def _packed(name, msg_type, fields, attrs):
    m = netlink.msgclass(name)()
    for k, v in fields.items():
        m[k] = v
    m["attrs"] = attrs
    m["header"]["type"] = msg_type
    m.encode()
    return bytes(m.data)


def test_addr_parse():
    raw = _packed("ifaddrmsg", netlink.RTM_NEWADDR,
                  {"family": netlink.AF_INET6, "prefixlen": 64, "flags": 0x80, "scope": 0, "index": 12},
                  [("IFA_ADDRESS", "fd00::1"), ("IFA_FLAGS", 0x280), ("IFA_LABEL", "cni0")])
    a = Addr(raw)
    assert (a.family, a.prefixlen, a.index, a.flags, a.address, a.label) == \
        (netlink.AF_INET6, 64, 12, 0x280, "fd00::1", "cni0")
    raw = _packed("ifaddrmsg", netlink.RTM_NEWADDR,
                  {"family": netlink.AF_INET, "prefixlen": 24, "index": 3},
                  [("IFA_ADDRESS", "10.0.0.9"), ("IFA_LOCAL", "10.0.0.1")])
    assert Addr(raw).cidr == "10.0.0.1/24"


def test_route_parse():
    raw = _packed("rtmsg", netlink.RTM_NEWROUTE,
                  {"family": netlink.AF_INET, "dst_len": 24, "table": 254, "proto": 4, "scope": 0,
                   "type": 1, "flags": 4},
                  [("RTA_TABLE", 254), ("RTA_DST", "10.244.2.0"), ("RTA_GATEWAY", "10.244.2.0"),
                   ("RTA_OIF", 7), ("RTA_PRIORITY", 5), ("RTA_PREFSRC", "10.244.1.0")])
    r = Route(raw)
    assert (r.cidr, r.gateway, r.oif, r.table, r.priority, r.proto, r.flags, r.prefsrc) == \
        ("10.244.2.0/24", "10.244.2.0", 7, 254, 5, 4, 4, "10.244.1.0")
    raw = _packed("rtmsg", netlink.RTM_NEWROUTE, {"family": netlink.AF_INET6, "table": 252},
                  [("RTA_TABLE", 1000), ("RTA_GATEWAY", "fe80::1")])
    r = Route(raw)
    assert (r.cidr, r.table, r.gateway, r.oif) == ("::/0", 1000, "fe80::1", 0)


def test_neigh_parse():
    raw = _packed("ndmsg", netlink.RTM_NEWNEIGH,
                  {"family": netlink.AF_BRIDGE, "ifindex": 6, "state": 0x80, "flags": 2},
                  [("NDA_LLADDR", "aa:bb:cc:dd:ee:01"), ("NDA_DST", "fd00::5")])
    n = Neigh(raw)
    assert (n.family, n.index, n.state, n.flags, n.lladdr, n.dst) == \
        (netlink.AF_BRIDGE, 6, 0x80, 2, "aa:bb:cc:dd:ee:01", "fd00::5")
