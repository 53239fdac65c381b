"""Layer 3 over cnilib.kernel.netlink: addresses (RTM_*ADDR), routes
(RTM_*ROUTE, including ``ip route get``) and neighbours (RTM_*NEIGH).

A neighbour dump of family AF_BRIDGE gives fdb entries as ``Neigh`` too;
adding and removing those is bridge-port work (cnilib.kernel.brport).
"""

import _socket
import errno

from cnilib.kernel.netlink import (
    AF_INET,
    AF_INET6,
    AF_UNSPEC,
    IFA_ADDRESS,
    IFA_BROADCAST,
    IFA_F_NODAD,
    IFA_FLAGS,
    IFA_LABEL,
    IFA_LOCAL,
    IFADDR,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NETLINK_GET_STRICT_CHK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PREFSRC,
    RTA_PRIORITY,
    RTA_TABLE,
    RTM_DELADDR,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_BOOT,
    SOL_NETLINK,
    Netlink,
    NetlinkError,
    addr_family,
    attr_ip,
    attr_mac,
    attr_u32,
    get_ip,
    get_mac,
    get_text,
    get_u32,
    parse_attrs,
)

# ------------------------------------------------------------ addresses


class Addr:
    __slots__ = ("family", "address", "prefixlen", "index", "scope", "flags", "label")

    def __init__(self, raw):
        self.family, self.prefixlen, flags, self.scope, self.index = IFADDR.unpack_from(raw, 16)
        a = parse_attrs(raw, 24)
        self.flags = get_u32(a.get(IFA_FLAGS)) or flags
        self.address = get_ip(a.get(IFA_LOCAL)) or get_ip(a.get(IFA_ADDRESS))
        self.label = get_text(a.get(IFA_LABEL))

    @property
    def cidr(self):
        return "%s/%d" % (self.address, self.prefixlen)

    def __repr__(self):
        return "<Addr %s dev %d>" % (self.cidr, self.index)


def addrs(nl, index=0, family=AF_UNSPEC):
    """Addresses of link ``index`` (every link when 0), optionally one family."""
    got = nl.request(IFADDR.pack(family, 0, 0, 0, 0), RTM_GETADDR, NLM_F_DUMP,
                     what="dump addresses")
    out = [Addr(a) for a in got]
    if index:
        out = [a for a in out if a.index == index]
    return out


def link_addrs(nl, index, family=AF_UNSPEC):
    """Addresses of link ``index``, filtered by the kernel (a strict-checked
    dump), so a host with hundreds of veths does not parse every link-local
    address to read the bridge's two."""
    if not getattr(nl, "strict", False):
        try:
            nl.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            return addrs(nl, index, family)
        nl.strict = True
    got = nl.request(IFADDR.pack(family, 0, 0, 0, index), RTM_GETADDR, NLM_F_DUMP,
                     what="dump addresses of link %d" % index)
    return [a for a in map(Addr, got) if a.index == index]


def _addrmsg(index, address, prefixlen, broadcast=None, flags=0):
    body = (IFADDR.pack(addr_family(address), prefixlen, flags, 0, index)
            + attr_ip(IFA_LOCAL, address) + attr_ip(IFA_ADDRESS, address))
    if broadcast:
        body += attr_ip(IFA_BROADCAST, broadcast)
    return body


def addr_add(nl, index, address, prefixlen, broadcast=None, exist_ok=True, nodad=False):
    """Add address/prefixlen to link ``index``; an existing one is fine by
    default (False is returned then).  ``nodad`` skips IPv6 duplicate
    address detection (IFA_F_NODAD)."""
    try:
        nl.request(_addrmsg(index, address, prefixlen, broadcast, IFA_F_NODAD if nodad else 0),
                   RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                   what="add address %s/%d to link %d" % (address, prefixlen, index))
    except NetlinkError as exc:
        if exist_ok and exc.errno == errno.EEXIST:
            return False
        raise
    return True


def addr_del(nl, index, address, prefixlen):
    """Delete an address; True if it existed."""
    try:
        nl.request(_addrmsg(index, address, prefixlen), RTM_DELADDR,
                   what="delete address %s/%d from link %d" % (address, prefixlen, index))
    except NetlinkError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


# ------------------------------------------------------------ routes


class Route:
    __slots__ = ("family", "dst", "dst_len", "gateway", "oif", "table", "priority", "scope",
                 "proto", "type", "prefsrc", "flags")

    def __init__(self, raw):
        (self.family, self.dst_len, _src_len, _tos, table, self.proto, self.scope, self.type,
         self.flags) = RTMSG.unpack_from(raw, 16)
        a = parse_attrs(raw, 28)
        self.dst = get_ip(a.get(RTA_DST))
        self.gateway = get_ip(a.get(RTA_GATEWAY))
        self.oif = get_u32(a.get(RTA_OIF)) or 0
        self.table = get_u32(a.get(RTA_TABLE)) or table
        self.priority = get_u32(a.get(RTA_PRIORITY)) or 0
        self.prefsrc = get_ip(a.get(RTA_PREFSRC))

    @property
    def cidr(self):
        if self.dst is None:
            return "0.0.0.0/0" if self.family == AF_INET else "::/0"
        return "%s/%d" % (self.dst, self.dst_len)

    def __repr__(self):
        return "<Route %s via %s dev %d>" % (self.cidr, self.gateway, self.oif)


def _split_cidr(cidr):
    addr, _, plen = cidr.partition("/")
    fam = addr_family(addr)
    return fam, addr, int(plen) if plen else (128 if fam == AF_INET6 else 32)


def routes(nl, family=AF_UNSPEC, table=RT_TABLE_MAIN):
    """Routes of ``table`` (main by default)."""
    got = nl.request(RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), RTM_GETROUTE, NLM_F_DUMP,
                     what="dump routes")
    out = [Route(r) for r in got]
    return [r for r in out if table is None or r.table == table]


def route_get(nl, address):
    """The route the kernel would use to reach ``address`` (``ip route get``)."""
    fam = addr_family(address)
    body = RTMSG.pack(fam, 128 if fam == AF_INET6 else 32, 0, 0, 0, 0, 0, 0, 0) + attr_ip(RTA_DST, address)
    got = nl.request(body, RTM_GETROUTE, what="route get %s" % address)
    return Route(got[0]) if got else None


def route_oif_name(address):
    """Name of the interface the kernel routes ``address`` through, from a
    socket of its own in the calling thread's netns, or None."""
    try:
        with Netlink() as nl:
            r = route_get(nl, address)
        return _socket.if_indextoname(r.oif) if r is not None and r.oif else None
    except OSError:
        return None


def _routemsg(dst, gateway=None, oif=0, table=RT_TABLE_MAIN, priority=0, scope=None,
              onlink=False, proto=RTPROT_BOOT, prefsrc=None):
    fam, addr, plen = _split_cidr(dst)
    if scope is None:
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    body = (RTMSG.pack(fam, plen, 0, 0, table if table < 256 else 252, proto, scope, RTN_UNICAST,
                       RTNH_F_ONLINK if onlink else 0)
            + attr_u32(RTA_TABLE, table))
    if plen:
        body += attr_ip(RTA_DST, addr)
    if gateway:
        body += attr_ip(RTA_GATEWAY, gateway)
    if oif:
        body += attr_u32(RTA_OIF, oif)
    if priority:
        body += attr_u32(RTA_PRIORITY, priority)
    if prefsrc:
        body += attr_ip(RTA_PREFSRC, prefsrc)
    return body


def route_add(nl, dst, gateway=None, oif=0, table=RT_TABLE_MAIN, priority=0, scope=None,
              onlink=False, replace=False, exist_ok=False, prefsrc=None):
    """Add (or with ``replace``, replace) a route; EEXIST is fine with ``exist_ok``."""
    flags = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    what = "add route %s%s%s" % (dst, " via %s" % gateway if gateway else "",
                                 " dev %d" % oif if oif else "")
    try:
        nl.request(_routemsg(dst, gateway, oif, table, priority, scope, onlink, prefsrc=prefsrc),
                   RTM_NEWROUTE, flags, what=what)
    except NetlinkError as exc:
        if exist_ok and exc.errno == errno.EEXIST:
            return False
        raise
    return True


def route_del(nl, dst, gateway=None, oif=0, table=RT_TABLE_MAIN, priority=0):
    """Delete a route; True if it existed (ESRCH/ENOENT mean it was gone)."""
    try:
        nl.request(_routemsg(dst, gateway, oif, table, priority, scope=RT_SCOPE_UNIVERSE),
                   RTM_DELROUTE, what="delete route %s" % dst)
    except NetlinkError as exc:
        if exc.errno in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            return False
        raise
    return True


# ------------------------------------------------------------ neighbours
#
# What flanneld's vxlan backend asks of the kernel per peer: a permanent
# neighbour (the peer's VTEP address -> its VTEP MAC) on the vxlan device,
# beside an fdb entry (cnilib.kernel.brport) and a route.

_NEIGH_REPLACE = NLM_F_CREATE | NLM_F_REPLACE


class Neigh:
    """A neighbour (family AF_INET/AF_INET6) or fdb entry (AF_BRIDGE)."""

    __slots__ = ("family", "index", "dst", "lladdr", "state", "flags")

    def __init__(self, raw):
        self.family, _p1, _p2, self.index, self.state, self.flags, _t = NDMSG.unpack_from(raw, 16)
        a = parse_attrs(raw, 28)
        self.dst = get_ip(a.get(NDA_DST))
        self.lladdr = get_mac(a.get(NDA_LLADDR))

    def __repr__(self):
        return "<Neigh %s lladdr %s dev %d state 0x%x>" % (self.dst, self.lladdr, self.index, self.state)


def neighmsg(family, index, attrs, state=NUD_PERMANENT, flags=0):
    """An ndmsg of a unicast entry followed by ``attrs`` (packed)."""
    return NDMSG.pack(family, 0, 0, index, state, flags, RTN_UNICAST) + attrs


def neighs(nl, index=0, family=AF_UNSPEC):
    """Neighbour entries (of link ``index`` when given) of ``family``: AF_BRIDGE
    gives fdb entries, AF_UNSPEC only the IPv4 and IPv6 neighbours."""
    got = nl.request(NDMSG.pack(family, 0, 0, 0, 0, 0, 0), RTM_GETNEIGH, NLM_F_DUMP,
                     what="dump neighbours")
    out = [Neigh(n) for n in got]
    return [n for n in out if not index or n.index == index]


def neigh_replace(nl, index, dst, lladdr):
    """``ip neigh replace DST lladdr LLADDR dev INDEX nud permanent``."""
    nl.request(neighmsg(addr_family(dst), index, attr_ip(NDA_DST, dst) + attr_mac(NDA_LLADDR, lladdr)),
               RTM_NEWNEIGH, _NEIGH_REPLACE,
               what="replace neighbour %s lladdr %s dev %d" % (dst, lladdr, index))


def neigh_del(nl, index, dst):
    """Delete a neighbour entry; True if it existed."""
    try:
        nl.request(neighmsg(addr_family(dst), index, attr_ip(NDA_DST, dst), state=0), RTM_DELNEIGH,
                   what="delete neighbour %s dev %d" % (dst, index))
    except NetlinkError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return False
        raise
    return True
