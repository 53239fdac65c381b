"""nf_tables over cnilib.kernel.netlink: lookups and set-element batches.

The suite keeps one nftables table per plugin kind, and an attachment is a
few elements in its sets (cnilib.firewall.shared).  Adding or removing
those over netlink costs well under a millisecond whatever the table
holds, where the nft binary would first read the table into its cache (and
a library's message classes cost ~25 ms to import).  Rules and chains with
expressions are still written by ``nft -f -`` (cnilib.firewall.nft).

``NfTables`` is a NETLINK_NETFILTER socket in the calling thread's network
namespace; conntrack (cnilib.kernel.conntrack) borrows it, so one DEL opens
one netfilter socket.
"""

import errno
import os
import struct

from cnilib.kernel import netlink
from cnilib.kernel.netlink import (
    NETLINK_NETFILTER,
    NFGEN,
    NFNL_SUBSYS_NFTABLES,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NetlinkError,
    attr,
    attr_spans,
    nest,
)

NFT_MSG = {"newtable": 0, "gettable": 1, "deltable": 2, "getchain": 4, "delchain": 5, "getrule": 7,
           "newsetelem": 12, "getsetelem": 13, "delsetelem": 14, "getgen": 16}
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFPROTO = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
NFPROTO_NAME = {v: k for k, v in NFPROTO.items()}
NFT_JUMP = -3
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
_BATCH_GEN = NFGEN.pack(0, 0, NFNL_SUBSYS_NFTABLES)     # a batch marker: res_id = the subsystem


def _strz(text):
    return text.encode() + b"\0"


def _nfgen(family):
    return NFGEN.pack(NFPROTO[family], 0, 0)


def _mtype(msg):
    return (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG[msg]


def _elem_attr(key, chain=None, comment=None):
    """One NFTA_LIST_ELEM: key bytes, optional jump verdict, optional comment."""
    body = nest(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key))
    if chain is not None:
        verdict = (attr(NFTA_VERDICT_CODE, struct.pack("!i", NFT_JUMP))
                   + attr(NFTA_VERDICT_CHAIN, _strz(chain)))
        body += nest(NFTA_SET_ELEM_DATA, nest(NFTA_DATA_VERDICT, verdict))
    if comment is not None:
        raw = comment.encode()[:COMMENT_MAX] + b"\0"
        body += attr(NFTA_SET_ELEM_USERDATA, struct.pack("BB", UDATA_COMMENT, len(raw)) + raw)
    return nest(NFTA_LIST_ELEM, body)


def _elem_list(table, set_name, elems):
    return (attr(NFTA_SET_ELEM_LIST_TABLE, _strz(table)) + attr(NFTA_SET_ELEM_LIST_SET, _strz(set_name))
            + nest(NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(elems)))


def _cstr(body, off, alen):
    return bytes(body[off + 4:off + alen]).split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_elements(body):
    """[{"key", "chain", "comment"}] of every element of a NEWSETELEM
    message body (nfgenmsg included), as a set's dump returns them."""
    top = attr_spans(body, 4)
    if NFTA_SET_ELEM_LIST_ELEMENTS not in top:
        return []
    off, alen = top[NFTA_SET_ELEM_LIST_ELEMENTS]
    out = []
    for atype, eoff, elen in netlink.walk_attrs(body, off + 4, off + alen):
        if atype != NFTA_LIST_ELEM:
            continue
        # one element, re-wrapped so parse_element reads it as the first
        one = (bytes(body[:4]) + attr(NFTA_SET_ELEM_LIST_ELEMENTS, bytes(body[eoff:eoff + elen])))
        got = parse_element(one) or {"chain": None, "comment": None}
        el = attr_spans(body, eoff + 4, eoff + elen)
        key = None
        if NFTA_SET_ELEM_KEY in el:
            koff, klen = el[NFTA_SET_ELEM_KEY]
            val = attr_spans(body, koff + 4, koff + klen)
            if NFTA_DATA_VALUE in val:
                voff, vlen = val[NFTA_DATA_VALUE]
                key = bytes(body[voff + 4:voff + vlen])
        got["key"] = key
        out.append(got)
    return out


def parse_element(body):
    """{"chain": jump target or None, "comment": text or None} of the first
    element of a NEWSETELEM message body (nfgenmsg included)."""
    top = attr_spans(body, 4)
    if NFTA_SET_ELEM_LIST_ELEMENTS not in top:
        return None
    off, alen = top[NFTA_SET_ELEM_LIST_ELEMENTS]
    lst = attr_spans(body, off + 4, off + alen)
    if NFTA_LIST_ELEM not in lst:
        return None
    off, alen = lst[NFTA_LIST_ELEM]
    el = attr_spans(body, off + 4, off + alen)
    out = {"chain": None, "comment": None}
    if NFTA_SET_ELEM_DATA in el:
        doff, dlen = el[NFTA_SET_ELEM_DATA]
        data = attr_spans(body, doff + 4, doff + dlen)
        if NFTA_DATA_VERDICT in data:
            voff, vlen = data[NFTA_DATA_VERDICT]
            verdict = attr_spans(body, voff + 4, voff + vlen)
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


# Module state, and why it is safe: this process committed a deletion.  A
# plugin exec is one process for one verb.  The agent (cnilib.agent.server)
# never commits itself and forks one worker per request, which starts with
# the list as the agent has it (empty) and exits after that request; so the
# flag never carries from one request to another.  Within one process (a
# delegate run in-process, a DEL after an ADD) a stale True costs at most a
# fork that a plain close would have spared, never a wrong result.
_DELETED = []


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


class NfTables(netlink.Netlink):
    """A NETLINK_NETFILTER socket for nf_tables questions and element
    batches (and conntrack's requests), in the calling thread's network
    namespace.  Closed after this process deleted nf_tables objects, it is
    closed by close_later."""

    def __init__(self):
        super().__init__(NETLINK_NETFILTER)
        self.sock.settimeout(30)

    def close(self):
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if _DELETED:
            close_later(sock)
        else:
            sock.close()

    def _get(self, msg, family, payload, what):
        """The reply body (nfgenmsg on) of one lookup, or None when the object
        does not exist."""
        try:
            got = self.request(_nfgen(family) + payload, _mtype(msg), what=what)
        except NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return got[0][16:] if got else None

    def table_exists(self, family, name):
        return self._get("gettable", family, attr(NFTA_TABLE_NAME, _strz(name)),
                         "nft get table %s %s" % (family, name)) is not None

    def chain_exists(self, family, table, name):
        return self._get("getchain", family,
                         attr(NFTA_CHAIN_TABLE, _strz(table)) + attr(NFTA_CHAIN_NAME, _strz(name)),
                         "nft get chain %s %s %s" % (family, table, name)) is not None

    def rule_count(self, family, table, chain):
        """Rules in one chain (0 when it or its table does not exist)."""
        got = self.request(_nfgen(family) + attr(NFTA_RULE_TABLE, _strz(table))
                           + attr(NFTA_RULE_CHAIN, _strz(chain)), _mtype("getrule"), NLM_F_DUMP,
                           what="nft list chain %s %s %s" % (family, table, chain))
        return len(got)

    def chain_policy(self, family, table, name):
        """'accept' or 'drop' of a base chain; None when it does not exist
        or is not a base chain."""
        body = self._get("getchain", family,
                         attr(NFTA_CHAIN_TABLE, _strz(table)) + attr(NFTA_CHAIN_NAME, _strz(name)),
                         "nft get chain %s %s %s" % (family, table, name))
        if body is None:
            return None
        a = attr_spans(body, 4)
        if NFTA_CHAIN_POLICY not in a:
            return None
        (verdict,) = struct.unpack_from("!I", body, a[NFTA_CHAIN_POLICY][0] + 4)
        return {0: "drop", 1: "accept"}.get(verdict)

    def tables(self):
        """[(family, name)] of every table in this netns."""
        got = self.request(NFGEN.pack(0, 0, 0), _mtype("gettable"), NLM_F_DUMP, what="nft list tables")
        out = []
        for m in got:
            body = m[16:]
            a = attr_spans(body, 4)
            if NFTA_TABLE_NAME in a:
                out.append((NFPROTO_NAME.get(body[0], str(body[0])), _cstr(body, *a[NFTA_TABLE_NAME])))
        return out

    def element(self, family, table, set_name, key):
        """{"chain", "comment"} of the element ``key`` (bytes), or None."""
        body = self._get("getsetelem", family, _elem_list(table, set_name, [_elem_attr(key)]),
                         "nft get element %s %s %s" % (family, table, set_name))
        return None if body is None else parse_element(body)

    def elements(self, family, table, set_name):
        """[{"key", "chain", "comment"}] of every element of a set (one
        dump); [] when the set or its table does not exist."""
        try:
            got = self.request(_nfgen(family) + attr(NFTA_SET_ELEM_LIST_TABLE, _strz(table))
                               + attr(NFTA_SET_ELEM_LIST_SET, _strz(set_name)), _mtype("getsetelem"),
                               NLM_F_DUMP, what="nft list set %s %s %s" % (family, table, set_name))
        except NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise
        return [e for m in got for e in parse_elements(m[16:])]

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
        msgs = [(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, _BATCH_GEN, what)]
        for op in ops:
            msgs.append(_batch_msg(op))
        msgs.append((NFNL_MSG_BATCH_END, NLM_F_REQUEST, _BATCH_GEN, what))
        self.batch(msgs, what)
        if any(op[0] != "add" and op[0] != "create" for op in ops):
            _DELETED.append(True)


def _batch_msg(op):
    """(type, flags, body, name) of one op of NfTables.commit."""
    kind, family = op[0], op[1]
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind in ("add", "create"):
        msg = "newsetelem"
        flags |= NLM_F_CREATE | (NLM_F_EXCL if kind == "create" else 0)
        payload = _elem_list(op[2], op[3], [_elem_attr(op[4], op[5], op[6])])
        name = "%s element %s %s %s" % (kind, family, op[2], op[3])
    elif kind == "delete":
        msg = "delsetelem"
        payload = _elem_list(op[2], op[3], [_elem_attr(op[4])])
        name = "delete element %s %s %s" % (family, op[2], op[3])
    elif kind == "deltable":
        msg = "deltable"
        payload = attr(NFTA_TABLE_NAME, _strz(op[2]))
        name = "delete table %s %s" % (family, op[2])
    elif kind == "delchain":
        msg = "delchain"
        payload = attr(NFTA_CHAIN_TABLE, _strz(op[2])) + attr(NFTA_CHAIN_NAME, _strz(op[3]))
        name = "delete chain %s %s %s" % (family, op[2], op[3])
    else:
        raise ValueError("unknown nftables op %r" % (kind,))
    return _mtype(msg), flags, _nfgen(family) + payload, name


def nftables_available():
    """True when the kernel answers nf_tables' generation query."""
    try:
        with NfTables() as nf:
            got = nf.request(NFGEN.pack(0, 0, 0), _mtype("getgen"), what="nftables probe")
    except OSError:
        return False
    return bool(got)
