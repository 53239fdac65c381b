"""cnilib.kernel.nftables and .conntrack pack their netfilter messages and
parse the kernel's replies by hand; pyroute2 0.9.7 (nfnetlink.nftsocket's
nft_*_msg, nfctsocket's nfct_msg) is the reference, as it is for
rtnetlink in test_netlink_pack.py.  Every request must be byte for byte
what pyroute2 encodes for the same fields (apart from NLA_F_NESTED, which
pyroute2 leaves off inside arrays and nft sets on every nested attribute:
checked separately) and read back field by field; every parser must agree
with pyroute2's encoding of a reply.  A stand-in socket plays the kernel's
part: no root, no netns.
"""

import errno
import struct

import pytest

from cnilib.kernel import conntrack, netlink, nftables

NESTED = netlink.NLA_F_NESTED
REQ, ACK, DUMP = netlink.NLM_F_REQUEST, netlink.NLM_F_ACK, netlink.NLM_F_DUMP
CREATE, EXCL = netlink.NLM_F_CREATE, netlink.NLM_F_EXCL
HDR = struct.Struct("=IHHII")
NFT = 10 << 8
NEWTABLE, GETTABLE, DELTABLE = NFT | 0, NFT | 1, NFT | 2
NEWCHAIN, GETCHAIN, DELCHAIN = NFT | 3, NFT | 4, NFT | 5
NEWRULE, GETRULE = NFT | 6, NFT | 7
NEWSETELEM, GETSETELEM, DELSETELEM = NFT | 12, NFT | 13, NFT | 14
NEWGEN, GETGEN = NFT | 15, NFT | 16
CT_NEW, CT_GET, CT_DELETE = (1 << 8) | 0, (1 << 8) | 1, (1 << 8) | 2
INET, IP, IP6 = 1, 2, 10


def _class(name):
    module = "nfnetlink.nfctsocket" if name == "nfct_msg" else "nfnetlink.nftsocket"
    if name == "nfgen_msg":
        module = "nfnetlink"
    return netlink.pyroute2_class(module, name)


def encode(name, mtype, flags, seq, family, attrs, res_id=0):
    """A whole message (header included) as pyroute2 encodes it."""
    m = _class(name)()
    m["header"]["type"], m["header"]["flags"] = mtype, flags
    m["header"]["sequence_number"], m["header"]["pid"] = seq, 0
    m["nfgen_family"], m["version"], m["res_id"] = family, 0, res_id
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def decode(name, raw):
    m = _class(name)(raw)
    m.decode()
    return m


def unflag(data):
    """(``data`` with NLA_F_NESTED cleared in every attribute, recursively,
    [the attribute types that had it, by depth as "type/type"])."""
    out, flagged, pos = b"", [], 0
    while pos + 4 <= len(data):
        alen, atype = struct.unpack_from("=HH", data, pos)
        payload = data[pos + 4:pos + alen]
        if atype & NESTED:
            payload, inner = unflag(payload)
            flagged += ["%d" % (atype & ~NESTED)] + ["%d/%s" % (atype & ~NESTED, f) for f in inner]
        out += struct.pack("=HH", alen, atype & ~NESTED) + payload + b"\0" * (-len(payload) % 4)
        pos += (alen + 3) & ~3
    return out, flagged


def unflag_msg(raw):
    attrs, flagged = unflag(raw[20:])
    return raw[:20] + attrs, flagged


def split(data):
    """[(type, flags, seq, message bytes)] of one datagram."""
    out, off = [], 0
    while off + 16 <= len(data):
        length, mtype, flags, seq, _pid = HDR.unpack_from(data, off)
        out.append((mtype, flags, seq, bytes(data[off:off + length])))
        off += (length + 3) & ~3
    return out


class Kernel:
    """A netfilter socket's far end: records each datagram, and answers each
    request with ``answer(type, flags, message)``: a list of (type, body)
    replies, or an errno.  Dumps end with DONE; other requests that ask for
    an ack get one (errno 0) after their replies; a batch's begin and end
    markers get nothing, as from the kernel."""

    def __init__(self, answer=None):
        self.sent, self.pending = [], []
        self.answer = answer or (lambda mtype, flags, raw: [])
        self.bufs = {netlink.SO_SNDBUF: 212992, netlink.SO_RCVBUF: 212992}     # the sysctl defaults
        self.sized = []

    def getsockopt(self, level, opt):
        return self.bufs[opt]

    def setsockopt(self, level, opt, value):
        self.sized.append((opt, value))
        self.bufs[{netlink.SO_SNDBUFFORCE: netlink.SO_SNDBUF,
                   netlink.SO_RCVBUFFORCE: netlink.SO_RCVBUF}.get(opt, opt)] = 2 * value

    def send(self, data):
        msgs = split(data)
        self.sent.append(msgs)
        out = b""
        for mtype, flags, seq, raw in msgs:
            if not flags & (ACK | DUMP):
                continue
            got = self.answer(mtype, flags, raw)
            if isinstance(got, int):
                out += self._error(seq, got, raw)
                continue
            for rtype, body in got:
                out += HDR.pack(16 + len(body), rtype, netlink.NLM_F_MULTI if flags & DUMP else 0, seq, 0)
                out += body + b"\0" * (-len(body) % 4)
            if flags & DUMP == DUMP:
                out += HDR.pack(20, netlink.NLMSG_DONE, netlink.NLM_F_MULTI, seq, 0) + b"\0" * 4
            elif flags & ACK:
                out += self._error(seq, 0, raw)
        self.pending.append(out)
        return len(data)

    @staticmethod
    def _error(seq, err, raw):       # NETLINK_CAP_ACK: the request's header only
        return HDR.pack(36, netlink.NLMSG_ERROR, 0x100, seq, 0) + struct.pack("=i", -err) + raw[:16]

    def recv(self, _n):
        return self.pending.pop(0)

    def close(self):
        pass


@pytest.fixture(autouse=True)
def no_deletions_yet(monkeypatch):
    # a commit that deletes marks the process; the stand-in socket must
    # never reach close_later (a fork of the test process)
    monkeypatch.setattr(nftables, "_DELETED", [])


def nft(answer=None):
    nf = nftables.NfTables.__new__(nftables.NfTables)
    nf.proto, nf.sock, nf.seq = netlink.NETLINK_NETFILTER, Kernel(answer), 0
    return nf


def elem_list(mtype, flags, seq, family, table, set_name, key, chain=None, comment=None, more=()):
    """An element-list message as pyroute2 encodes it."""
    elems = []
    for k, c, text in ((key, chain, comment),) + tuple(more):
        el = [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", k)]})]
        if c is not None:
            verdict = [("NFTA_VERDICT_CODE", -3), ("NFTA_VERDICT_CHAIN", c)]     # NFT_JUMP
            el.append(("NFTA_SET_ELEM_DATA", {"attrs": [("NFTA_DATA_VERDICT", {"attrs": verdict})]}))
        if text is not None:
            el.append(("NFTA_SET_ELEM_USERDATA", [("NFTNL_UDATA_SET_ELEM_COMMENT", text)]))
        elems.append({"attrs": el})
    return encode("nft_set_elem_list_msg", mtype, flags, seq, family,
                  [("NFTA_SET_ELEM_LIST_TABLE", table), ("NFTA_SET_ELEM_LIST_SET", set_name),
                   ("NFTA_SET_ELEM_LIST_ELEMENTS", elems)])


ELEMENT_NESTING = ["3", "3/1", "3/1/1", "3/1/2", "3/1/2/2"]     # ELEMENTS/LIST_ELEM/KEY, DATA/VERDICT


# ------------------------------------------------------------ NfTables.commit


def test_commit_is_one_batch_of_what_pyroute2_encodes():
    key4, key6 = b"\x0a\xf4\x01\x05\x00\x00\x1f\x90", bytes(range(16))
    ops = [("add", "inet", "pycni-hostport", "dnat4", key4, "dn-0123456789abcdef", "id=c1 if=eth0"),
           ("create", "inet", "pycni-masq", "masq6", key6, "subnet-aa", None),
           ("delete", "ip", "pycni-fw", "allow4", key4),
           ("deltable", "inet", "pycni-hostport-0011"),
           ("delchain", "ip6", "pycni-hostport", "dn-0123456789abcdef")]
    nf = nft()
    nf.commit(ops, what="a test batch")
    (msgs,) = nf.sock.sent
    assert [s for _t, _f, s, _r in msgs] == list(range(1, 8))     # one datagram, seq in order
    begin, end = msgs[0][3], msgs[-1][3]
    for raw, mtype, seq in ((begin, 0x10, 1), (end, 0x11, 7)):
        assert raw == encode("nfgen_msg", mtype, REQ, seq, 0, [], res_id=netlink.NFNL_SUBSYS_NFTABLES)
        assert decode("nfgen_msg", raw)["res_id"] == netlink.NFNL_SUBSYS_NFTABLES
    want = [
        (elem_list(NEWSETELEM, REQ | ACK | CREATE, 2, INET, "pycni-hostport", "dnat4", key4,
                   "dn-0123456789abcdef", "id=c1 if=eth0"), ELEMENT_NESTING),
        (elem_list(NEWSETELEM, REQ | ACK | CREATE | EXCL, 3, INET, "pycni-masq", "masq6", key6, "subnet-aa"),
         ELEMENT_NESTING),
        (elem_list(DELSETELEM, REQ | ACK, 4, IP, "pycni-fw", "allow4", key4), ["3", "3/1", "3/1/1"]),
        (encode("nft_table_msg", DELTABLE, REQ | ACK, 5, INET, [("NFTA_TABLE_NAME", "pycni-hostport-0011")]),
         []),
        (encode("nft_chain_msg", DELCHAIN, REQ | ACK, 6, IP6,
                [("NFTA_CHAIN_TABLE", "pycni-hostport"), ("NFTA_CHAIN_NAME", "dn-0123456789abcdef")]), []),
    ]
    for (_t, _f, _s, raw), (expected, nesting) in zip(msgs[1:-1], want):
        plain, flagged = unflag_msg(raw)
        assert plain == expected
        assert flagged == nesting       # nft's NLA_F_NESTED on every nested attribute, nowhere else


def test_commit_elements_read_back_field_by_field():
    nf = nft()
    nf.commit([("add", "inet", "pycni-hostport", "dnat4", b"\x01\x02\x03\x04", "dn-x", "id=c1 if=eth0"),
               ("delete", "inet", "pycni-hostport", "dnat4", b"\x01\x02\x03\x04")])
    add, dele = (decode("nft_set_elem_list_msg", raw) for _t, _f, _s, raw in nf.sock.sent[0][1:-1])
    assert add["nfgen_family"] == INET and add.get_attr("NFTA_SET_ELEM_LIST_TABLE") == "pycni-hostport"
    assert add.get_attr("NFTA_SET_ELEM_LIST_SET") == "dnat4"
    (el,) = add.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")
    assert el.get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE") == b"\x01\x02\x03\x04"
    verdict = el.get_attr("NFTA_SET_ELEM_DATA").get_attr("NFTA_DATA_VERDICT")
    assert verdict.get_attr("NFTA_VERDICT_CODE") == "NFT_JUMP"
    assert verdict.get_attr("NFTA_VERDICT_CHAIN") == "dn-x"
    assert el.get_attr("NFTA_SET_ELEM_USERDATA") == [("NFTNL_UDATA_SET_ELEM_COMMENT", b"id=c1 if=eth0")]
    (el,) = dele.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")
    assert [a[0] for a in el["attrs"]] == ["NFTA_SET_ELEM_KEY"]


def test_commit_cuts_a_comment_where_nft_would_refuse_it():
    nf = nft()
    long = "x" * 200
    nf.commit([("add", "inet", "t", "s", b"\0\0\0\1", None, long)])
    raw = nf.sock.sent[0][1][3]
    assert unflag_msg(raw)[0] == elem_list(NEWSETELEM, REQ | ACK | CREATE, 2, INET, "t", "s", b"\0\0\0\1",
                                           None, long[:nftables.COMMENT_MAX])
    (el,) = decode("nft_set_elem_list_msg", raw).get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")
    (_n, text), = el.get_attr("NFTA_SET_ELEM_USERDATA")
    assert len(text) + 1 == nftables.COMMENT_MAX + 1 == 128      # with its NUL: nft's limit


def test_commit_names_the_op_the_kernel_refused():
    def answer(mtype, flags, raw):
        return errno.EEXIST if mtype == NEWSETELEM and b"masq6" in raw else []
    nf = nft(answer)
    with pytest.raises(netlink.NetlinkError) as exc:
        nf.commit([("add", "inet", "pycni-hostport", "dnat4", b"\0" * 4, None, None),
                   ("create", "inet", "pycni-masq", "masq6", b"\0" * 4, None, None),
                   ("delete", "inet", "pycni-masq", "masq4", b"\0" * 4)])
    assert exc.value.errno == errno.EEXIST
    assert exc.value.strerror.startswith("create element inet pycni-masq masq6: ")
    assert nftables._DELETED == []          # nothing was committed


def test_a_refused_batch_ends_the_wait():
    # an error on the begin marker: the kernel sends nothing else
    nf = nft()
    sent = nf.sock.send

    def send(data):
        n = sent(data)
        (_t, _f, first, raw) = split(data)[0]
        nf.sock.pending[-1] = Kernel._error(first, errno.EPERM, raw)
        return n
    nf.sock.send = send
    with pytest.raises(netlink.NetlinkError) as exc:
        nf.commit([("add", "inet", "t", "s", b"\0" * 4, None, None)], what="portmap elements")
    assert exc.value.errno == errno.EPERM and exc.value.strerror.startswith("portmap elements: ")


def test_only_a_committed_deletion_marks_the_process():
    nf = nft()
    nf.commit([("add", "inet", "t", "s", b"\0" * 4, None, None)])
    assert nftables._DELETED == []
    nf.commit([("delete", "inet", "t", "s", b"\0" * 4)])
    assert nftables._DELETED == [True]


# ------------------------------------------------------------ lookups


def test_lookups_ask_what_pyroute2_would():
    tables = {"pycni-hostport"}
    chains = {("pycni-hostport", "dn-x")}

    def answer(mtype, flags, raw):
        m = decode({GETTABLE: "nft_table_msg", GETCHAIN: "nft_chain_msg"}[mtype], raw)
        if mtype == GETTABLE:
            name = m.get_attr("NFTA_TABLE_NAME")
            body = encode("nft_table_msg", NEWTABLE, 0, 0, INET, [("NFTA_TABLE_NAME", name)])[16:]
            return [(NEWTABLE, body)] if name in tables else errno.ENOENT
        key = (m.get_attr("NFTA_CHAIN_TABLE"), m.get_attr("NFTA_CHAIN_NAME"))
        return [(NEWCHAIN, raw[16:])] if key in chains else errno.ENOENT
    nf = nft(answer)
    assert nf.table_exists("inet", "pycni-hostport") is True
    assert nf.table_exists("inet", "pycni-masq") is False
    assert nf.chain_exists("inet", "pycni-hostport", "dn-x") is True
    assert nf.chain_exists("ip", "pycni-hostport", "dn-y") is False
    sent = [m for batch in nf.sock.sent for m in batch]
    assert [(t, f) for t, f, _s, _r in sent] == [(GETTABLE, REQ | ACK)] * 2 + [(GETCHAIN, REQ | ACK)] * 2
    assert sent[0][3] == encode("nft_table_msg", GETTABLE, REQ | ACK, 1, INET,
                                [("NFTA_TABLE_NAME", "pycni-hostport")])
    assert sent[3][3] == encode("nft_chain_msg", GETCHAIN, REQ | ACK, 4, IP,
                                [("NFTA_CHAIN_TABLE", "pycni-hostport"), ("NFTA_CHAIN_NAME", "dn-y")])


@pytest.mark.parametrize("policy,want", [(1, "accept"), (0, "drop"), (None, None)])
def test_chain_policy_read_from_what_pyroute2_encodes(policy, want):
    attrs = [("NFTA_CHAIN_TABLE", "filter"), ("NFTA_CHAIN_NAME", "FORWARD"), ("NFTA_CHAIN_TYPE", "filter")]
    if policy is not None:
        attrs.append(("NFTA_CHAIN_POLICY", policy))
    reply = encode("nft_chain_msg", NEWCHAIN, 0, 0, IP, attrs)[16:]
    nf = nft(lambda mtype, flags, raw: [(NEWCHAIN, reply)])
    assert nf.chain_policy("ip", "filter", "FORWARD") == want


def test_rule_count_is_a_dump_of_one_chain():
    rule = encode("nft_rule_msg", NEWRULE, 0, 0, INET,
                  [("NFTA_RULE_TABLE", "pycni-hostport"), ("NFTA_RULE_CHAIN", "prerouting")])[16:]
    nf = nft(lambda mtype, flags, raw: [(NEWRULE, rule)] * 3)
    assert nf.rule_count("inet", "pycni-hostport", "prerouting") == 3
    ((mtype, flags, _seq, raw),) = nf.sock.sent[0]
    assert (mtype, flags) == (GETRULE, REQ | DUMP)
    assert raw == encode("nft_rule_msg", GETRULE, REQ | DUMP, 1, INET,
                         [("NFTA_RULE_TABLE", "pycni-hostport"), ("NFTA_RULE_CHAIN", "prerouting")])


def test_tables_read_from_a_dump_pyroute2_encodes():
    got = [(fam, name) for fam, name in ((INET, "pycni-hostport"), (IP, "nat"), (IP6, "filter"), (7, "br"))]
    replies = [(NEWTABLE, encode("nft_table_msg", NEWTABLE, 0, 0, fam, [("NFTA_TABLE_NAME", name),
                                                                           ("NFTA_TABLE_FLAGS", 0)])[16:])
               for fam, name in got]
    nf = nft(lambda mtype, flags, raw: replies)
    assert nf.tables() == [("inet", "pycni-hostport"), ("ip", "nat"), ("ip6", "filter"), ("bridge", "br")]
    ((mtype, flags, _seq, raw),) = nf.sock.sent[0]
    assert (mtype, flags) == (GETTABLE, REQ | DUMP)
    assert raw == encode("nft_table_msg", GETTABLE, REQ | DUMP, 1, 0, [])


def test_element_lookup():
    key = b"\x0a\x00\x00\x07"
    reply = elem_list(NEWSETELEM, 0, 0, INET, "pycni-masq", "masq4", key, "subnet-9", "id=c9 if=net1")[16:]

    def answer(mtype, flags, raw):
        assert mtype == GETSETELEM
        return [(NEWSETELEM, reply)]
    nf = nft(answer)
    assert nf.element("inet", "pycni-masq", "masq4", key) == {"chain": "subnet-9", "comment": "id=c9 if=net1"}
    ((_t, flags, _s, raw),) = nf.sock.sent[0]
    assert flags == REQ | ACK
    plain, flagged = unflag_msg(raw)
    assert plain == elem_list(GETSETELEM, REQ | ACK, 1, INET, "pycni-masq", "masq4", key)
    assert flagged == ["3", "3/1", "3/1/1"]
    missing = nft(lambda mtype, flags, raw: errno.ENOENT)
    assert missing.element("inet", "pycni-masq", "masq4", key) is None


@pytest.mark.parametrize("chain,comment,more", [
    ("dn-1", "id=a if=eth0", ()),
    (None, "id=a if=eth0", ()),
    ("dn-1", None, ()),
    (None, None, ()),
    ("dn-1", "first", ((b"\0\0\0\2", "dn-2", "second"),)),
    (None, "ünïcode ✓", ()),
])
def test_parse_element_agrees_with_pyroute2(chain, comment, more):
    body = elem_list(NEWSETELEM, 0, 0, INET, "t", "s", b"\0\0\0\1", chain, comment, more)[16:]
    assert nftables.parse_element(body) == {"chain": chain, "comment": comment}
    (el, *_rest) = decode("nft_set_elem_list_msg", HDR.pack(16 + len(body), NEWSETELEM, 0, 0, 0) + body) \
        .get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")
    data = el.get_attr("NFTA_SET_ELEM_DATA")
    assert (data.get_attr("NFTA_DATA_VERDICT").get_attr("NFTA_VERDICT_CHAIN") if data else None) == chain


def test_parse_element_of_a_list_without_elements():
    body = encode("nft_set_elem_list_msg", NEWSETELEM, 0, 0, INET,
                  [("NFTA_SET_ELEM_LIST_TABLE", "t"), ("NFTA_SET_ELEM_LIST_SET", "s")])[16:]
    assert nftables.parse_element(body) is None


def test_nftables_probe_asks_for_the_generation(monkeypatch):
    gen = encode("nft_gen_msg", NEWGEN, 0, 0, 0, [("NFTA_GEN_ID", 7)])[16:]
    nf = nft(lambda mtype, flags, raw: [(NEWGEN, gen)])
    kernel = nf.sock
    monkeypatch.setattr(nftables, "NfTables", lambda: nf)
    assert nftables.nftables_available() is True
    ((mtype, flags, _seq, raw),) = kernel.sent[0]
    assert (mtype, flags) == (GETGEN, REQ | ACK) and raw == encode("nft_gen_msg", GETGEN, REQ | ACK, 1, 0, [])


# ------------------------------------------------------------ conntrack


def _tuple(family, proto, src, dst, sport, dport):
    v = "V4" if family == 2 else "V6"
    return {"attrs": [("CTA_TUPLE_IP", {"attrs": [("CTA_IP_%s_SRC" % v, src), ("CTA_IP_%s_DST" % v, dst)]}),
                      ("CTA_TUPLE_PROTO", {"attrs": [("CTA_PROTO_NUM", proto), ("CTA_PROTO_SRC_PORT", sport),
                                                     ("CTA_PROTO_DST_PORT", dport)]})]}


def _addrs(family):
    return ("10.244.1.5", "192.0.2.1") if family == 2 else ("fd00::5", "2001:db8::1")


def entry(family, proto, sport, dport, zone=None):
    """A conntrack entry of the dump, as pyroute2 encodes it."""
    src, dst = _addrs(family)
    attrs = [("CTA_TUPLE_ORIG", _tuple(family, proto, src, dst, sport, dport)),
             ("CTA_TUPLE_REPLY", _tuple(family, proto, dst, src, dport, sport)),
             ("CTA_STATUS", 8), ("CTA_TIMEOUT", 30)]
    if zone is not None:
        attrs.append(("CTA_ZONE", zone))
    return encode("nfct_msg", CT_NEW, 0, 0, family, attrs)[16:]


def delete(seq, family, proto, sport, dport, zone=None):
    """The delete request of that entry, as pyroute2 encodes it: its
    original tuple and zone, nothing else (``conntrack -D``'s key)."""
    src, dst = _addrs(family)
    attrs = [("CTA_TUPLE_ORIG", _tuple(family, proto, src, dst, sport, dport))]
    if zone is not None:
        attrs.append(("CTA_ZONE", zone))
    return encode("nfct_msg", CT_DELETE, REQ | ACK, seq, family, attrs)


FIELDS = [(2, 17, 40000, 8081, 0),          # a match, in zone 0
          (2, 6, 40001, 8081, None),        # tcp: not ours to drop
          (2, 17, 40002, 9999, None),       # another port
          (10, 17, 40003, 8081, 3),         # IPv6, zone 3
          (2, 17, 40004, 8082, None)]       # a match without a zone attribute
ENTRIES = [entry(*f) for f in FIELDS]


def _ct(entries, gone=()):
    def answer(mtype, flags, raw):
        if mtype == CT_GET:
            return [(CT_NEW, e) for e in entries]
        return errno.ENOENT if raw[20:] in gone else []
    return nft(answer)


def test_conntrack_deletes_by_the_original_tuple_and_zone(monkeypatch):
    monkeypatch.setattr(conntrack, "conntrack_count", lambda: len(ENTRIES))
    nf = _ct(ENTRIES)
    assert conntrack.conntrack_delete_dports((4, 6), "udp", {8081, 8082}, nf) == 3
    (dump,), *deletes = nf.sock.sent
    assert dump[:2] == (CT_GET, REQ | DUMP)
    assert dump[3] == encode("nfct_msg", CT_GET, REQ | DUMP, 1, 0, [])     # both families, one dump
    assert [raw for ((_t, _f, _s, raw),) in deletes] == [
        delete(2, *FIELDS[0]), delete(3, *FIELDS[3]), delete(4, *FIELDS[4])]
    m = decode("nfct_msg", deletes[1][0][3])
    assert m["nfgen_family"] == 10 and m.get_attr("CTA_ZONE") == 3
    proto = m.get_attr("CTA_TUPLE_ORIG").get_attr("CTA_TUPLE_PROTO")
    assert (proto.get_attr("CTA_PROTO_NUM"), proto.get_attr("CTA_PROTO_DST_PORT")) == (17, 8081)


def test_conntrack_one_family_dumps_that_family_only(monkeypatch):
    monkeypatch.setattr(conntrack, "conntrack_count", lambda: None)     # unknown: dump anyway
    nf = _ct(ENTRIES)
    assert conntrack.conntrack_delete_dports((4,), "udp", {8081}, nf) == 1
    assert decode("nfct_msg", nf.sock.sent[0][0][3])["nfgen_family"] == 2


def test_conntrack_entry_gone_meanwhile_is_not_an_error(monkeypatch):
    monkeypatch.setattr(conntrack, "conntrack_count", lambda: 5)
    key = delete(0, *FIELDS[0])[20:]
    nf = _ct(ENTRIES, gone={key})
    assert conntrack.conntrack_delete_dports((4, 6), "udp", {8081, 8082}, nf) == 2


def test_conntrack_other_errors_are_raised(monkeypatch):
    monkeypatch.setattr(conntrack, "conntrack_count", lambda: 5)
    nf = nft(lambda mtype, flags, raw: [(CT_NEW, e) for e in ENTRIES] if mtype == CT_GET else errno.EPERM)
    with pytest.raises(netlink.NetlinkError) as exc:
        conntrack.conntrack_delete_dports((4,), "udp", {8081}, nf)
    assert exc.value.errno == errno.EPERM and exc.value.strerror.startswith("conntrack delete: ")


def test_conntrack_empty_table_costs_no_dump(monkeypatch):
    monkeypatch.setattr(conntrack, "conntrack_count", lambda: 0)
    nf = _ct(ENTRIES)
    assert conntrack.conntrack_delete_dports((4, 6), "udp", {8081}, nf) == 0
    assert nf.sock.sent == []


def test_a_big_batch_sizes_the_socket_for_itself_and_its_acks():
    """Issue 16 item 6: a batch was one datagram into the default 208 KiB
    buffers, so past ~260 acked ops the acks overflowed the receive buffer
    (ENOBUFS) and past 208 KiB the send failed (EMSGSIZE): portmap failed
    every ADD above ~255 hostPorts.  Now the buffers fit the batch; a
    small batch changes nothing."""
    key = b"\x00\x00\x00\x06\x00\x00\x1f\x90"
    nf = nft()
    nf.commit([("create", "inet", "pycni-hostport", "ports4", key, "hp-x", "pycni x")] * 3)
    assert nf.sock.sized == []
    ops = [("create", "inet", "pycni-hostport", "ports4", key, "hp-x", "pycni " + "c" * 120)] * 2000
    nf.commit(ops)
    size = sum(len(raw) for *_x, raw in nf.sock.sent[-1])
    assert size > 212992 - 32                           # EMSGSIZE into the default buffer
    bufs = dict(nf.sock.sized)
    assert bufs[netlink.SO_SNDBUFFORCE] * 2 >= size + 32
    assert bufs[netlink.SO_RCVBUFFORCE] >= 2000 * netlink.ACK_COST
    assert len(nf.sock.sent[-1]) == 2002                # still one transaction
