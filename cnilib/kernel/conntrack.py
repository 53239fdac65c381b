"""conntrack over cnilib.kernel.netlink: drop the entries that would keep
sending a host port's traffic to a container that is gone (portmap's UDP
flush, user-pain #19), the way ``conntrack -D -p udp --dport PORT`` does.
"""

import _socket
import errno
import struct

from cnilib.kernel.netlink import NFGEN, NFNL_SUBSYS_CTNETLINK, NLM_F_DUMP, NetlinkError, attr_spans

IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CTA_TUPLE_ORIG, CTA_ZONE = 1, 18
CTA_TUPLE_PROTO = 2
CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 3
IPPROTO = {"tcp": 6, "udp": 17, "sctp": 132}


def _orig_proto_dport(body):
    """(proto number, dst port, {type: (offset, length)} of the top-level
    attributes) of a conntrack message body (nfgenmsg on): the original
    tuple's protocol and destination port, None where missing."""
    attrs = attr_spans(body, 4)
    if CTA_TUPLE_ORIG not in attrs:
        return None, None, attrs
    off, alen = attrs[CTA_TUPLE_ORIG]
    tup = attr_spans(body, off + 4, off + alen)
    if CTA_TUPLE_PROTO not in tup:
        return None, None, attrs
    poff, plen = tup[CTA_TUPLE_PROTO]
    proto_attrs = attr_spans(body, poff + 4, poff + plen)
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


def _victims(entries, wanted, num, ports):
    """(family, original tuple + zone attributes as sent) of each dumped
    entry of a ``wanted`` family going to one of ``ports`` over ``num``."""
    out = []
    for m in entries:
        body = m[16:]
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
            out.append((af, key))
    return out


def conntrack_delete_dports(families, proto, ports, nf=None):
    """Delete every conntrack entry of ``families`` (4/6) whose original
    direction goes to one of ``ports`` over ``proto``; returns the count.

    One dump (of both families at once when both are asked for: the kernel
    walks its whole table per dump, ~5 ms on a busy host), then one delete
    per match keyed by the entry's own original tuple and zone, the way
    ``conntrack -D`` does.  An empty table costs no dump at all.  ``nf``:
    an open cnilib.kernel.nftables.NfTables (a netfilter socket) to use
    instead of a new one.
    """
    ports = set(ports)
    fams = set(families)
    if not ports or not fams or conntrack_count() == 0:
        return 0
    afs = {4: _socket.AF_INET, 6: _socket.AF_INET6}
    dump_af = afs[next(iter(fams))] if len(fams) == 1 else 0
    wanted = {afs[f] for f in fams}
    deleted = 0
    own = nf is None
    if own:
        from cnilib.kernel.nftables import NfTables  # its close knows about pending deletions
        nf = NfTables()
    try:
        entries = nf.request(NFGEN.pack(dump_af, 0, 0), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                             NLM_F_DUMP, what="conntrack dump")
        for af, key in _victims(entries, wanted, IPPROTO[proto], ports):
            try:
                nf.request(NFGEN.pack(af, 0, 0) + key, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                           what="conntrack delete")
                deleted += 1
            except NetlinkError as exc:
                if exc.errno != errno.ENOENT:      # expired meanwhile
                    raise
    finally:
        if own:
            nf.close()
    return deleted
