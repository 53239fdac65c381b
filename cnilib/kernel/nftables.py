"""Netlink for the chained plugins: nf_tables, conntrack, one route lookup.

portmap and firewall run on every pod start and need the kernel for:
which interface routes to the container (route_localnet), is nf_tables
there (backend choice), which UDP conntrack entries to drop, and the
elements of the suite's shared nftables tables.  Hand-packed messages on
a plain socket, as cnilib.kernel.netlink does for rtnetlink: they cost well under
a millisecond, where a library's message classes cost ~25 ms to import.

All of it works in the calling thread's network namespace.
"""

import _socket
import os
import struct

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
        self.proto = proto
        self.sock = _socket.socket(AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, proto)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self):
        if self.proto == NETLINK_NETFILTER and _DELETED:
            close_later(self.sock)      # see close_later in the nf_tables section
        else:
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


def conntrack_delete_dports(families, proto, ports, sock=None):
    """Delete every conntrack entry of ``families`` (4/6) whose original
    direction goes to one of ``ports`` over ``proto``; returns the count.

    One dump (of both families at once when both are asked for: the kernel
    walks its whole table per dump, ~5 ms on a busy host), then one delete
    per match keyed by the entry's own original tuple and zone, the way
    ``conntrack -D`` does.  An empty table costs no dump at all.  ``sock``:
    an open NETLINK_NETFILTER _Sock to use (NfTables.s) instead of a new one.
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
    own = sock is None
    s = _Sock(NETLINK_NETFILTER) if own else sock
    try:
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
    finally:
        if own:
            s.close()
    return deleted


# ---- nf_tables: lookups and set-element batches
#
# The suite keeps one nftables table per plugin kind, and an attachment is a
# few elements in its sets (cnilib.firewall.shared).  Adding or removing
# those over netlink costs well under a millisecond whatever the table
# holds, where the nft binary would first read the table into its cache.
# Rules and chains with expressions are still written by ``nft -f -``.

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG = {"newtable": 0, "gettable": 1, "deltable": 2, "getchain": 4, "delchain": 5, "getrule": 7,
           "newsetelem": 12, "getsetelem": 13, "delsetelem": 14}
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLA_F_NESTED = 0x8000
NFPROTO = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
NFPROTO_NAME = {v: k for k, v in NFPROTO.items()}
NFT_JUMP = -3
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
# attribute numbers (linux/netfilter/nf_tables.h)
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY = 1, 3, 5
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_USERDATA = 1, 2, 6
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
UDATA_COMMENT = 0            # NFTNL_UDATA_SET_ELEM_COMMENT
COMMENT_MAX = 127            # nft refuses comments over 128 bytes with the NUL
_BATCH_GEN = struct.pack("!BBH", 0, 0, NFNL_SUBSYS_NFTABLES)   # nfgenmsg, res_id = subsystem


def _nest(atype, payload):
    return _attr(atype | NLA_F_NESTED, payload)


def _strz(text):
    return text.encode() + b"\0"


def _nfgen(family):
    return _NFGEN.pack(NFPROTO[family], 0, 0)


def _elem_attr(key, chain=None, comment=None):
    """One NFTA_LIST_ELEM: key bytes, optional jump verdict, optional comment."""
    body = _nest(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, key))
    if chain is not None:
        verdict = (_attr(NFTA_VERDICT_CODE, struct.pack("!i", NFT_JUMP))
                   + _attr(NFTA_VERDICT_CHAIN, _strz(chain)))
        body += _nest(NFTA_SET_ELEM_DATA, _nest(NFTA_DATA_VERDICT, verdict))
    if comment is not None:
        raw = comment.encode()[:COMMENT_MAX] + b"\0"
        body += _attr(NFTA_SET_ELEM_USERDATA, struct.pack("BB", UDATA_COMMENT, len(raw)) + raw)
    return _nest(NFTA_LIST_ELEM, body)


def _elem_list(table, set_name, elems):
    return (_attr(NFTA_SET_ELEM_LIST_TABLE, _strz(table)) + _attr(NFTA_SET_ELEM_LIST_SET, _strz(set_name))
            + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(elems)))


def _cstr(body, off, alen):
    return bytes(body[off + 4:off + alen]).split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_element(body):
    """{"chain": jump target or None, "comment": text or None} of the first
    element of a NEWSETELEM message body (nfgenmsg included)."""
    top = _attrs(body, 4)
    if NFTA_SET_ELEM_LIST_ELEMENTS not in top:
        return None
    off, alen = top[NFTA_SET_ELEM_LIST_ELEMENTS]
    lst = _attrs(body, off + 4, off + alen)
    if NFTA_LIST_ELEM not in lst:
        return None
    off, alen = lst[NFTA_LIST_ELEM]
    el = _attrs(body, off + 4, off + alen)
    out = {"chain": None, "comment": None}
    if NFTA_SET_ELEM_DATA in el:
        doff, dlen = el[NFTA_SET_ELEM_DATA]
        data = _attrs(body, doff + 4, doff + dlen)
        if NFTA_DATA_VERDICT in data:
            voff, vlen = data[NFTA_DATA_VERDICT]
            verdict = _attrs(body, voff + 4, voff + vlen)
            if NFTA_VERDICT_CHAIN in verdict:
                out["chain"] = _cstr(body, *verdict[NFTA_VERDICT_CHAIN])
    if NFTA_SET_ELEM_USERDATA in el:
        uoff, ulen = el[NFTA_SET_ELEM_USERDATA]
        raw, i = bytes(body[uoff + 4:uoff + ulen]), 0
        while i + 2 <= len(raw):
            t, n = raw[i], raw[i + 1]
            if t == UDATA_COMMENT:
                out["comment"] = raw[i + 2:i + 2 + n].split(b"\0", 1)[0].decode("utf-8", "replace")
            i += 2 + n
    return out


_DELETED = []     # non-empty once this process committed a deletion


def close_later(sock):
    """Close a netfilter netlink socket without waiting for the kernel.

    Once nf_tables objects are deleted, the kernel frees them after an RCU
    grace period (~15 ms), and until then closing ANY netfilter netlink
    socket blocks on it (nf_tables' NETLINK_URELEASE handler flushes the
    pending destroy work).  A DEL would pay that at its exit for nothing: the
    deletion is committed and visible already.  So the last reference goes
    to a short-lived grandchild (double fork: nobody has to reap it) that
    drops every other descriptor at once, closes the socket, waits there,
    and exits; the caller's own close then returns at once.
    """
    try:
        pid = os.fork()
    except OSError:
        sock.close()
        return
    if pid == 0:
        try:
            if os.fork() == 0:
                fd = sock.fileno()
                os.closerange(0, fd)            # stdout too: the runtime reads it to EOF
                os.closerange(fd + 1, 1 << 20)
                sock.close()
        finally:
            os._exit(0)
    sock.close()
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class NfTables:
    """A NETLINK_NETFILTER socket for nf_tables questions and element batches,
    in the calling thread's network namespace."""

    def __init__(self):
        self.s = _Sock(NETLINK_NETFILTER)
        sock = self.s.sock
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)     # acks without the request echoed
        except OSError:
            pass
        sock.settimeout(30)

    def close(self):
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _get(self, msg, family, payload, what):
        """The reply of one lookup, or None when the object does not exist."""
        try:
            got = self.s.request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG[msg], NLM_F_ACK,
                                 _nfgen(family) + payload, what)
        except NetlinkError as exc:
            if exc.errno == 2:          # ENOENT
                return None
            raise
        return got[0][1] if got else None

    def table_exists(self, family, name):
        return self._get("gettable", family, _attr(NFTA_TABLE_NAME, _strz(name)),
                         "nft get table %s %s" % (family, name)) is not None

    def chain_exists(self, family, table, name):
        return self._get("getchain", family,
                         _attr(NFTA_CHAIN_TABLE, _strz(table)) + _attr(NFTA_CHAIN_NAME, _strz(name)),
                         "nft get chain %s %s %s" % (family, table, name)) is not None

    def rule_count(self, family, table, chain):
        """Rules in one chain (0 when it or its table does not exist)."""
        got = self.s.request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG["getrule"], NLM_F_DUMP,
                             _nfgen(family) + _attr(NFTA_RULE_TABLE, _strz(table))
                             + _attr(NFTA_RULE_CHAIN, _strz(chain)),
                             "nft list chain %s %s %s" % (family, table, chain))
        return len(got)

    def chain_policy(self, family, table, name):
        """'accept' or 'drop' of a base chain; None when it does not exist
        or is not a base chain."""
        body = self._get("getchain", family,
                         _attr(NFTA_CHAIN_TABLE, _strz(table)) + _attr(NFTA_CHAIN_NAME, _strz(name)),
                         "nft get chain %s %s %s" % (family, table, name))
        if body is None:
            return None
        a = _attrs(body, 4)
        if NFTA_CHAIN_POLICY not in a:
            return None
        (verdict,) = struct.unpack_from("!I", body, a[NFTA_CHAIN_POLICY][0] + 4)
        return {0: "drop", 1: "accept"}.get(verdict)

    def tables(self):
        """[(family, name)] of every table in this netns."""
        got = self.s.request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG["gettable"], NLM_F_DUMP,
                             _NFGEN.pack(0, 0, 0), "nft list tables")
        out = []
        for _t, body in got:
            a = _attrs(body, 4)
            if NFTA_TABLE_NAME in a:
                out.append((NFPROTO_NAME.get(body[0], str(body[0])), _cstr(body, *a[NFTA_TABLE_NAME])))
        return out

    def element(self, family, table, set_name, key):
        """{"chain", "comment"} of the element ``key`` (bytes), or None."""
        body = self._get("getsetelem", family, _elem_list(table, set_name, [_elem_attr(key)]),
                         "nft get element %s %s %s" % (family, table, set_name))
        return None if body is None else parse_element(body)

    def commit(self, ops, what="nftables batch"):
        """Apply ``ops`` in one transaction: all or nothing.

        Each op is a tuple:
          ("add", family, table, set, key, chain, comment)     add an element
          ("create", ...same...)                                 add; EEXIST if it exists
          ("delete", family, table, set, key)                    delete; ENOENT if missing
          ("deltable", family, name) / ("delchain", family, table, name)
        Raises NetlinkError (errno of the first failing op, message naming it).
        """
        if not ops:
            return
        self.s.seq += 1
        first = self.s.seq
        msgs = [_HDR.pack(20, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, 0) + _BATCH_GEN]
        names = {}
        for op in ops:
            self.s.seq += 1
            kind, family = op[0], op[1]
            flags = NLM_F_REQUEST | NLM_F_ACK
            if kind in ("add", "create"):
                mtype = NFT_MSG["newsetelem"]
                flags |= NLM_F_CREATE | (NLM_F_EXCL if kind == "create" else 0)
                payload = _elem_list(op[2], op[3], [_elem_attr(op[4], op[5], op[6])])
                names[self.s.seq] = "%s element %s %s %s" % (kind, family, op[2], op[3])
            elif kind == "delete":
                mtype = NFT_MSG["delsetelem"]
                payload = _elem_list(op[2], op[3], [_elem_attr(op[4])])
                names[self.s.seq] = "delete element %s %s %s" % (family, op[2], op[3])
            elif kind == "deltable":
                mtype = NFT_MSG["deltable"]
                payload = _attr(NFTA_TABLE_NAME, _strz(op[2]))
                names[self.s.seq] = "delete table %s %s" % (family, op[2])
            elif kind == "delchain":
                mtype = NFT_MSG["delchain"]
                payload = _attr(NFTA_CHAIN_TABLE, _strz(op[2])) + _attr(NFTA_CHAIN_NAME, _strz(op[3]))
                names[self.s.seq] = "delete chain %s %s %s" % (family, op[2], op[3])
            else:
                raise ValueError("unknown nftables op %r" % (kind,))
            payload = _nfgen(family) + payload
            msgs.append(_HDR.pack(16 + len(payload), (NFNL_SUBSYS_NFTABLES << 8) | mtype, flags,
                                  self.s.seq, 0) + payload)
        self.s.seq += 1
        msgs.append(_HDR.pack(20, NFNL_MSG_BATCH_END, NLM_F_REQUEST, self.s.seq, 0) + _BATCH_GEN)
        self.s.sock.send(b"".join(msgs))
        self._collect(first, names, what)
        if any(op[0] != "add" and op[0] != "create" for op in ops):
            _DELETED.append(True)

    def _collect(self, first, names, what):
        """Read the acks of a batch; raise on the first error."""
        pending = set(names)
        error = None
        while pending:
            try:
                data = self.s.sock.recv(1 << 20)
            except OSError as exc:
                raise NetlinkError(getattr(exc, "errno", None) or 110,
                                   "%s: no answer from the kernel: %s" % (what, exc)) from exc
            off = 0
            while off + 16 <= len(data):
                length, rtype, _f, rseq, _pid = _HDR.unpack_from(data, off)
                if length < 16:
                    break
                if rtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    if err and error is None:
                        error = (-err, names.get(rseq, what))
                    pending.discard(rseq)
                    if rseq == first:       # the whole batch was refused
                        pending.clear()
                off += (length + 3) & ~3
        if error is not None:
            raise NetlinkError(error[0], "%s: %s" % (error[1], os.strerror(error[0])))
