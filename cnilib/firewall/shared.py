"""The suite's shared nftables tables: one per plugin kind, and an
attachment is a few set elements (plus, for portmap, one chain) in it.

Why: with a table per attachment every ``nft`` run reads every table into
its cache, so each operation slowed down as pods accumulated (8 ms with no
table, 42 ms with 100, 265 ms with 1000).  Here the tables, their sets and
their rules are written once (``nft -f -``, idempotent), and an attachment
adds or removes its elements over netlink (cnilib.kernel.nftables.NfTables): well
under a millisecond whatever the table holds, no nft process, no cache, and
deleting an element makes no commit wait for an RCU grace period.

Ownership.  Every element carries a comment naming its attachment
(naming.element_comment: the network and attachment hashes, then the names
as far as they fit), and the attachment's record (cnilib.firewall.records)
lists its elements and chains.  Before adding, each element's key is looked
up: free -> created (``create``: a racing ADD makes the batch fail and it is
planned again); already ours -> left as it is; held by another attachment
that is alive (it has a record, and the netns it recorded is still there)
-> a CNI error naming it (two pods cannot both own a hostPort or an
address); held by a dead one (no record: a leak; or its netns is gone: a
pod killed without DEL) -> taken over, with a warning.  DEL removes only elements whose comment names the
attachment, so it never takes another attachment's state with it.

GC removes the records of attachments not in the valid list, then sweeps
the table once: elements and chains whose key names this network but no
valid attachment go, so a lost record never leaks.
"""

import _socket

from cnilib.base import errors
from cnilib.firewall import naming, records
from cnilib.kernel import nftables

EEXIST, ENOENT = 17, 2
RETRIES = 3
PROTO_NUM = {"tcp": 6, "udp": 17, "sctp": 132}
NFPROTO_NUM = {4: 2, 6: 10}


# ---------------------------------------------------------------- keys
# nf_tables keys are the raw data registers: a lone field is its own bytes,
# each field of a concatenation is padded to 4 bytes.

def _pad(raw):
    return raw + b"\0" * (-len(raw) % 4)


def ip_raw(fam, ip):
    return _socket.inet_pton(_socket.AF_INET if fam == 4 else _socket.AF_INET6, ip)


def ip_key(fam, ip):
    return ip_raw(fam, ip)


def port_key(proto, port):
    """``meta l4proto . th dport``"""
    return _pad(bytes([PROTO_NUM[proto]])) + _pad(port.to_bytes(2, "big"))


def ip_port_key(fam, ip, proto, port):
    """``ip daddr . meta l4proto . th dport`` (ip6 daddr for IPv6)."""
    return ip_raw(fam, ip) + port_key(proto, port)


def ifname_key(name):
    return name.encode()[:15].ljust(16, b"\0")


def ifname_mac_key(name, mac):
    """``iifname . ether saddr``"""
    return ifname_key(name) + _pad(bytes.fromhex(mac.replace(":", "")))


class Overlap:
    """Elements of another set that clash with an Elem although their keys
    differ: the element ``key`` of ``set`` (``fam`` None), or, with
    ``fam``, every element of ``set`` whose key is an address of that
    family followed by ``key`` (portmap: a hostPort on every address
    against the same one on a specific address).  ``label`` names the
    clashing element in messages ("{ip}" stands for its address)."""

    __slots__ = ("set", "key", "label", "fam", "port")

    def __init__(self, set_name, key, label, fam=None, port=None):
        self.set, self.key, self.label, self.fam, self.port = set_name, key, label, fam, port

    def found(self, nf, family, table, dumps):
        """[(element, label)] in the kernel now; ``dumps`` caches a set's
        dump for one plan."""
        if self.fam is None:
            cur = nf.element(family, table, self.set, self.key)
            return [] if cur is None else [(cur, self.label)]
        if self.set not in dumps:
            dumps[self.set] = nf.elements(family, table, self.set)
        n = 4 if self.fam == 4 else 16
        out = []
        for cur in dumps[self.set]:
            k = cur.get("key") or b""
            if len(k) == n + len(self.key) and k[n:] == self.key:
                ip = _socket.inet_ntop(_socket.AF_INET if n == 4 else _socket.AF_INET6, k[:n])
                shown = ("[%s]:%d" if n == 16 else "%s:%d") % (ip, self.port)
                out.append((dict(cur, key=k), self.label.replace("{ip}", shown)))
        return out


class Elem:
    """One element an attachment owns: set name, key bytes, the chain it
    jumps to (maps), a label for messages, and the ``overlaps`` (Overlap)
    that another live attachment must not hold."""

    __slots__ = ("set", "key", "chain", "label", "overlaps")

    def __init__(self, set_name, key, chain=None, label="", overlaps=()):
        self.set, self.key, self.chain, self.label = set_name, key, chain, label
        self.overlaps = overlaps

    def to_json(self):
        return [self.set, self.key.hex(), self.chain, self.label]

    @classmethod
    def from_json(cls, item):
        return cls(item[0], bytes.fromhex(item[1]), item[2], item[3])

    def __repr__(self):
        return "Elem(%s %s -> %s)" % (self.set, self.label, self.chain)


class Table:
    """One shared table: ``kind`` names its records, ``ready`` the chains
    of its skeleton with their rule counts ({chain: n}), ``skeleton`` the
    idempotent nft script that (re)writes it, ``legacy`` the table-name
    kind of the previous per-attachment design, ``chain_prefix`` that of
    its per-attachment chains (portmap's ``hp``)."""

    def __init__(self, kind, family, name, what, ready, skeleton, legacy=None, chain_prefix=None):
        self.kind, self.family, self.name, self.what = kind, family, name, what
        self.ready, self.skeleton, self.legacy = ready, skeleton, legacy
        self.chain_prefix = chain_prefix

    @property
    def ref(self):
        return "%s %s" % (self.family, self.name)

    def legacy_table(self, att):
        return naming.attachment_table(self.legacy, *att) if self.legacy else None


def _nft_error(tbl, what, exc):
    return errors.Internal("%s in nftables table %s failed: %s" % (what, tbl.ref, exc.strerror or exc),
                           "errno %s" % exc.errno)


def _holder(tbl, key):
    """The record of the attachment an element key names, or None."""
    if not key:
        return None
    return records.load_hash(tbl.kind, key.split("-", 1)[1])


def _who(rec):
    return "network %s, container %s, interface %s" % (rec["net"], rec["cid"], rec["if"])


def _plan(nf, tbl, att, elems, drop, log):
    """Netlink ops turning the attachment's elements into ``elems``, and
    removing ``drop`` (elements of an earlier ADD it no longer wants)."""
    f, t = tbl.family, tbl.name
    own = naming.element_key(*att)
    comment = naming.element_comment(*att)
    ops = []
    for e in drop:
        cur = nf.element(f, t, e.set, e.key)
        if cur is not None and naming.comment_key(cur["comment"]) == own:
            ops.append(("delete", f, t, e.set, e.key))
    dumps, taken = {}, set()
    for e in elems:
        for o in e.overlaps:
            for cur, label in o.found(nf, f, t, dumps):
                holder = naming.comment_key(cur["comment"])
                if holder == own:
                    continue
                rec = _holder(tbl, holder)
                if rec is not None and records.alive(rec) is not False:
                    raise errors.Internal(
                        "%s %s clashes with %s, held by another attachment (%s)"
                        % (tbl.what, e.label, label, _who(rec)),
                        "a hostPort on every address and the same port on one address of that family "
                        "cannot belong to two attachments; remove that attachment (CNI DEL) or choose "
                        "another port; nft list set %s %s shows the holder" % (tbl.ref, o.set))
                log.warning("%s %s was held by %s: taken over", tbl.what, label,
                            "an attachment with no record (%s)" % (cur["comment"] or "no comment")
                            if rec is None else "%s, whose netns %s is gone" % (_who(rec), rec["netns"]))
                if (o.set, cur["key"]) not in taken:
                    taken.add((o.set, cur["key"]))
                    ops.append(("delete", f, t, o.set, cur["key"]))
    for e in elems:
        cur = nf.element(f, t, e.set, e.key)
        if cur is None:
            ops.append(("create", f, t, e.set, e.key, e.chain, comment))
            continue
        holder = naming.comment_key(cur["comment"])
        if holder == own and cur["chain"] == e.chain:
            continue
        if holder != own:
            rec = _holder(tbl, holder)
            if rec is not None and records.alive(rec) is not False:
                raise errors.Internal(
                    "%s %s is already held by another attachment (%s)" % (tbl.what, e.label, _who(rec)),
                    "two attachments cannot share it; remove that attachment (CNI DEL) or choose "
                    "another value; nft list set %s %s shows the holder" % (tbl.ref, e.set))
            log.warning("%s %s was held by %s: taken over", tbl.what, e.label,
                        "an attachment with no record (%s)" % (cur["comment"] or "no comment") if rec is None
                        else "%s, whose netns %s is gone" % (_who(rec), rec["netns"]))
        ops += [("delete", f, t, e.set, e.key), ("create", f, t, e.set, e.key, e.chain, comment)]
    return ops


def _rules_in(script):
    return sum(1 for line in script.splitlines() if line.startswith("add rule "))


def ensure_skeleton(nf, tbl, extra=()):
    """nft script text that repairs what is missing: the table's skeleton
    when a ready chain does not hold its rules (missing, or flushed by a
    firewall reload), and each (chain, script) of ``extra`` (shared chains
    that elements jump to) likewise; '' when all is in place.  A few
    netlink lookups, whatever the table holds."""
    script = ""
    f, t = tbl.family, tbl.name
    if any(nf.rule_count(f, t, c) != n for c, n in tbl.ready.items()):
        script = tbl.skeleton()
    for chain, text in extra:
        if script or nf.rule_count(f, t, chain) != _rules_in(text):
            script += text
    return script


def attach(tbl, att, elems, log, data=None, extra=(), chain_script="", chains=(), netns=None):
    """Make ``elems`` the elements of attachment ``att`` (network,
    container ID, ifname) in ``tbl``; on failure, remove what it made.

    ``extra``: (chain, script) of shared chains the elements jump to, made
    when missing; ``chain_script``: nft text run every time before the
    elements (portmap's per-attachment chain, whose names are ``chains``);
    ``data``: kind-specific fields kept in the record; ``netns``: the
    attachment's CNI_NETNS, recorded with its inode so that a later ADD
    wanting one of these keys can tell a dead holder from a live one.
    """
    data = dict(data or {}, **records.netns_identity(netns))
    try:
        return _attach(tbl, att, elems, log, data, extra, chain_script, chains)
    except BaseException:
        try:
            detach(tbl, att, log)
        except Exception as exc:  # noqa: BLE001 - the first error is the one to report
            log.warning("undoing the %s elements of %s/%s failed: %s", tbl.what, att[1], att[2], exc)
        raise


def _attach(tbl, att, elems, log, data, extra, chain_script, chains):
    from cnilib.firewall import nft
    old = records.load(tbl.kind, *att)
    if old is None and records.unreadable(tbl.kind, *att):
        _sweep_one(tbl, att, log)       # what the torn record listed is found by comment
    old_elems = [Elem.from_json(e) for e in (old or {}).get("elems", ())]
    want = {(e.set, e.key) for e in elems}
    drop = [e for e in old_elems if (e.set, e.key) not in want]
    rec = dict(data or {}, elems=[e.to_json() for e in elems], chains=list(chains))
    if drop:    # until the kernel no longer holds them, the record lists them too
        records.save(tbl.kind, *att, dict(rec, elems=rec["elems"] + [e.to_json() for e in drop]))
    else:
        records.save(tbl.kind, *att, rec)
    with nftables.NfTables() as nf:
        script = ensure_skeleton(nf, tbl, extra) + chain_script
        if script:
            nft.apply(script, what="%s rules in %s" % (tbl.what, tbl.ref))
        for attempt in range(RETRIES):
            ops = _plan(nf, tbl, att, elems, drop, log)
            try:
                nf.commit(ops, what="%s elements of %s" % (tbl.what, att[1]))
                break
            except nftables.NetlinkError as exc:
                if exc.errno in (EEXIST, ENOENT) and attempt + 1 < RETRIES:
                    continue        # raced with another attachment's batch: look again
                raise _nft_error(tbl, "adding the %s elements of %s/%s" % (tbl.what, att[1], att[2]),
                                 exc) from exc
    if drop:
        records.save(tbl.kind, *att, rec)
    return rec


def detach(tbl, att, log, rec=None, nf=None):
    """Remove attachment ``att``'s elements and chains from ``tbl`` (only
    elements whose comment names it), its table of the previous design,
    then its record.  Returns the record (None when there was none).

    Pass an open ``nf`` to go on using it (and close it) afterwards, as
    bridge DEL does around the veth deletion.
    """
    if nf is None:
        with nftables.NfTables() as own_nf:
            return detach(tbl, att, log, rec, own_nf)
    rec = rec or records.load(tbl.kind, *att)
    if rec is None and records.unreadable(tbl.kind, *att):
        _sweep_one(tbl, att, log)
        records.remove(tbl.kind, *att)
    legacy = tbl.legacy_table(att)
    own = naming.element_key(*att)
    for attempt in range(RETRIES):
        try:
            ops = _teardown_ops(nf, tbl, rec, own, legacy)
        except nftables.NetlinkError as exc:
            # a lookup that failed (not a missing object: those read as
            # absent) must fail the DEL, not pass for "nothing to remove"
            raise _nft_error(tbl, "looking up the %s elements of %s/%s" % (tbl.what, att[1], att[2]),
                             exc) from exc
        try:
            nf.commit(ops, what="%s teardown of %s" % (tbl.what, att[1]))
            break
        except nftables.NetlinkError as exc:
            if exc.errno == ENOENT and attempt + 1 < RETRIES:
                continue        # something else removed one meanwhile: look again
            raise _nft_error(tbl, "removing the %s elements of %s/%s" % (tbl.what, att[1], att[2]),
                             exc) from exc
    if ops:
        log.info("removed %d %s object(s) of %s/%s from %s", len(ops), tbl.what, att[1], att[2], tbl.ref)
    if rec is not None:
        records.remove(tbl.kind, *att)
    return rec


def _teardown_ops(nf, tbl, rec, own, legacy):
    f, t = tbl.family, tbl.name
    ops = []
    if rec is not None and nf.table_exists(f, t):
        for e in map(Elem.from_json, rec.get("elems", ())):
            cur = nf.element(f, t, e.set, e.key)
            if cur is not None and naming.comment_key(cur["comment"]) == own:
                ops.append(("delete", f, t, e.set, e.key))
        for chain in rec.get("chains", ()):
            if nf.chain_exists(f, t, chain):
                ops.append(("delchain", f, t, chain))
    if legacy and nf.table_exists(f, legacy):
        ops.append(("deltable", f, legacy))
    return ops


def _sweep_one(tbl, att, log):
    """The slow path for a record that exists but cannot be read: one
    listing of the table, and whatever names the attachment goes."""
    from cnilib.firewall import nft
    own = naming.element_key(*att)
    for attempt in range(RETRIES):
        script = sweep_script(tbl, nft.list_json("table", tbl.family, tbl.name), own.__eq__,
                              tbl.chain_prefix)
        if not script:
            return
        try:
            nft.apply(script, what="%s teardown of %s (unreadable record)" % (tbl.what, att[1]))
            log.warning("the %s record of %s/%s was unreadable: removed %d object(s) found by comment",
                        tbl.what, att[1], att[2], script.count("\n"))
            return
        except errors.CniError:
            if attempt + 1 == RETRIES:
                raise


def present(tbl, att):
    """(record, [what is missing]) for CHECK: the attachment's elements
    (with its comment and jump), its chains, the rules of the skeleton and
    of the chains its elements jump to.  Record None when it has none."""
    rec = records.load(tbl.kind, *att)
    if rec is None:
        return None, []
    own = naming.element_key(*att)
    f, t = tbl.family, tbl.name
    missing = []
    with nftables.NfTables() as nf:
        targets = set()
        for e in map(Elem.from_json, rec.get("elems", ())):
            cur = nf.element(f, t, e.set, e.key)
            if cur is None or naming.comment_key(cur["comment"]) != own or cur["chain"] != e.chain:
                missing.append("%s %s" % (e.set, e.label))
            elif e.chain:
                targets.add(e.chain)
        for chain in rec.get("chains", ()):
            if not nf.chain_exists(f, t, chain):
                missing.append("chain " + chain)
        for chain, n in tbl.ready.items():
            if nf.rule_count(f, t, chain) != n:
                missing.append("the %d rule(s) of chain %s" % (n, chain))
        for chain in sorted(targets):
            if not nf.rule_count(f, t, chain):
                missing.append("the rules of chain %s" % chain)
    return rec, missing


# ---------------------------------------------------------------- GC

def _elem_text(val, types):
    """nft text of an element value from ``nft -j`` output."""
    if isinstance(val, dict) and "concat" in val:
        parts = val["concat"]
    else:
        parts = [val]
    out = []
    for i, p in enumerate(parts):
        typ = types[i] if i < len(types) else ""
        out.append('"%s"' % p if typ == "ifname" else str(p))
    return " . ".join(out)


def sweep_script(tbl, items, dead, chain_prefix=None):
    """nft lines deleting the elements (and ``chain_prefix`` chains) of
    ``tbl`` whose key satisfies ``dead(key)``, from a ``nft -j list table``."""
    elems, chains = [], []
    for it in items:
        s = it.get("set") or it.get("map")
        if isinstance(s, dict):
            types = s.get("type")
            types = types if isinstance(types, list) else [types]
            for e in s.get("elem") or ():
                val = e[0] if isinstance(e, list) else e
                if isinstance(val, dict) and "elem" in val:
                    comment, val = val["elem"].get("comment"), val["elem"].get("val")
                else:
                    comment = None
                key = naming.comment_key(comment)
                if key and dead(key):
                    elems.append("delete element %s %s { %s }\n"
                                 % (tbl.ref, s["name"], _elem_text(val, types)))
        c = it.get("chain")
        if chain_prefix and isinstance(c, dict):
            key = naming.chain_key(chain_prefix, c.get("name", ""))
            if key and dead(key):
                chains.append("delete chain %s %s\n" % (tbl.ref, c["name"]))
    return "".join(elems + chains)


def gc(tbl, network, valid, log):
    """Remove the state of ``network``'s attachments not in ``valid``
    ({(container ID, ifname)}): by record, then by one sweep of the table,
    then the previous design's tables.  Returns what was removed."""
    from cnilib.firewall import nft
    removed = []
    for rec in records.scan(tbl.kind, network):
        if (rec["cid"], rec["if"]) not in valid:
            detach(tbl, (network, rec["cid"], rec["if"]), log, rec)
            removed.append("%s/%s" % (rec["cid"], rec["if"]))
    keep = {naming.element_key(network, cid, ifn) for cid, ifn in valid}
    prefix = naming.net_hash(network) + "-"

    def dead(key):
        return key.startswith(prefix) and key not in keep
    for attempt in range(RETRIES):
        script = sweep_script(tbl, nft.list_json("table", tbl.family, tbl.name), dead, tbl.chain_prefix)
        if not script:
            break
        try:
            nft.apply(script, what="%s gc of network %s" % (tbl.what, network))
            removed.append("%d unrecorded object(s)" % script.count("\n"))
            break
        except errors.CniError:
            if attempt + 1 == RETRIES:
                raise
    if tbl.legacy:
        keep_tables = {naming.attachment_table(tbl.legacy, network, cid, ifn) for cid, ifn in valid}
        old_prefix = naming.network_table_prefix(tbl.legacy, network)
        with nftables.NfTables() as nf:
            stale = [n for f, n in nf.tables() if f == tbl.family and n.startswith(old_prefix)
                     and n not in keep_tables]
            nf.commit([("deltable", tbl.family, n) for n in stale], what="%s gc" % tbl.what)
        removed += stale
    for what in removed:
        log.info("gc: removed %s state %s", tbl.what, what)
    return removed
