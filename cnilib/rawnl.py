"""Three small netlink conversations without pyroute2, for the chained plugins.

portmap and firewall run on every pod start and need the kernel for only
three questions: which interface routes to the container (route_localnet),
is nf_tables there (backend choice), and which UDP conntrack entries to
drop.  cnilib.netlink answers the first one too, but importing it loads
pyroute2's message classes (~23 ms, a third of the portmap budget); these
hand-packed messages cost well under a millisecond.  Everything else that
talks to the kernel still goes through cnilib.netlink.

All three work in the calling thread's network namespace.
"""

import os
import struct

import _socket

AF_NETLINK = 16
NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 1, 4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF

_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_NFGEN = struct.Struct("=BBH")


class NetlinkError(OSError):
    pass


def _attrs(data, off=0, end=None):
    """{type: payload} of a run of netlink attributes (first one wins)."""
    out = {}
    end = len(data) if end is None else end
    while off + 4 <= end:
        alen, atype = _ATTR.unpack_from(data, off)
        if alen < 4:
            break
        out.setdefault(atype & NLA_TYPE_MASK, (off, alen))
        off += (alen + 3) & ~3
    return out


def _attr(atype, payload):
    pad = (4 - len(payload) % 4) % 4
    return _ATTR.pack(4 + len(payload), atype) + payload + b"\0" * pad


class _Sock:
    def __init__(self, proto):
        self.sock = _socket.socket(AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, proto)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def request(self, mtype, flags, payload, what):
        """Send one message; return [(type, bytes)] of the reply up to DONE/ACK."""
        self.seq += 1
        seq = self.seq
        self.sock.send(_HDR.pack(16 + len(payload), mtype, NLM_F_REQUEST | flags, seq, 0) + payload)
        out = []
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, rtype, _f, rseq, _pid = _HDR.unpack_from(data, off)
                if length < 16:
                    break
                if rseq == seq:
                    if rtype == NLMSG_DONE:
                        return out
                    if rtype == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, off + 16)
                        if err == 0:
                            return out
                        raise NetlinkError(-err, "%s: %s" % (what, os.strerror(-err)))
                    out.append((rtype, data[off + 16:off + length]))
                    if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                        return out
                off += (length + 3) & ~3


# ---- routes

def route_oif_name(address, family):
    """Name of the interface the kernel routes ``address`` through, or None."""
    af = _socket.AF_INET6 if family == 6 else _socket.AF_INET
    raw = _socket.inet_pton(af, address)
    rtmsg = struct.pack("=BBBBBBBBI", af, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0)
    try:
        with _Sock(NETLINK_ROUTE) as s:
            got = s.request(26, 0, rtmsg + _attr(1, raw), "route get %s" % address)  # RTM_GETROUTE
    except OSError:
        return None
    for _t, body in got:
        attrs = _attrs(body, 12)
        if 4 in attrs:                                                     # RTA_OIF
            off, _l = attrs[4]
            (oif,) = struct.unpack_from("=I", body, off + 4)
            try:
                return _socket.if_indextoname(oif)
            except OSError:
                return None
    return None


# ---- nf_tables

def nftables_available():
    """True when the kernel answers nf_tables' generation query."""
    try:
        with _Sock(NETLINK_NETFILTER) as s:
            got = s.request((10 << 8) | 16, NLM_F_ACK, _NFGEN.pack(0, 0, 0), "nftables probe")
    except OSError:
        return False
    return bool(got)


# ---- conntrack
CTA_TUPLE_ORIG, CTA_ZONE = 1, 18
CTA_TUPLE_PROTO = 2
CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 3
IPPROTO = {"tcp": 6, "udp": 17, "sctp": 132}


def _orig_proto_dport(body):
    """(proto number, dst port) of a conntrack message's original tuple."""
    attrs = _attrs(body, 4)
    if CTA_TUPLE_ORIG not in attrs:
        return None, None, attrs
    off, alen = attrs[CTA_TUPLE_ORIG]
    tup = _attrs(body, off + 4, off + alen)
    if CTA_TUPLE_PROTO not in tup:
        return None, None, attrs
    poff, plen = tup[CTA_TUPLE_PROTO]
    proto_attrs = _attrs(body, poff + 4, poff + plen)
    proto = port = None
    if CTA_PROTO_NUM in proto_attrs:
        proto = body[proto_attrs[CTA_PROTO_NUM][0] + 4]
    if CTA_PROTO_DST_PORT in proto_attrs:
        (port,) = struct.unpack_from("!H", body, proto_attrs[CTA_PROTO_DST_PORT][0] + 4)
    return proto, port, attrs


def conntrack_count():
    """Entries in this netns's conntrack table (None when unknown)."""
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_count", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def conntrack_delete_dports(families, proto, ports):
    """Delete every conntrack entry of ``families`` (4/6) whose original
    direction goes to one of ``ports`` over ``proto``; returns the count.

    One dump (of both families at once when both are asked for: the kernel
    walks its whole table per dump, ~5 ms on a busy host), then one delete
    per match keyed by the entry's own original tuple and zone, the way
    ``conntrack -D`` does.  An empty table costs no dump at all.
    """
    ports = set(ports)
    fams = set(families)
    if not ports or not fams or conntrack_count() == 0:
        return 0
    afs = {4: _socket.AF_INET, 6: _socket.AF_INET6}
    dump_af = afs[next(iter(fams))] if len(fams) == 1 else 0
    wanted = {afs[f] for f in fams}
    num = IPPROTO[proto]
    deleted = 0
    with _Sock(NETLINK_NETFILTER) as s:
        entries = s.request((1 << 8) | 1, NLM_F_DUMP, _NFGEN.pack(dump_af, 0, 0), "conntrack dump")
        victims = []
        for _t, body in entries:
            af = body[0]
            if af not in wanted:
                continue
            p, port, attrs = _orig_proto_dport(body)
            if p == num and port in ports:
                off, alen = attrs[CTA_TUPLE_ORIG]
                key = bytes(body[off:off + ((alen + 3) & ~3)])
                if CTA_ZONE in attrs:
                    zoff, zlen = attrs[CTA_ZONE]
                    key += bytes(body[zoff:zoff + ((zlen + 3) & ~3)])
                victims.append((af, key))
        for af, key in victims:
            try:
                s.request((1 << 8) | 2, NLM_F_ACK, _NFGEN.pack(af, 0, 0) + key, "conntrack delete")
                deleted += 1
            except NetlinkError as exc:
                if exc.errno != 2:      # ENOENT: expired meanwhile
                    raise
    return deleted
