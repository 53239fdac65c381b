"""Netlink: the suite's only door to the kernel's routing and link tables.

Every request a plugin makes on a pod's path (links, veth pairs, bridges
and their ports, addresses, routes) and every reply it reads is packed and
parsed here by hand, over a plain synchronous rtnetlink socket:

* importing pyroute2's message classes costs ~25 ms of a ~40 ms exec
  (they pull in logging, re, enum and multiprocessing), and its encoder
  and full decode ~0.2 ms a message; the hand-packed requests cost a few
  microseconds and import nothing;
* pyroute2 0.9's IPRoute runs an asyncio loop per call and forks a helper
  (exec'ing ldconfig) to reach another netns; a socket opened after
  ``setns`` reaches it for ~0.5 ms instead.

This is the one module that imports pyroute2, and only on demand: for the
VXLAN device of the flannel fabric, bridge VLAN filtering, netns ids, and
``Link.msg`` (a full decode, for diagnostics and for the tests, which hold
every hand-made parse to pyroute2's decode of the same bytes).  A package
stub skips pyroute2's __init__ (~60 modules, 143 ms) and loads only the
message classes; pyroute2 is pinned (see pyproject.toml) because the stub
relies on its package layout, and tests/unit/test_imports.py checks it.

Errors are ``NetlinkError`` (an OSError: compare ``.errno`` with the errno
module, never with numbers); the kernel's extended-ack text is kept in the
message.
"""

import _socket
import errno
import os
import struct
import sys

from cnilib.kernel import netns as _netns

# ------------------------------------------------------------ pyroute2, on demand


def _load_pyroute2():
    mod = sys.modules.get("pyroute2")
    if mod is None:
        pkg = None
        for base in sys.path:
            cand = os.path.join(base or ".", "pyroute2")
            if os.path.isdir(cand):
                pkg = cand
                break
        if pkg is None and hasattr(sys, "_MEIPASS"):
            pkg = os.path.join(sys._MEIPASS, "pyroute2")
        if pkg is not None:
            import types
            mod = types.ModuleType("pyroute2")
            mod.__path__ = [pkg]
            mod.__file__ = os.path.join(pkg, "__init__.py")
            sys.modules["pyroute2"] = mod


def msgclass(name):
    """pyroute2's rtnetlink message class ``name`` (ifinfmsg, ifaddrmsg,
    rtmsg, ndmsg, nsidmsg), loaded through the stub on first use."""
    _load_pyroute2()
    mod = __import__("pyroute2.netlink.rtnl." + name, fromlist=[name])
    return getattr(mod, name)


AF_UNSPEC, AF_INET, AF_INET6, AF_BRIDGE, AF_NETLINK = 0, 2, 10, 7, 16
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 1, 2, 4
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NLM_F_ACK_TLVS = 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

IFF_UP, IFF_PROMISC = 0x1, 0x100
RTEXT_FILTER_VF, RTEXT_FILTER_SKIP_STATS = 1, 8

_HDR = struct.Struct("=IHHII")
_DECODERS = {     # message type -> pyroute2 class name, for the callers that want pyroute2 objects
    RTM_NEWLINK: "ifinfmsg", RTM_DELLINK: "ifinfmsg",
    RTM_NEWADDR: "ifaddrmsg", RTM_DELADDR: "ifaddrmsg",
    RTM_NEWROUTE: "rtmsg", RTM_DELROUTE: "rtmsg",
    RTM_NEWNEIGH: "ndmsg", RTM_DELNEIGH: "ndmsg",
}


class NetlinkError(OSError):
    """A kernel error reply: ``.errno`` is the errno, the text includes the
    request and the kernel's extended-ack message when it gave one."""


class DumpInterrupted(Exception):
    pass


# ------------------------------------------------------------ packing

_ATTR = struct.Struct("=HH")
_IFINFO = struct.Struct("=BBHiII")        # ifinfomsg: family, pad, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")         # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")      # rtmsg: family, dst_len, src_len, tos, table,
#                                           protocol, scope, type, flags
_NDMSG = struct.Struct("=BBHiHBB")        # ndmsg: family, pad, pad, ifindex, state, flags, type


def _attr(atype, payload):
    return _ATTR.pack(4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def _a_u8(atype, v):
    return _attr(atype, struct.pack("=B", v))


def _a_u32(atype, v):
    return _attr(atype, struct.pack("=I", v))


def _a_str(atype, text):
    return _attr(atype, text.encode() + b"\0")


def _a_mac(atype, mac):
    return _attr(atype, bytes.fromhex(mac.replace(":", "").replace("-", "")))


def _family(address):
    return AF_INET6 if ":" in address else AF_INET


def _a_ip(atype, address):
    return _attr(atype, _socket.inet_pton(_family(address), address))


def _ifinfo(index=0, family=AF_UNSPEC, flags=0, change=0):
    return _IFINFO.pack(family, 0, 0, index, flags, change)


# ------------------------------------------------------------ parsing


def _nested(data, off=0):
    """{type: raw value} of a run of attributes (a later duplicate wins, as
    in pyroute2's get_attr)."""
    out, pos, end = {}, off, len(data or b"")
    while pos + 4 <= end:
        alen, atype = _ATTR.unpack_from(data, pos)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[pos + 4:pos + alen]
        pos += (alen + 3) & ~3
    return out


def _text(v):
    return bytes(v).split(b"\0", 1)[0].decode("utf-8", "replace") if v is not None else None


def _u32(v):
    return struct.unpack_from("=I", v)[0] if v is not None and len(v) >= 4 else None


def _ip(v):
    """Text of an address attribute (4 or 16 bytes), or None."""
    if v is None:
        return None
    if len(v) == 4:
        return _socket.inet_ntop(AF_INET, bytes(v))
    if len(v) == 16:
        return _socket.inet_ntop(AF_INET6, bytes(v))
    return None


def _mac(v):
    return ":".join("%02x" % c for c in v) if v is not None else None


# ------------------------------------------------------------ transport


class Netlink:
    """A rtnetlink socket in the netns that was current when it was opened.

    ``Netlink.in_netns(fd)`` opens one inside another netns and returns to
    the caller's netns at once: the socket stays bound to the netns it was
    created in.
    """

    def __init__(self):
        self.sock = _socket.socket(AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                                   NETLINK_ROUTE)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass
        self.sock.bind((0, 0))
        self.seq = 0

    @classmethod
    def in_netns(cls, fd):
        with _netns.Enter(fd):
            return cls()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- raw request ----------------------------------------------------
    def request(self, msg, msg_type, flags=0, what="", raw=True):
        """Send ``msg`` (the body as bytes, or a pyroute2 message) and
        collect the reply.

        Returns each message of a dump or an echo as bytes, header included
        (with ``raw=False``, decoded by pyroute2), [] for a plain ACK.
        Raises NetlinkError for an error reply.
        """
        for _attempt in range(5):
            try:
                return self._request(msg, msg_type, flags, what, raw)
            except DumpInterrupted:
                continue
        raise NetlinkError(errno.EINTR, "netlink dump of %s kept being interrupted" % (what or "objects"))

    def _request(self, msg, msg_type, flags, what, raw):
        self.seq += 1
        seq = self.seq
        hflags = NLM_F_REQUEST | flags | (0 if flags & NLM_F_DUMP == NLM_F_DUMP else NLM_F_ACK)
        if isinstance(msg, bytes):
            self.sock.send(_HDR.pack(16 + len(msg), msg_type, hflags, seq, 0) + msg)
        else:                           # a pyroute2 message (fabric, VLANs, netns ids)
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = hflags
            msg["header"]["sequence_number"] = seq
            msg["header"]["pid"] = 0
            msg.encode()
            self.sock.send(msg.data)
        out = []
        interrupted = False
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, mtype, mflags, mseq, _pid = _HDR.unpack_from(data, off)
                if length < 16:
                    break
                if mseq != seq:
                    off += (length + 3) & ~3
                    continue
                if mflags & NLM_F_DUMP_INTR:
                    interrupted = True
                if mtype == NLMSG_DONE:
                    if interrupted:
                        raise DumpInterrupted()
                    return out
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    if err == 0:
                        return out
                    raise NetlinkError(-err, _error_text(-err, data, off, length, mflags, what))
                if raw:
                    out.append(bytes(data[off:off + length]))
                else:
                    name = _DECODERS.get(mtype)
                    if name is not None:
                        m = msgclass(name)(data[off:off + length])
                        m.decode()
                        out.append(m)
                off += (length + 3) & ~3
            if not out and not (flags & NLM_F_DUMP == NLM_F_DUMP):
                continue


def _error_text(err, data, off, length, mflags, what):
    text = os.strerror(err)
    if mflags & NLM_F_ACK_TLVS:
        # error(4) + the capped request header(16), then NLMSGERR_ATTR_*
        pos = off + 16 + 4 + 16
        end = off + length
        while pos + 4 <= end:
            alen, atype = _ATTR.unpack_from(data, pos)
            if alen < 4:
                break
            if atype == 1:  # NLMSGERR_ATTR_MSG
                kmsg = bytes(data[pos + 4:pos + alen]).rstrip(b"\0").decode("utf-8", "replace")
                if kmsg:
                    text += " (kernel: %s)" % kmsg
            pos += (alen + 3) & ~3
    return "%s: %s" % (what, text) if what else text


# ------------------------------------------------------------ links

OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
# IFLA_* attribute types
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_PROTINFO, IFLA_TXQLEN, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS = 12, 13, 16, 18, 20
IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_EXT_MASK, IFLA_LINK_NETNSID = 26, 28, 29, 37
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BR_VLAN_FILTERING = 7
IFLA_BRPORT_STATE, IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 1, 4, 33


def _link_attrs(m):
    """(index, flags, {IFLA type: raw value}) of one raw RTM_NEWLINK message
    (header included)."""
    _fam, _pad, _type, index, flags, _change = _IFINFO.unpack_from(m, 16)
    return index, flags, _nested(m, 32)


def _nested_strings(data, wanted):
    """{type: text} of the string attributes ``wanted`` in a nested attribute."""
    return {k: _text(v) for k, v in _nested(data).items() if k in wanted}


class Link:
    """What the suite reads of a link (RTM_NEWLINK), parsed from the raw
    message.  ``msg`` decodes it with pyroute2 on demand, for the readers
    of nested attributes that are off a pod's path (the vxlan device's
    data) and for the tests."""

    __slots__ = ("index", "name", "kind", "mac", "mtu", "flags", "operstate", "master",
                 "peer_index", "link_netnsid", "alias", "txqlen", "linkinfo", "_raw", "_msg")

    def __init__(self, raw):
        self._raw, self._msg = raw, None
        self.index, self.flags, a = _link_attrs(raw)
        self.name = _text(a.get(IFLA_IFNAME))
        self.mac = _mac(a.get(IFLA_ADDRESS))
        self.mtu = _u32(a.get(IFLA_MTU))
        self.txqlen = _u32(a.get(IFLA_TXQLEN))
        self.master = _u32(a.get(IFLA_MASTER)) or 0
        self.peer_index = _u32(a.get(IFLA_LINK)) or 0
        nsid = a.get(IFLA_LINK_NETNSID)
        self.link_netnsid = struct.unpack_from("=i", nsid)[0] if nsid is not None and len(nsid) >= 4 else None
        op = a.get(IFLA_OPERSTATE)
        self.operstate = (OPERSTATES[op[0]] if op[0] < len(OPERSTATES) else "UNKNOWN") if op else None
        self.alias = _text(a.get(IFLA_IFALIAS))
        self.linkinfo = a.get(IFLA_LINKINFO)         # raw (brport_flags)
        self.kind = _text(_nested(self.linkinfo).get(IFLA_INFO_KIND))

    @property
    def msg(self):
        if self._msg is None:
            m = msgclass("ifinfmsg")(self._raw)
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
        spec = _nested(self._raw, 32).get(IFLA_AF_SPEC)
        conf = _nested(_nested(spec).get(AF_INET6)).get(IFLA_INET6_CONF) if spec else None
        if conf is None or len(conf) < 4 * (index + 1):
            return None
        return struct.unpack_from("=i", conf, 4 * index)[0]

    def __repr__(self):
        return "<Link %d %s kind=%s>" % (self.index, self.name, self.kind)


IFLA_INET6_CONF = 2
DEVCONF_ACCEPT_RA, DEVCONF_DISABLE_IPV6, DEVCONF_ACCEPT_DAD = 3, 26, 27
IFLA_INET_CONF = 1
IPV4_DEVCONF_ARP_NOTIFY = 22
RTM_NEWNETCONF, RTM_GETNETCONF = 80, 82
NETCONFA_IFINDEX, NETCONFA_FORWARDING = 1, 2
NETCONFA_IFINDEX_ALL = -1


def forwarding(nl, family):
    """net.ipv4.ip_forward (``AF_INET``) or net.ipv6.conf.all.forwarding
    (``AF_INET6``) of the socket's netns, read over netlink (RTM_GETNETCONF),
    or None when the kernel does not say."""
    body = struct.pack("=Bxxx", family) + _attr(NETCONFA_IFINDEX, struct.pack("=i", NETCONFA_IFINDEX_ALL))
    try:
        got = nl.request(body, RTM_GETNETCONF, what="get forwarding")
    except NetlinkError:
        return None
    for m in got:
        v = _nested(m, 20).get(NETCONFA_FORWARDING)
        if v is not None and len(v) >= 4:
            return struct.unpack_from("=i", v)[0]
    return None


def link_set_arp_notify(nl, index, on=True):
    """net.ipv4.conf.<link>.arp_notify over netlink (IFLA_AF_SPEC/AF_INET/
    IFLA_INET_CONF): no /proc open in a fresh netns (~1 ms on a busy host)."""
    conf = _attr(IFLA_INET_CONF | NLA_F_NESTED, _a_u32(IPV4_DEVCONF_ARP_NOTIFY, 1 if on else 0))
    nl.request(_ifinfo(index) + _attr(IFLA_AF_SPEC, _attr(AF_INET, conf)), RTM_NEWLINK,
               what="set arp_notify on link %d" % index)


_SKIP_STATS = _a_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


def link_get(nl, name=None, index=0):
    """The link called ``name`` (or with ``index``), or None."""
    body = _ifinfo(index) + _SKIP_STATS
    if name is not None:
        body += _a_str(IFLA_IFNAME, name)
    try:
        got = nl.request(body, RTM_GETLINK, what="get link %s" % (name or index))
    except NetlinkError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return Link(got[0]) if got else None


def links(nl):
    """Every link of the netns."""
    return [Link(m) for m in nl.request(_ifinfo() + _SKIP_STATS, RTM_GETLINK, NLM_F_DUMP,
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
        attrs += _a_u32(IFLA_MTU, mtu)
    if master is not None:
        attrs += _a_u32(IFLA_MASTER, master)
    if mac is not None:
        attrs += _a_mac(IFLA_ADDRESS, mac)
    if name is not None:
        attrs += _a_str(IFLA_IFNAME, name)
    if alias is not None:
        attrs += _a_str(IFLA_IFALIAS, alias)
    if netns_fd is not None:
        attrs += _a_u32(IFLA_NET_NS_FD, netns_fd)
    nl.request(_ifinfo(index, flags=flags, change=change) + attrs, RTM_NEWLINK,
               what=what or "set link %d" % index)


def link_del(nl, index=0, name=None):
    """Delete a link; True if it existed.  ENODEV/ENOENT mean it is gone already."""
    body = _ifinfo(index) + (_a_str(IFLA_IFNAME, name) if name is not None else b"")
    try:
        nl.request(body, RTM_DELLINK, what="delete link %s" % (name or index))
    except NetlinkError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


# ------------------------------------------------------------ addresses

IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 3, 4, 8
IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x02, 0x08, 0x40


class Addr:
    __slots__ = ("family", "address", "prefixlen", "index", "scope", "flags", "label")

    def __init__(self, raw):
        self.family, self.prefixlen, flags, self.scope, self.index = _IFADDR.unpack_from(raw, 16)
        a = _nested(raw, 24)
        self.flags = _u32(a.get(IFA_FLAGS)) or flags
        self.address = _ip(a.get(IFA_LOCAL)) or _ip(a.get(IFA_ADDRESS))
        self.label = _text(a.get(IFA_LABEL))

    @property
    def cidr(self):
        return "%s/%d" % (self.address, self.prefixlen)

    def __repr__(self):
        return "<Addr %s dev %d>" % (self.cidr, self.index)


def addrs(nl, index=0, family=AF_UNSPEC):
    """Addresses of link ``index`` (every link when 0), optionally one family."""
    got = nl.request(_IFADDR.pack(family, 0, 0, 0, 0), RTM_GETADDR, NLM_F_DUMP,
                     what="dump addresses")
    out = [Addr(a) for a in got]
    if index:
        out = [a for a in out if a.index == index]
    return out


def _addrmsg(index, address, prefixlen, broadcast=None, flags=0):
    body = (_IFADDR.pack(_family(address), prefixlen, flags, 0, index)
            + _a_ip(IFA_LOCAL, address) + _a_ip(IFA_ADDRESS, address))
    if broadcast:
        body += _a_ip(IFA_BROADCAST, broadcast)
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

RT_TABLE_MAIN = 254
RTPROT_BOOT, RTPROT_STATIC = 3, 4
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15


class Route:
    __slots__ = ("family", "dst", "dst_len", "gateway", "oif", "table", "priority", "scope",
                 "proto", "type", "prefsrc", "flags")

    def __init__(self, raw):
        (self.family, self.dst_len, _src_len, _tos, table, self.proto, self.scope, self.type,
         self.flags) = _RTMSG.unpack_from(raw, 16)
        a = _nested(raw, 28)
        self.dst = _ip(a.get(RTA_DST))
        self.gateway = _ip(a.get(RTA_GATEWAY))
        self.oif = _u32(a.get(RTA_OIF)) or 0
        self.table = _u32(a.get(RTA_TABLE)) or table
        self.priority = _u32(a.get(RTA_PRIORITY)) or 0
        self.prefsrc = _ip(a.get(RTA_PREFSRC))

    @property
    def cidr(self):
        if self.dst is None:
            return "0.0.0.0/0" if self.family == AF_INET else "::/0"
        return "%s/%d" % (self.dst, self.dst_len)

    def __repr__(self):
        return "<Route %s via %s dev %d>" % (self.cidr, self.gateway, self.oif)


def _split_cidr(cidr):
    addr, _, plen = cidr.partition("/")
    fam = _family(addr)
    return fam, addr, int(plen) if plen else (128 if fam == AF_INET6 else 32)


def routes(nl, family=AF_UNSPEC, table=RT_TABLE_MAIN):
    """Routes of ``table`` (main by default)."""
    got = nl.request(_RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), RTM_GETROUTE, NLM_F_DUMP,
                     what="dump routes")
    out = [Route(r) for r in got]
    return [r for r in out if table is None or r.table == table]


def route_get(nl, address):
    """The route the kernel would use to reach ``address`` (``ip route get``)."""
    fam = _family(address)
    body = _RTMSG.pack(fam, 128 if fam == AF_INET6 else 32, 0, 0, 0, 0, 0, 0, 0) + _a_ip(RTA_DST, address)
    got = nl.request(body, RTM_GETROUTE, what="route get %s" % address)
    return Route(got[0]) if got else None


def _routemsg(dst, gateway=None, oif=0, table=RT_TABLE_MAIN, priority=0, scope=None,
              onlink=False, proto=RTPROT_BOOT, prefsrc=None):
    fam, addr, plen = _split_cidr(dst)
    if scope is None:
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    body = (_RTMSG.pack(fam, plen, 0, 0, table if table < 256 else 252, proto, scope, RTN_UNICAST,
                        RTNH_F_ONLINK if onlink else 0)
            + _a_u32(RTA_TABLE, table))
    if plen:
        body += _a_ip(RTA_DST, addr)
    if gateway:
        body += _a_ip(RTA_GATEWAY, gateway)
    if oif:
        body += _a_u32(RTA_OIF, oif)
    if priority:
        body += _a_u32(RTA_PRIORITY, priority)
    if prefsrc:
        body += _a_ip(RTA_PREFSRC, prefsrc)
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


# ---- vxlan links, neighbours and fdb entries (the flannel fabric)
#
# What flanneld's vxlan backend asks of the kernel: a VXLAN device bound to
# the underlay, and per peer a permanent neighbour (the peer's VTEP address
# -> its VTEP MAC) and a forwarding entry (that MAC -> the peer's public IP,
# family AF_BRIDGE with NTF_SELF: the vxlan device's own fdb, not a bridge's).
# The vxlan device is made and read with pyroute2: once per node, never on
# a pod's path.

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NDA_DST, NDA_LLADDR = 1, 2
_NEIGH_REPLACE = NLM_F_CREATE | NLM_F_REPLACE


class VxlanInfo:
    """The IFLA_INFO_DATA of a vxlan link: what decides if it can be reused."""

    __slots__ = ("vni", "local", "link", "port", "learning")

    def __init__(self, data):
        self.vni = data.get_attr("IFLA_VXLAN_ID")
        self.local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
        self.link = data.get_attr("IFLA_VXLAN_LINK") or 0
        self.port = data.get_attr("IFLA_VXLAN_PORT")
        self.learning = bool(data.get_attr("IFLA_VXLAN_LEARNING"))

    def __repr__(self):
        return "<vxlan id %s local %s dev %d dstport %s%s>" % (
            self.vni, self.local, self.link, self.port, "" if self.learning else " nolearning")


def vxlan_info(link):
    """VxlanInfo of ``link`` (a Link), or None when it is not a vxlan device."""
    if link is None or link.kind != "vxlan":
        return None
    info = link.msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return VxlanInfo(data) if data is not None else None


def vxlan_add(nl, name, vni, local, underlay_index, port, mtu, mac, learning=False):
    """Create a vxlan device (down): ``ip link add NAME type vxlan id VNI local
    LOCAL dev UNDERLAY dstport PORT [no]learning`` with MTU and MAC set."""
    data = [("IFLA_VXLAN_ID", vni),
            ("IFLA_VXLAN_LOCAL6" if ":" in local else "IFLA_VXLAN_LOCAL", local),
            ("IFLA_VXLAN_LINK", underlay_index),
            ("IFLA_VXLAN_PORT", port),
            ("IFLA_VXLAN_LEARNING", 1 if learning else 0)]
    m = msgclass("ifinfmsg")()
    m["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", mac),
                  ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"),
                                               ("IFLA_INFO_DATA", {"attrs": data})]})]
    nl.request(m, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
               what="add vxlan link %s (id %d local %s dev %d)" % (name, vni, local, underlay_index))


class Neigh:
    """A neighbour (family AF_INET/AF_INET6) or fdb entry (AF_BRIDGE)."""

    __slots__ = ("family", "index", "dst", "lladdr", "state", "flags")

    def __init__(self, raw):
        self.family, _p1, _p2, self.index, self.state, self.flags, _t = _NDMSG.unpack_from(raw, 16)
        a = _nested(raw, 28)
        self.dst = _ip(a.get(NDA_DST))
        self.lladdr = _mac(a.get(NDA_LLADDR))

    def __repr__(self):
        return "<Neigh %s lladdr %s dev %d state 0x%x>" % (self.dst, self.lladdr, self.index, self.state)


def _neighmsg(family, index, attrs, state=NUD_PERMANENT, flags=0):
    return _NDMSG.pack(family, 0, 0, index, state, flags, RTN_UNICAST) + attrs


def neighs(nl, index=0, family=AF_UNSPEC):
    """Neighbour entries (of link ``index`` when given) of ``family``: AF_BRIDGE
    gives fdb entries, AF_UNSPEC only the IPv4 and IPv6 neighbours."""
    got = nl.request(_NDMSG.pack(family, 0, 0, 0, 0, 0, 0), RTM_GETNEIGH, NLM_F_DUMP,
                     what="dump neighbours")
    out = [Neigh(n) for n in got]
    return [n for n in out if not index or n.index == index]


def neigh_replace(nl, index, dst, lladdr):
    """``ip neigh replace DST lladdr LLADDR dev INDEX nud permanent``."""
    nl.request(_neighmsg(_family(dst), index, _a_ip(NDA_DST, dst) + _a_mac(NDA_LLADDR, lladdr)),
               RTM_NEWNEIGH, _NEIGH_REPLACE,
               what="replace neighbour %s lladdr %s dev %d" % (dst, lladdr, index))


def neigh_del(nl, index, dst):
    """Delete a neighbour entry; True if it existed."""
    try:
        nl.request(_neighmsg(_family(dst), index, _a_ip(NDA_DST, dst), state=0), RTM_DELNEIGH,
                   what="delete neighbour %s dev %d" % (dst, index))
    except NetlinkError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return False
        raise
    return True


def _fdbmsg(index, lladdr, dst):
    return _neighmsg(AF_BRIDGE, index, _a_mac(NDA_LLADDR, lladdr) + _a_ip(NDA_DST, dst),
                     flags=NTF_SELF)


def fdb_replace(nl, index, lladdr, dst):
    """``bridge fdb replace LLADDR dev INDEX dst DST self permanent``."""
    nl.request(_fdbmsg(index, lladdr, dst), RTM_NEWNEIGH, _NEIGH_REPLACE,
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


# ---- tuning: link attributes the tuning plugin reads and sets

IFF_ALLMULTI = 0x200


def link_txqlen(link):
    """The transmit queue length of a Link (IFLA_TXQLEN)."""
    return link.txqlen


def link_allmulti(link):
    return bool(link.flags & IFF_ALLMULTI)


def link_set_allmulti(nl, index, on, what=None):
    nl.request(_ifinfo(index, flags=IFF_ALLMULTI if on else 0, change=IFF_ALLMULTI),
               RTM_NEWLINK, what=what or "set allmulticast %s on link %d" % ("on" if on else "off", index))


def link_set_txqlen(nl, index, qlen, what=None):
    nl.request(_ifinfo(index) + _a_u32(IFLA_TXQLEN, qlen), RTM_NEWLINK,
               what=what or "set txqueuelen %d on link %d" % (qlen, index))


# ---- bridges, veth pairs, bridge ports and per-link address dumps (bridge plugin)

NETLINK_GET_STRICT_CHK = 12
RTEXT_FILTER_BRVLAN = 2
BRIDGE_FLAGS_MASTER = 1
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 0x2, 0x4


def _linkinfo(kind, data=b""):
    info = _a_str(IFLA_INFO_KIND, kind)
    if data:
        info += _attr(IFLA_INFO_DATA, data)
    return _attr(IFLA_LINKINFO, info)


def bridge_add(nl, name, mtu=0, mac=None, vlan_filtering=False):
    """Create bridge ``name``, up; True if this call created it.

    EEXIST is not an error (a parallel ADD created it first, or a link of
    that name exists): the caller re-reads the link and checks its kind.
    A ``mac`` given here is pinned: the kernel then never moves the
    bridge's MAC to follow the lowest port MAC.
    """
    attrs = _a_str(IFLA_IFNAME, name)
    if mtu:
        attrs += _a_u32(IFLA_MTU, mtu)
    if mac:
        attrs += _a_mac(IFLA_ADDRESS, mac)
    attrs += _linkinfo("bridge", _a_u8(IFLA_BR_VLAN_FILTERING, 1) if vlan_filtering else b"")
    try:
        nl.request(_ifinfo(flags=IFF_UP, change=IFF_UP) + attrs, RTM_NEWLINK,
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
    peer = _ifinfo() + _a_str(IFLA_IFNAME, peer_name)     # VETH_INFO_PEER: an ifinfomsg + attrs
    if mtu:
        peer += _a_u32(IFLA_MTU, mtu)
    if peer_mac:
        peer += _a_mac(IFLA_ADDRESS, peer_mac)
    if peer_netns_fd is not None:
        peer += _a_u32(IFLA_NET_NS_FD, peer_netns_fd)
    attrs = _a_str(IFLA_IFNAME, name)
    if mtu:
        attrs += _a_u32(IFLA_MTU, mtu)
    if master:
        attrs += _a_u32(IFLA_MASTER, master)
    attrs += _linkinfo("veth", _attr(VETH_INFO_PEER, peer))
    flags = IFF_UP if up else 0
    nl.request(_ifinfo(flags=flags, change=flags) + attrs, RTM_NEWLINK,
               NLM_F_CREATE | NLM_F_EXCL, what="create veth %s with peer %s" % (name, peer_name))


def brport_set(nl, index, hairpin=None, isolated=None):
    """Set bridge-port flags of link ``index``: RTM_SETLINK for AF_BRIDGE
    with a nested IFLA_PROTINFO (the kernel treats a non-nested one as the
    old STP-state format)."""
    info = b""
    if hairpin is not None:
        info += _a_u8(IFLA_BRPORT_MODE, 1 if hairpin else 0)
    if isolated is not None:
        info += _a_u8(IFLA_BRPORT_ISOLATED, 1 if isolated else 0)
    if not info:
        return
    nl.request(_ifinfo(index, family=AF_BRIDGE) + _attr(IFLA_PROTINFO | NLA_F_NESTED, info),
               RTM_SETLINK, what="set bridge port flags of link %d" % index)


BR_STATE_FORWARDING = 3


def brport_flags(link):
    """{'hairpin': bool, 'isolated': bool, 'state': int} of a bridge port read
    with link_get (IFLA_INFO_SLAVE_DATA), or None when ``link`` is not one."""
    info = _nested(link.linkinfo)
    data = info.get(IFLA_INFO_SLAVE_DATA)
    if data is None or _text(info.get(IFLA_INFO_SLAVE_KIND)) != "bridge":
        return None
    port = _nested(data)
    u8 = lambda k: port[k][0] if port.get(k) else None  # noqa: E731
    return {"hairpin": bool(u8(IFLA_BRPORT_MODE)), "isolated": bool(u8(IFLA_BRPORT_ISOLATED)),
            "state": u8(IFLA_BRPORT_STATE)}


# VLAN filtering: pyroute2 packs and reads these (only VLAN configurations
# pay for loading it)


def _vlan_request(nl, index, msg_type, entries, what):
    spec = [("IFLA_BRIDGE_FLAGS", BRIDGE_FLAGS_MASTER)]
    for vid, flags in entries:
        spec.append(("IFLA_BRIDGE_VLAN_INFO", {"flags": flags, "vid": vid}))
    m = msgclass("ifinfmsg")()
    m["family"] = AF_BRIDGE
    m["index"] = index
    m["attrs"] = [("IFLA_AF_SPEC", {"attrs": spec})]
    nl.request(m, msg_type, what=what)


def bridge_vlan_add(nl, index, vid, pvid=False, untagged=False):
    """``bridge vlan add dev <index> vid <vid> [pvid] [untagged] master``."""
    flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
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
    m = msgclass("ifinfmsg")()
    m["family"] = AF_BRIDGE
    m["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_BRVLAN)]
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
    got = nl.request(_IFADDR.pack(family, 0, 0, 0, index), RTM_GETADDR, NLM_F_DUMP,
                     what="dump addresses of link %d" % index)
    return [a for a in map(Addr, got) if a.index == index]


def port_aliases(nl, master):
    """[(index, name, alias)] of the links enslaved to ``master``, from a
    dump the kernel filters by master."""
    got = nl.request(_ifinfo() + _a_u32(IFLA_MASTER, master) + _SKIP_STATS, RTM_GETLINK,
                     NLM_F_DUMP, what="ports of link %d" % master)
    out = []
    for m in got:
        index, _flags, attrs = _link_attrs(m)
        if _u32(attrs.get(IFLA_MASTER)) != master:
            continue
        out.append((index, _text(attrs.get(IFLA_IFNAME)) or "", _text(attrs.get(IFLA_IFALIAS)) or None))
    return out


# ---- whois and doctor: one raw link dump for the whole node, netns ids
#
# ``pycni whois`` maps every host veth to its pod the way the seed article
# does by hand (``ip link`` shows ``vethX@ifN link-netnsid M``, ``ethtool -S``
# gives the peer ifindex): IFLA_LINK is the peer's ifindex, IFLA_LINK_NETNSID
# the id *this* netns gave the peer's netns, and RTM_GETNSID turns a netns
# file (a name under /var/run/netns, /proc/<pid>/ns/net) into that same id.
# Only the attributes it needs are decoded, from one dump per run.

RTM_NEWNSID, RTM_GETNSID = 88, 90


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
    b.index, b.flags, raw = _link_attrs(m)
    b.name, b.alias = _text(raw.get(3)), _text(raw.get(20)) or None
    b.mtu, b.master, b.peer_index = (_u32(raw.get(k)) or 0 for k in (4, 10, 5))
    nsid = raw.get(37)
    b.link_netnsid = struct.unpack_from("=i", nsid)[0] if nsid is not None and len(nsid) >= 4 else None
    op = raw.get(16)
    b.operstate = OPERSTATES[op[0]] if op and op[0] < len(OPERSTATES) else "UNKNOWN"
    mac = raw.get(1)
    b.mac = ":".join("%02x" % c for c in mac) if mac is not None and len(mac) == 6 else None
    info = _nested_strings(raw.get(18) or b"", (1, 4))
    b.kind, b.slave_kind = info.get(1), info.get(4)
    return b


def link_index(nl):
    """Every link of the netns as LinkBrief, from one dump."""
    return [parse_link_brief(m) for m in nl.request(_ifinfo() + _SKIP_STATS, RTM_GETLINK,
                                                    NLM_F_DUMP, what="links")]


NETNSA_NSID, NETNSA_FD = 1, 3


def netns_id(nl, fd):
    """The id this socket's netns gave the netns open on ``fd``, or None
    when it gave none (no link here points into that netns)."""
    try:   # rtgenmsg (1 byte, padded to 4), NETNSA_FD
        got = nl.request(b"\0\0\0\0" + _a_u32(NETNSA_FD, fd), RTM_GETNSID, what="get netns id")
    except NetlinkError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT, errno.EBADF):
            return None
        raise
    if not got:
        return None
    v = _nested(got[0], 20).get(NETNSA_NSID)
    if v is None or len(v) < 4:
        return None
    (nsid,) = struct.unpack_from("=i", v)
    return nsid if nsid >= 0 else None


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
