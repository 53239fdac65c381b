"""Bridges and what hangs on them, over cnilib.kernel.netlink: the bridge
device, veth pairs, bridge-port flags (hairpin, isolated) and VLANs, the
ports of a bridge, and fdb entries (a vxlan device's own forwarding table).

VLAN filtering is packed and read by pyroute2 (through
``netlink.msgclass``): only VLAN configurations pay for loading it.
"""

import errno

from cnilib.kernel import netlink
from cnilib.kernel.netlink import (
    AF_BRIDGE,
    IFF_UP,
    IFLA_ADDRESS,
    IFLA_BR_VLAN_FILTERING,
    IFLA_BRPORT_ISOLATED,
    IFLA_BRPORT_MODE,
    IFLA_BRPORT_STATE,
    IFLA_IFALIAS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_INFO_SLAVE_DATA,
    IFLA_INFO_SLAVE_KIND,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_MTU,
    IFLA_NET_NS_FD,
    IFLA_PROTINFO,
    NDA_DST,
    NDA_LLADDR,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NTF_SELF,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_GETLINK,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_SETLINK,
    SKIP_STATS,
    VETH_INFO_PEER,
    NetlinkError,
    attr,
    attr_ip,
    attr_mac,
    attr_str,
    attr_u8,
    attr_u32,
    get_text,
    get_u32,
    ifinfo,
    link_attrs,
    nest,
    parse_attrs,
)
from cnilib.kernel.route import neighmsg


def _linkinfo(kind, data=b""):
    info = attr_str(IFLA_INFO_KIND, kind)
    if data:
        info += attr(IFLA_INFO_DATA, data)
    return attr(IFLA_LINKINFO, info)


def bridge_add(nl, name, mtu=0, mac=None, vlan_filtering=False):
    """Create bridge ``name``, up; True if this call created it.

    EEXIST is not an error (a parallel ADD created it first, or a link of
    that name exists): the caller re-reads the link and checks its kind.
    A ``mac`` given here is pinned: the kernel then never moves the
    bridge's MAC to follow the lowest port MAC.
    """
    attrs = attr_str(IFLA_IFNAME, name)
    if mtu:
        attrs += attr_u32(IFLA_MTU, mtu)
    if mac:
        attrs += attr_mac(IFLA_ADDRESS, mac)
    attrs += _linkinfo("bridge", attr_u8(IFLA_BR_VLAN_FILTERING, 1) if vlan_filtering else b"")
    try:
        nl.request(ifinfo(flags=IFF_UP, change=IFF_UP) + attrs, RTM_NEWLINK,
                   NLM_F_CREATE | NLM_F_EXCL, what="create bridge %s" % name)
    except NetlinkError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise
    return True


def veth_add(nl, name, peer_name, peer_netns_fd=None, mtu=0, peer_mac=None, master=0, up=True):
    """Create a veth pair in one request: ``name`` in this socket's netns
    (up, enslaved to ``master``) and ``peer_name`` created directly in the
    netns ``peer_netns_fd`` (down, with ``peer_mac``).  EEXIST is raised:
    either name may be the one taken."""
    peer = ifinfo() + attr_str(IFLA_IFNAME, peer_name)     # VETH_INFO_PEER: an ifinfomsg + attrs
    if mtu:
        peer += attr_u32(IFLA_MTU, mtu)
    if peer_mac:
        peer += attr_mac(IFLA_ADDRESS, peer_mac)
    if peer_netns_fd is not None:
        peer += attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
    attrs = attr_str(IFLA_IFNAME, name)
    if mtu:
        attrs += attr_u32(IFLA_MTU, mtu)
    if master:
        attrs += attr_u32(IFLA_MASTER, master)
    attrs += _linkinfo("veth", attr(VETH_INFO_PEER, peer))
    flags = IFF_UP if up else 0
    nl.request(ifinfo(flags=flags, change=flags) + attrs, RTM_NEWLINK,
               NLM_F_CREATE | NLM_F_EXCL, what="create veth %s with peer %s" % (name, peer_name))


# ---- bridge ports

def brport_set(nl, index, hairpin=None, isolated=None):
    """Set bridge-port flags of link ``index``: RTM_SETLINK for AF_BRIDGE
    with a nested IFLA_PROTINFO (the kernel treats a non-nested one as the
    old STP-state format)."""
    info = b""
    if hairpin is not None:
        info += attr_u8(IFLA_BRPORT_MODE, 1 if hairpin else 0)
    if isolated is not None:
        info += attr_u8(IFLA_BRPORT_ISOLATED, 1 if isolated else 0)
    if not info:
        return
    nl.request(ifinfo(index, family=AF_BRIDGE) + nest(IFLA_PROTINFO, info),
               RTM_SETLINK, what="set bridge port flags of link %d" % index)


def brport_flags(link):
    """{'hairpin': bool, 'isolated': bool, 'state': int} of a bridge port read
    with link_get (IFLA_INFO_SLAVE_DATA), or None when ``link`` is not one."""
    info = parse_attrs(link.linkinfo)
    data = info.get(IFLA_INFO_SLAVE_DATA)
    if data is None or get_text(info.get(IFLA_INFO_SLAVE_KIND)) != "bridge":
        return None
    port = parse_attrs(data)
    u8 = lambda k: port[k][0] if port.get(k) else None  # noqa: E731
    return {"hairpin": bool(u8(IFLA_BRPORT_MODE)), "isolated": bool(u8(IFLA_BRPORT_ISOLATED)),
            "state": u8(IFLA_BRPORT_STATE)}


def port_aliases(nl, master):
    """[(index, name, alias)] of the links enslaved to ``master``, from a
    dump the kernel filters by master."""
    got = nl.request(ifinfo() + attr_u32(IFLA_MASTER, master) + SKIP_STATS, RTM_GETLINK,
                     NLM_F_DUMP, what="ports of link %d" % master)
    out = []
    for m in got:
        index, _flags, attrs = link_attrs(m)
        if get_u32(attrs.get(IFLA_MASTER)) != master:
            continue
        out.append((index, get_text(attrs.get(IFLA_IFNAME)) or "", get_text(attrs.get(IFLA_IFALIAS)) or None))
    return out


# ---- VLAN filtering: pyroute2 packs and reads these


def _vlan_request(nl, index, msg_type, entries, what):
    spec = [("IFLA_BRIDGE_FLAGS", netlink.BRIDGE_FLAGS_MASTER)]
    for vid, flags in entries:
        spec.append(("IFLA_BRIDGE_VLAN_INFO", {"flags": flags, "vid": vid}))
    m = netlink.msgclass("ifinfmsg")()
    m["family"] = AF_BRIDGE
    m["index"] = index
    m["attrs"] = [("IFLA_AF_SPEC", {"attrs": spec})]
    nl.request(m, msg_type, what=what)


def bridge_vlan_add(nl, index, vid, pvid=False, untagged=False):
    """``bridge vlan add dev <index> vid <vid> [pvid] [untagged] master``."""
    flags = ((netlink.BRIDGE_VLAN_INFO_PVID if pvid else 0)
             | (netlink.BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0))
    _vlan_request(nl, index, RTM_SETLINK, [(vid, flags)],
                  "add vlan %d to bridge port %d" % (vid, index))


def bridge_vlan_del(nl, index, vids):
    """Remove VLANs ``vids`` from bridge port ``index``."""
    if vids:
        _vlan_request(nl, index, RTM_DELLINK, [(v, 0) for v in vids],
                      "delete vlans %s from bridge port %d" % (",".join(map(str, vids)), index))


def bridge_vlans(nl, index):
    """[(vid, flags)] of bridge port ``index``.  The kernel cannot filter
    this dump by port, so only VLAN configurations pay for it."""
    m = netlink.msgclass("ifinfmsg")()
    m["family"] = AF_BRIDGE
    m["attrs"] = [("IFLA_EXT_MASK", netlink.RTEXT_FILTER_BRVLAN)]
    got = nl.request(m, RTM_GETLINK, NLM_F_DUMP, what="dump bridge vlans", raw=False)
    out = []
    for m in got:
        if m["index"] != index:
            continue
        spec = m.get_attr("IFLA_AF_SPEC")
        if spec is None:
            continue
        for vi in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO"):
            out.append((vi["vid"], vi["flags"]))
    return out


# ---- fdb entries of a vxlan device (the flannel fabric: a peer's VTEP MAC
# -> its public IP, family AF_BRIDGE with NTF_SELF: the device's own fdb,
# not a bridge's); ``route.neighs(nl, index, AF_BRIDGE)`` reads them


def _fdbmsg(index, lladdr, dst):
    return neighmsg(AF_BRIDGE, index, attr_mac(NDA_LLADDR, lladdr) + attr_ip(NDA_DST, dst), flags=NTF_SELF)


def fdb_replace(nl, index, lladdr, dst):
    """``bridge fdb replace LLADDR dev INDEX dst DST self permanent``."""
    nl.request(_fdbmsg(index, lladdr, dst), RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
               what="replace fdb entry %s dst %s dev %d" % (lladdr, dst, index))


def fdb_del(nl, index, lladdr, dst):
    """Delete an fdb entry of a vxlan device; True if it existed."""
    try:
        nl.request(_fdbmsg(index, lladdr, dst), RTM_DELNEIGH,
                   what="delete fdb entry %s dst %s dev %d" % (lladdr, dst, index))
    except NetlinkError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return False
        raise
    return True

