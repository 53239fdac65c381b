"""Links: read, change and delete network interfaces (RTM_*LINK), and the
per-link settings the kernel keeps beside them (forwarding, arp_notify, the
IPv6 devconf, tuning's allmulticast and txqueuelen), over
cnilib.kernel.netlink.

Two readers: ``Link`` parses what a plugin needs of one link (with the full
pyroute2 decode on demand as ``Link.msg``); ``LinkBrief`` is what whois and
doctor read of every link of a node in one dump.
"""

import errno
import struct

from cnilib.kernel import netlink
from cnilib.kernel.netlink import (
    AF_INET,
    AF_INET6,
    IFF_ALLMULTI,
    IFF_PROMISC,
    IFF_UP,
    IFLA_ADDRESS,
    IFLA_AF_SPEC,
    IFLA_IFALIAS,
    IFLA_IFNAME,
    IFLA_INET6_CONF,
    IFLA_INET_CONF,
    IFLA_INFO_KIND,
    IFLA_INFO_SLAVE_KIND,
    IFLA_LINK,
    IFLA_LINK_NETNSID,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_MTU,
    IFLA_NET_NS_FD,
    IFLA_OPERSTATE,
    IFLA_TXQLEN,
    NLA_F_NESTED,
    NLM_F_DUMP,
    OPERSTATES,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_GETNETCONF,
    RTM_GETNSID,
    RTM_NEWLINK,
    SKIP_STATS,
    NetlinkError,
    attr,
    attr_mac,
    attr_str,
    attr_u32,
    get_mac,
    get_s32,
    get_text,
    get_u32,
    ifinfo,
    link_attrs,
    parse_attrs,
)


class Link:
    """What the suite reads of a link (RTM_NEWLINK), parsed from the raw
    message.  ``msg`` decodes it with pyroute2 on demand, for the readers
    of nested attributes that are off a pod's path (the vxlan device's
    data) and for the tests."""

    __slots__ = ("index", "name", "kind", "mac", "mtu", "flags", "operstate", "master",
                 "peer_index", "link_netnsid", "alias", "txqlen", "linkinfo", "_raw", "_msg")

    def __init__(self, raw):
        self._raw, self._msg = raw, None
        self.index, self.flags, a = link_attrs(raw)
        self.name = get_text(a.get(IFLA_IFNAME))
        self.mac = get_mac(a.get(IFLA_ADDRESS))
        self.mtu = get_u32(a.get(IFLA_MTU))
        self.txqlen = get_u32(a.get(IFLA_TXQLEN))
        self.master = get_u32(a.get(IFLA_MASTER)) or 0
        self.peer_index = get_u32(a.get(IFLA_LINK)) or 0
        self.link_netnsid = get_s32(a.get(IFLA_LINK_NETNSID))
        op = a.get(IFLA_OPERSTATE)
        self.operstate = (OPERSTATES[op[0]] if op[0] < len(OPERSTATES) else "UNKNOWN") if op else None
        self.alias = get_text(a.get(IFLA_IFALIAS))
        self.linkinfo = a.get(IFLA_LINKINFO)         # raw (brport_flags)
        self.kind = get_text(parse_attrs(self.linkinfo).get(IFLA_INFO_KIND))

    @property
    def msg(self):
        if self._msg is None:
            m = netlink.msgclass("ifinfmsg")(self._raw)
            m.decode()
            self._msg = m
        return self._msg

    @property
    def up(self):
        return bool(self.flags & IFF_UP)

    @property
    def promisc(self):
        return bool(self.flags & IFF_PROMISC)

    def devconf6(self, index):
        """The link's IPv6 sysctl number ``index`` (DEVCONF_*, the order of
        /proc/sys/net/ipv6/conf/<link>/), read from the message it came
        in (IFLA_AF_SPEC/AF_INET6/IFLA_INET6_CONF), or None: the value a
        /proc read would cost ~0.1-1 ms to give on a busy host."""
        spec = parse_attrs(self._raw, 32).get(IFLA_AF_SPEC)
        conf = parse_attrs(parse_attrs(spec).get(AF_INET6)).get(IFLA_INET6_CONF) if spec else None
        if conf is None or len(conf) < 4 * (index + 1):
            return None
        return struct.unpack_from("=i", conf, 4 * index)[0]

    def __repr__(self):
        return "<Link %d %s kind=%s>" % (self.index, self.name, self.kind)


def link_get(nl, name=None, index=0):
    """The link called ``name`` (or with ``index``), or None."""
    body = ifinfo(index) + SKIP_STATS
    if name is not None:
        body += attr_str(IFLA_IFNAME, name)
    try:
        got = nl.request(body, RTM_GETLINK, what="get link %s" % (name or index))
    except NetlinkError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return Link(got[0]) if got else None


def links(nl):
    """Every link of the netns."""
    return [Link(m) for m in nl.request(ifinfo() + SKIP_STATS, RTM_GETLINK, NLM_F_DUMP,
                                        what="dump links")]


def link_set(nl, index, up=None, mtu=None, master=None, mac=None, name=None,
             alias=None, promisc=None, netns_fd=None, what=None):
    """Change a link's attributes; only the arguments given are touched."""
    attrs = b""
    flags = change = 0
    if up is not None:
        change |= IFF_UP
        flags |= IFF_UP if up else 0
    if promisc is not None:
        change |= IFF_PROMISC
        flags |= IFF_PROMISC if promisc else 0
    if mtu is not None:
        attrs += attr_u32(IFLA_MTU, mtu)
    if master is not None:
        attrs += attr_u32(IFLA_MASTER, master)
    if mac is not None:
        attrs += attr_mac(IFLA_ADDRESS, mac)
    if name is not None:
        attrs += attr_str(IFLA_IFNAME, name)
    if alias is not None:
        attrs += attr_str(IFLA_IFALIAS, alias)
    if netns_fd is not None:
        attrs += attr_u32(IFLA_NET_NS_FD, netns_fd)
    nl.request(ifinfo(index, flags=flags, change=change) + attrs, RTM_NEWLINK,
               what=what or "set link %d" % index)


def link_del(nl, index=0, name=None):
    """Delete a link; True if it existed.  ENODEV/ENOENT mean it is gone already."""
    body = ifinfo(index) + (attr_str(IFLA_IFNAME, name) if name is not None else b"")
    try:
        nl.request(body, RTM_DELLINK, what="delete link %s" % (name or index))
    except NetlinkError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


# ---- per-link and per-netns settings read and set over netlink, not /proc

def forwarding(nl, family):
    """net.ipv4.ip_forward (``AF_INET``) or net.ipv6.conf.all.forwarding
    (``AF_INET6``) of the socket's netns, read over netlink (RTM_GETNETCONF),
    or None when the kernel does not say."""
    body = struct.pack("=Bxxx", family) + attr(netlink.NETCONFA_IFINDEX,
                                               struct.pack("=i", netlink.NETCONFA_IFINDEX_ALL))
    try:
        got = nl.request(body, RTM_GETNETCONF, what="get forwarding")
    except NetlinkError:
        return None
    for m in got:
        v = get_s32(parse_attrs(m, 20).get(netlink.NETCONFA_FORWARDING))
        if v is not None:
            return v
    return None


def link_set_arp_notify(nl, index, on=True):
    """net.ipv4.conf.<link>.arp_notify over netlink (IFLA_AF_SPEC/AF_INET/
    IFLA_INET_CONF): no /proc open in a fresh netns (~1 ms on a busy host)."""
    conf = attr(IFLA_INET_CONF | NLA_F_NESTED, attr_u32(netlink.IPV4_DEVCONF_ARP_NOTIFY, 1 if on else 0))
    nl.request(ifinfo(index) + attr(IFLA_AF_SPEC, attr(AF_INET, conf)), RTM_NEWLINK,
               what="set arp_notify on link %d" % index)


def link_txqlen(link):
    """The transmit queue length of a Link (IFLA_TXQLEN)."""
    return link.txqlen


def link_allmulti(link):
    return bool(link.flags & IFF_ALLMULTI)


def link_set_allmulti(nl, index, on, what=None):
    nl.request(ifinfo(index, flags=IFF_ALLMULTI if on else 0, change=IFF_ALLMULTI),
               RTM_NEWLINK, what=what or "set allmulticast %s on link %d" % ("on" if on else "off", index))


def link_set_txqlen(nl, index, qlen, what=None):
    nl.request(ifinfo(index) + attr_u32(IFLA_TXQLEN, qlen), RTM_NEWLINK,
               what=what or "set txqueuelen %d on link %d" % (qlen, index))


# ---- whois and doctor: one raw link dump for the whole node, netns ids
#
# ``pycni whois`` maps every host veth to its pod the way the seed article
# does by hand (``ip link`` shows ``vethX@ifN link-netnsid M``, ``ethtool -S``
# gives the peer ifindex): IFLA_LINK is the peer's ifindex, IFLA_LINK_NETNSID
# the id *this* netns gave the peer's netns, and RTM_GETNSID turns a netns
# file (a name under /var/run/netns, /proc/<pid>/ns/net) into that same id.
# Only the attributes it needs are decoded, from one dump per run.


class LinkBrief:
    """What whois and doctor read of every link: index, name, kind
    (IFLA_INFO_KIND), slave_kind ("bridge" for a bridge port), master,
    peer_index (IFLA_LINK: a veth's peer ifindex), link_netnsid (None when
    the peer is in this netns), alias, mtu, mac, operstate, flags."""

    __slots__ = ("index", "name", "kind", "slave_kind", "master", "peer_index", "link_netnsid",
                 "alias", "mtu", "mac", "operstate", "flags")

    def __repr__(self):
        return "<LinkBrief %d %s kind=%s>" % (self.index, self.name, self.kind)

    @property
    def up(self):
        return bool(self.flags & IFF_UP)


def parse_link_brief(m):
    """A LinkBrief from one raw RTM_NEWLINK message (header included)."""
    b = LinkBrief()
    b.index, b.flags, raw = link_attrs(m)
    b.name, b.alias = get_text(raw.get(IFLA_IFNAME)), get_text(raw.get(IFLA_IFALIAS)) or None
    b.mtu, b.master, b.peer_index = (get_u32(raw.get(k)) or 0 for k in (IFLA_MTU, IFLA_MASTER, IFLA_LINK))
    b.link_netnsid = get_s32(raw.get(IFLA_LINK_NETNSID))
    op = raw.get(IFLA_OPERSTATE)
    b.operstate = OPERSTATES[op[0]] if op and op[0] < len(OPERSTATES) else "UNKNOWN"
    mac = raw.get(IFLA_ADDRESS)
    b.mac = get_mac(mac) if mac is not None and len(mac) == 6 else None
    info = parse_attrs(raw.get(IFLA_LINKINFO) or b"")
    b.kind, b.slave_kind = get_text(info.get(IFLA_INFO_KIND)), get_text(info.get(IFLA_INFO_SLAVE_KIND))
    return b


def link_index(nl):
    """Every link of the netns as LinkBrief, from one dump."""
    return [parse_link_brief(m) for m in nl.request(ifinfo() + SKIP_STATS, RTM_GETLINK,
                                                    NLM_F_DUMP, what="links")]


def netns_id(nl, fd):
    """The id this socket's netns gave the netns open on ``fd``, or None
    when it gave none (no link here points into that netns)."""
    try:   # rtgenmsg (1 byte, padded to 4), NETNSA_FD
        got = nl.request(b"\0\0\0\0" + attr_u32(netlink.NETNSA_FD, fd), RTM_GETNSID, what="get netns id")
    except NetlinkError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT, errno.EBADF):
            return None
        raise
    if not got:
        return None
    nsid = get_s32(parse_attrs(got[0], 20).get(netlink.NETNSA_NSID))
    return nsid if nsid is not None and nsid >= 0 else None


def veth_peer(nl, link, link_netns_fd):
    """The other end of veth ``link`` (a Link read in the netns open on
    ``link_netns_fd``) when that end is in ``nl``'s netns, checked from both
    sides: its IFLA_LINK is ``link``'s index and its IFLA_LINK_NETNSID the
    id ``nl``'s netns gave ``link``'s.  None when ``link`` is no veth or its
    peer is in another netns (an ifindex alone names different links in
    different namespaces)."""
    if link.kind != "veth" or not link.peer_index or link.link_netnsid is None:
        return None
    nsid = netns_id(nl, link_netns_fd)
    if nsid is None:
        return None
    peer = link_get(nl, index=link.peer_index)
    if peer is None or peer.kind != "veth" or peer.peer_index != link.index or peer.link_netnsid != nsid:
        return None
    return peer
