"""The bridge plugin's netlink requests, encoded and decoded back (no root).

This machine's kernel has no bridge VLAN filtering, so the VLAN requests
cannot run in the integration tier; their bytes and their order are checked
here instead.
"""

import struct

import pytest

from cnilib.bridge import links, netconf
from cnilib.kernel import netlink
from cnilib.kernel.brport import bridge_add, brport_set, veth_add

ifinfmsg = netlink.msgclass("ifinfmsg")     # what brport.py packs VLAN requests with


class FakeNL:
    """Records requests; answers a VLAN dump with ``vlans``."""

    def __init__(self, vlans=()):
        self.sent = []
        self.vlans = list(vlans)

    def request(self, msg, msg_type, flags=0, what="", raw=True):
        if isinstance(msg, bytes):      # packed by hand: pyroute2 must read it back
            data = struct.pack("=IHHII", 16 + len(msg), msg_type, flags, 1, 0) + msg
        else:
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = flags
            msg.encode()
            data = msg.data
        back = ifinfmsg(data)
        back.decode()
        self.sent.append((msg_type, flags, back))
        if msg_type == netlink.RTM_GETLINK:
            m = ifinfmsg()
            m["family"] = netlink.AF_BRIDGE
            m["index"] = 7
            m["attrs"] = [("IFLA_AF_SPEC", {"attrs": [("IFLA_BRIDGE_VLAN_INFO", {"flags": f, "vid": v})
                                                      for v, f in self.vlans]})]
            m.encode()
            d = ifinfmsg(m.data)
            d.decode()
            return [d]
        return []


def _vlan_infos(m):
    spec = m.get_attr("IFLA_AF_SPEC")
    return [(vi["vid"], vi["flags"]) for vi in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO")]


class Port:
    index, name = 7, "veth01234567"


def conf(**kw):
    c = netconf.load_conf(dict({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}, **kw))
    return c


def test_access_port_replaces_the_default_vlan():
    nl = FakeNL(vlans=[(1, 6)])
    links.set_port_vlans(nl, Port, conf(vlan=100))
    kinds = [t for t, _, _ in nl.sent]
    assert kinds == [netlink.RTM_GETLINK, netlink.RTM_DELLINK, netlink.RTM_SETLINK]
    dump, dele, add = (m for _, _, m in nl.sent)
    assert dump["family"] == netlink.AF_BRIDGE
    assert dump.get_attr("IFLA_EXT_MASK") == netlink.RTEXT_FILTER_BRVLAN
    assert dele["family"] == netlink.AF_BRIDGE and dele["index"] == 7
    assert _vlan_infos(dele) == [(1, 0)]
    assert _vlan_infos(add) == [(100, netlink.BRIDGE_VLAN_INFO_PVID | netlink.BRIDGE_VLAN_INFO_UNTAGGED)]


def test_trunk_without_access_vlan_gets_native_vlan_1():
    nl = FakeNL(vlans=[(1, 6)])
    links.set_port_vlans(nl, Port, conf(vlanTrunk=[{"minID": 10, "maxID": 11}], preserveDefaultVlan=True))
    adds = [_vlan_infos(m) for t, _, m in nl.sent if t == netlink.RTM_SETLINK]
    assert adds == [[(10, 0)], [(11, 0)], [(1, 6)]]
    assert all(t != netlink.RTM_DELLINK for t, _, _ in nl.sent)     # default kept


def test_no_vlan_config_sends_nothing():
    nl = FakeNL()
    links.set_port_vlans(nl, Port, conf())
    assert nl.sent == []


def test_port_flags_are_nested_protinfo_for_af_bridge():
    nl = FakeNL()
    brport_set(nl, 7, hairpin=True, isolated=False)
    (t, _, m), = nl.sent
    assert t == netlink.RTM_SETLINK and m["family"] == netlink.AF_BRIDGE and m["index"] == 7
    raw = m.data
    # IFLA_PROTINFO (12) must carry NLA_F_NESTED, or the kernel reads it as an STP state
    off = 16 + 16
    typ = int.from_bytes(raw[off + 2:off + 4], "little")
    assert typ == 12 | netlink.NLA_F_NESTED
    info = m.get_attr("IFLA_PROTINFO")
    assert info.get_attr("IFLA_BRPORT_MODE") == 1 and info.get_attr("IFLA_BRPORT_ISOLATED") == 0


def test_veth_peer_is_created_in_the_container_netns():
    nl = FakeNL()
    veth_add(nl, "veth01234567", "eth0", peer_netns_fd=9, mtu=1400,
                     peer_mac="0a:00:00:00:00:01", master=3)
    (t, flags, m), = nl.sent
    assert t == netlink.RTM_NEWLINK and flags & netlink.NLM_F_EXCL
    assert m.get_attr("IFLA_IFNAME") == "veth01234567" and m.get_attr("IFLA_MASTER") == 3
    assert m["flags"] & netlink.IFF_UP
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == "eth0" and peer.get_attr("IFLA_MTU") == 1400
    assert peer.get_attr("IFLA_NET_NS_FD") == 9
    assert peer.get_attr("IFLA_ADDRESS") == "0a:00:00:00:00:01"


@pytest.mark.parametrize("vf", [False, True])
def test_bridge_creation_pins_the_mac(vf):
    nl = FakeNL()
    bridge_add(nl, "cni0", mtu=1450, mac="02:00:00:00:00:01", vlan_filtering=vf)
    (_, _, m), = nl.sent
    assert m.get_attr("IFLA_ADDRESS") == "02:00:00:00:00:01" and m.get_attr("IFLA_MTU") == 1450
    data = m.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert (data.get_attr("IFLA_BR_VLAN_FILTERING") if data is not None else None) == (1 if vf else None)
