"""Netlink: the one transport every kernel request of the suite goes over.

One socket class for both families the suite speaks: rtnetlink (links,
addresses, routes, neighbours, bridge ports: cnilib.kernel.link, .route,
.brport, .vxlan) and netfilter (nf_tables and conntrack: .nftables,
.conntrack).  Here: the message header, packing and parsing attributes, the
receive loop (one request, or a batch), errors with the kernel's
extended-ack text, and the protocol constants those modules share.  The
constants live here and not beside their users because the users share them
(a bridge port is a link, an fdb entry a neighbour): spread over the object
modules, those would import each other in a circle.

Every request on a pod's path is packed and parsed by hand over a plain
synchronous socket:

* importing pyroute2's message classes costs ~25 ms of a ~40 ms exec
  (they pull in logging, re, enum and multiprocessing), and its encoder
  and full decode ~0.2 ms a message; the hand-packed requests cost a few
  microseconds and import nothing (``python -m bench.importtime``);
* pyroute2 0.9's IPRoute runs an asyncio loop per call and forks a helper
  (exec'ing ldconfig) to reach another netns; a socket opened after
  ``setns`` reaches it for ~0.5 ms instead.

This is the one module that imports pyroute2, and only on demand: for the
VXLAN device of the flannel fabric, bridge VLAN filtering, netns ids, and
``Link.msg`` (a full decode, for diagnostics and for the tests, which hold
every hand-made message and parse to pyroute2's decode of the same bytes:
tests/unit/test_netlink_pack.py, test_nfnl_pack.py).  A package stub skips
pyroute2's __init__ (~60 modules, 143 ms) and loads only the message
classes; pyroute2 is pinned (see pyproject.toml) because the stub relies on
its package layout, and tests/unit/test_imports.py checks it.

Errors are ``NetlinkError`` (an OSError: compare ``.errno`` with the errno
module, never with numbers); the kernel's extended-ack text is kept in the
message.  Every socket works in the network namespace that was current when
it was opened.
"""

import _socket
import errno
import os
import struct
import sys

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


def pyroute2_class(module, name):
    """Class ``name`` of ``pyroute2.netlink.<module>``, loaded through the
    stub on first use (``"nfnetlink.nftsocket", "nft_set_elem_list_msg"``)."""
    _load_pyroute2()
    mod = __import__("pyroute2.netlink." + module, fromlist=[name])
    return getattr(mod, name)


def msgclass(name):
    """pyroute2's rtnetlink message class ``name`` (ifinfmsg, ifaddrmsg,
    rtmsg, ndmsg, nsidmsg), loaded through the stub on first use."""
    return pyroute2_class("rtnl." + name, name)


# ------------------------------------------------------------ protocol constants

AF_UNSPEC, AF_INET, AF_INET6, AF_BRIDGE, AF_NETLINK = 0, 2, 10, 7, 16
NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
SOL_SOCKET, SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 1, 7, 8, 32, 33
# what one ack costs in a socket's receive buffer (its skb's truesize): a
# NLMSG_ERROR of 36 bytes (NETLINK_CAP_ACK) sits in a ~768-byte buffer;
# rounded up for an error's extended-ack text
ACK_COST = 1024

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 1, 2, 4
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NLM_F_ACK_TLVS = 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

# rtnetlink message types
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWNETCONF, RTM_GETNETCONF = 80, 82
RTM_NEWNSID, RTM_GETNSID = 88, 90

# links (ifinfomsg): flags, IFLA_* attributes and what nests in them
IFF_UP, IFF_PROMISC, IFF_ALLMULTI = 0x1, 0x100, 0x200
RTEXT_FILTER_VF, RTEXT_FILTER_BRVLAN, RTEXT_FILTER_SKIP_STATS = 1, 2, 8
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_PROTINFO, IFLA_TXQLEN, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS = 12, 13, 16, 18, 20
IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_EXT_MASK, IFLA_LINK_NETNSID = 26, 28, 29, 37
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_INET_CONF, IFLA_INET6_CONF = 1, 2
IPV4_DEVCONF_ARP_NOTIFY = 22
DEVCONF_ACCEPT_RA, DEVCONF_DISABLE_IPV6, DEVCONF_ACCEPT_DAD = 3, 26, 27
NETCONFA_IFINDEX, NETCONFA_FORWARDING = 1, 2
NETCONFA_IFINDEX_ALL = -1
NETNSA_NSID, NETNSA_FD = 1, 3
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

# bridges, veth pairs, bridge ports
VETH_INFO_PEER = 1
IFLA_BR_VLAN_FILTERING = 7
IFLA_BRPORT_STATE, IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 1, 4, 33
BR_STATE_FORWARDING = 3
BRIDGE_FLAGS_MASTER = 1
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 0x2, 0x4

# addresses (ifaddrmsg)
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 3, 4, 8
IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x02, 0x08, 0x40

# routes (rtmsg)
RT_TABLE_MAIN = 254
RTPROT_BOOT, RTPROT_STATIC = 3, 4
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15

# neighbours and fdb entries (ndmsg)
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NDA_DST, NDA_LLADDR = 1, 2

# nfnetlink: the subsystem is the high byte of the message type
NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_NFTABLES = 1, 10

# the fixed headers
HDR = struct.Struct("=IHHII")           # nlmsghdr: length, type, flags, seq, pid
ATTR = struct.Struct("=HH")             # nlattr: length, type
IFINFO = struct.Struct("=BBHiII")       # ifinfomsg: family, pad, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")        # ifaddrmsg: family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")     # rtmsg: family, dst_len, src_len, tos, table,
#                                         protocol, scope, type, flags
NDMSG = struct.Struct("=BBHiHBB")       # ndmsg: family, pad, pad, ifindex, state, flags, type
NFGEN = struct.Struct("!BBH")           # nfgenmsg: family, version, res_id (big-endian)

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


def attr(atype, payload):
    return ATTR.pack(4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def nest(atype, payload):
    """A nested attribute, flagged as such (NLA_F_NESTED)."""
    return attr(atype | NLA_F_NESTED, payload)


def attr_u8(atype, v):
    return attr(atype, struct.pack("=B", v))


def attr_u32(atype, v):
    return attr(atype, struct.pack("=I", v))


def attr_str(atype, text):
    return attr(atype, text.encode() + b"\0")


def attr_mac(atype, mac):
    return attr(atype, bytes.fromhex(mac.replace(":", "").replace("-", "")))


def addr_family(address):
    return AF_INET6 if ":" in address else AF_INET


def attr_ip(atype, address):
    return attr(atype, _socket.inet_pton(addr_family(address), address))


def ifinfo(index=0, family=AF_UNSPEC, flags=0, change=0):
    return IFINFO.pack(family, 0, 0, index, flags, change)


SKIP_STATS = attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


# ------------------------------------------------------------ parsing


def walk_attrs(data, off=0, end=None):
    """(type, offset, length) of each attribute in ``data[off:end]``; the
    type without its flag bits, the length with the 4-byte header."""
    end = len(data or b"") if end is None else end
    while off + 4 <= end:
        alen, atype = ATTR.unpack_from(data, off)
        if alen < 4:
            break
        yield atype & NLA_TYPE_MASK, off, alen
        off += (alen + 3) & ~3


def attr_spans(data, off=0, end=None):
    """{type: (offset, length)} of a run of attributes (the first one wins):
    for parsers that read values in place, or keep an attribute's bytes."""
    out = {}
    for atype, pos, alen in walk_attrs(data, off, end):
        out.setdefault(atype, (pos, alen))
    return out


def parse_attrs(data, off=0):
    """{type: raw value} of a run of attributes (a later duplicate wins, as
    in pyroute2's get_attr)."""
    return {atype: data[pos + 4:pos + alen] for atype, pos, alen in walk_attrs(data, off)}


def get_text(v):
    return bytes(v).split(b"\0", 1)[0].decode("utf-8", "replace") if v is not None else None


def get_u32(v):
    return struct.unpack_from("=I", v)[0] if v is not None and len(v) >= 4 else None


def get_s32(v):
    return struct.unpack_from("=i", v)[0] if v is not None and len(v) >= 4 else None


def get_ip(v):
    """Text of an address attribute (4 or 16 bytes), or None."""
    if v is None:
        return None
    if len(v) == 4:
        return _socket.inet_ntop(AF_INET, bytes(v))
    if len(v) == 16:
        return _socket.inet_ntop(AF_INET6, bytes(v))
    return None


def get_mac(v):
    return ":".join("%02x" % c for c in v) if v is not None else None


def link_attrs(m):
    """(index, flags, {IFLA type: raw value}) of one raw RTM_NEWLINK message
    (header included)."""
    _fam, _pad, _type, index, flags, _change = IFINFO.unpack_from(m, 16)
    return index, flags, parse_attrs(m, 32)


def _messages(data):
    """(offset, length, type, flags, seq) of each message of one datagram."""
    off = 0
    while off + 16 <= len(data):
        length, mtype, mflags, mseq, _pid = HDR.unpack_from(data, off)
        if length < 16:
            break
        yield off, length, mtype, mflags, mseq
        off += (length + 3) & ~3


def _error_text(err, data, off, length, mflags, what):
    text = os.strerror(err)
    if mflags & NLM_F_ACK_TLVS:
        # error(4) + the capped request header(16), then NLMSGERR_ATTR_*
        for atype, pos, alen in walk_attrs(data, off + 16 + 4 + 16, off + length):
            if atype == NLMSGERR_ATTR_MSG:
                kmsg = bytes(data[pos + 4:pos + alen]).rstrip(b"\0").decode("utf-8", "replace")
                if kmsg:
                    text += " (kernel: %s)" % kmsg
    return "%s: %s" % (what, text) if what else text


# ------------------------------------------------------------ the socket


class Netlink:
    """A netlink socket (rtnetlink unless ``proto`` says otherwise) in the
    netns that was current when it was opened.

    ``Netlink.in_netns(fd)`` opens one inside another netns and returns to
    the caller's netns at once: the socket stays bound to the netns it was
    created in.
    """

    def __init__(self, proto=NETLINK_ROUTE):
        self.proto = proto
        self.sock = _socket.socket(AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, proto)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)   # acks without the request echoed
        except OSError:
            pass
        self.sock.bind((0, 0))
        self.seq = 0

    def fit(self, size, acks):
        """Size the socket's buffers for one datagram of ``size`` bytes
        whose ``acks`` answers all queue before it is read (the kernel
        runs a batch inside send()).  The defaults (net.core.wmem_default,
        rmem_default: 208 KiB) hold ~260 acks: past that the acks overflow
        (ENOBUFS, the batch's outcome lost) and past 208 KiB the datagram
        itself is refused (EMSGSIZE).  The *FORCE options (CAP_NET_ADMIN,
        which every batch needs anyway) pass the sysctl maxima."""
        for opt, force, want in ((SO_SNDBUF, SO_SNDBUFFORCE, size + 4096),
                                 (SO_RCVBUF, SO_RCVBUFFORCE, acks * ACK_COST + 65536)):
            if self.sock.getsockopt(SOL_SOCKET, opt) >= 2 * want:      # the kernel doubles it
                continue
            try:
                self.sock.setsockopt(SOL_SOCKET, force, want)
            except OSError:
                self.sock.setsockopt(SOL_SOCKET, opt, want)

    @classmethod
    def in_netns(cls, fd):
        from cnilib.kernel import netns  # here: nf_tables users never need it
        with netns.Enter(fd):
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

    # -- one request ----------------------------------------------------
    def request(self, msg, msg_type, flags=0, what="", raw=True):
        """Send ``msg`` (the body as bytes, or a pyroute2 message) and
        collect the reply.

        Returns each message of a dump or an echo as bytes, header included
        (with ``raw=False``, decoded by pyroute2), [] for a plain ACK.
        Raises NetlinkError for an error reply.  A dump the kernel marks
        inconsistent (it changed meanwhile) is asked again.
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
            self.sock.send(HDR.pack(16 + len(msg), msg_type, hflags, seq, 0) + msg)
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
            for off, length, mtype, mflags, mseq in _messages(data):
                if mseq != seq:
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

    # -- a batch --------------------------------------------------------
    def batch(self, msgs, what):
        """Send ``msgs``, each (type, flags, body, name), in one datagram
        and wait for the answer to every one that asks for an ack
        (NLM_F_ACK).  An error on the first message (a batch's begin marker)
        means the kernel refused the whole batch: nothing else will come.
        Raises NetlinkError for the first error, named by its message's
        ``name``; a socket timeout is an error too (``what`` names it).
        """
        out, names, pending = [], {}, set()
        for mtype, flags, body, name in msgs:
            self.seq += 1
            out.append(HDR.pack(16 + len(body), mtype, flags, self.seq, 0) + body)
            names[self.seq] = name
            if flags & NLM_F_ACK:
                pending.add(self.seq)
        first = self.seq - len(msgs) + 1
        data = b"".join(out)
        self.fit(len(data), len(pending))
        try:
            self.sock.send(data)
        except OSError as exc:
            raise NetlinkError(getattr(exc, "errno", None) or errno.EIO,
                               "%s: the kernel refused the batch (%d messages, %d bytes): %s"
                               % (what, len(msgs), len(data), exc)) from exc
        error = None
        while pending:
            try:
                data = self.sock.recv(1 << 20)
            except OSError as exc:
                raise NetlinkError(getattr(exc, "errno", None) or errno.ETIMEDOUT,
                                   "%s: no answer from the kernel: %s" % (what, exc)) from exc
            for off, length, mtype, mflags, mseq in _messages(data):
                if mtype != NLMSG_ERROR:
                    continue
                (err,) = struct.unpack_from("=i", data, off + 16)
                if err and error is None:
                    error = (-err, _error_text(-err, data, off, length, mflags, names.get(mseq) or what))
                pending.discard(mseq)
                if mseq == first:
                    pending.clear()
        if error is not None:
            raise NetlinkError(*error)
