"""Masquerade for a container's IPs (bridge ``ipMasq``), keyed by attachment.

Traffic from a container IP to anything outside its subnet (and not
multicast) leaves with the host's address.  State is keyed by (network,
container ID, ifname) and DEL and GC find it by that key alone, never by
addresses read back from a netns that may be gone.

nftables (the default when ``nft`` works): one table per attachment,
``inet pycni-masq-<net hash>-<attachment hash>``, holding one postrouting
nat chain.  ADD writes it with ``add table; flush table; add chain; add
rule...`` in one ``nft -f -`` transaction: re-running replaces the rules,
never duplicates them, and a fresh ADD deletes nothing (any deletion in a
commit makes the kernel wait an RCU grace period, ~15 ms here, which
``add; delete; add`` would pay on every ADD).  DEL is ``add table; delete
table``, O(1) and idempotent.

iptables (``ipMasqBackend: iptables``, or when nft is unusable): the
reference's own chain ``CNI-<sha512(network + container ID)>`` and rules,
applied in one ``iptables-restore --noflush`` batch per family, adding only
the lines iptables-save does not already show.

DEL tears down every form the attachment can have, whichever backend made
it: our table, the Go plugin's nftables rules (table ``inet
cni_plugins_masquerade``, comment starting with its key) and the
reference iptables chain with its POSTROUTING jumps, found by chain name.
"""

from cnilib import errors, proc
from cnilib.firewall import iptables, naming, nft

GO_NFT_TABLE = "cni_plugins_masquerade"
GO_NFT_CHAIN = "masq_checks"
MCAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
COMMENT_MAX = 128   # nftables' NFT_USERDATA_MAXLEN for comments


def _split(cidr):
    """'10.1.0.5/24' -> (family, '10.1.0.5', '10.1.0.0/24')."""
    import ipaddress
    iface = ipaddress.ip_interface(cidr)
    return iface.version, str(iface.ip), str(iface.network)


# ------------------------------------------------------------ rendering (pure)

def table_name(network, container_id, ifname):
    return naming.attachment_table("masq", network, container_id, ifname)


def render_nft_setup(network, container_id, ifname, cidrs):
    """The one transaction that (re)writes an attachment's masquerade table."""
    t = "inet " + table_name(network, container_id, ifname)
    comment = naming.attachment_comment("masq", network, container_id, ifname)[:COMMENT_MAX]
    lines = ["add table %s { comment %s ; }" % (t, nft.quote(comment)),
             "flush table %s" % t,
             "add chain %s postrouting { type nat hook postrouting priority srcnat ; "
             "policy accept ; }" % t]
    for cidr in cidrs:
        fam, ip, net = _split(cidr)
        p = "ip" if fam == 4 else "ip6"
        lines.append("add rule %s postrouting %s saddr %s %s daddr != %s %s daddr != %s masquerade"
                     % (t, p, ip, p, net, p, MCAST[fam]))
    return "\n".join(lines) + "\n"


def render_nft_teardown(network, container_id, ifname):
    t = "inet " + table_name(network, container_id, ifname)
    return "add table %s\ndelete table %s\n" % (t, t)


def _go_comment_arg(network, container_id):
    return '-m comment --comment "%s"' % naming.go_comment(network, container_id).replace('"', '\\"')


def render_iptables_setup(family, network, container_id, cidrs, saved):
    """iptables-restore lines (nat table) adding what ``saved`` lacks of the
    reference's masquerade chain for these IPs of ``family``."""
    chain = naming.go_chain(network, container_id)
    c = _go_comment_arg(network, container_id)
    have = set(iptables.rules(saved))
    out = []
    if chain not in iptables.chains(saved):
        out.append(":%s - [0:0]" % chain)
    for cidr in cidrs:
        fam, ip, net = _split(cidr)
        if fam != family:
            continue
        host = "%s/%d" % (ip, 32 if fam == 4 else 128)
        for line in ("-A %s -d %s %s -j ACCEPT" % (chain, net, c),
                     "-A %s ! -d %s %s -j MASQUERADE" % (chain, MCAST[fam], c),
                     "-A POSTROUTING -s %s %s -j %s" % (host, c, chain)):
            if line not in have and line not in out:
                out.append(line)
    return out


def render_iptables_teardown(network, container_id, saved):
    """Lines removing the reference chain of (network, container ID): every
    POSTROUTING jump to it (whatever its source address), then the chain."""
    chain = naming.go_chain(network, container_id)
    out = ["-D" + r[2:] for r in iptables.rules(saved, "POSTROUTING")
           if r.endswith(" -j " + chain)]
    if chain in iptables.chains(saved):
        out += ["-F " + chain, "-X " + chain]
    return out


def go_chain_owners(network, saved):
    """{container ID: chain} of the reference masquerade chains of ``network``
    that POSTROUTING jumps to, read from their comments."""
    head = '--comment "name: \\"%s\\" id: \\"' % network
    out = {}
    for r in iptables.rules(saved, "POSTROUTING"):
        i = r.find(head)
        if i < 0:
            continue
        rest = r[i + len(head):]
        cid = rest.split('\\"', 1)[0]
        chain = naming.go_chain(network, cid)
        if r.endswith(" -j " + chain):
            out[cid] = chain
    return out


# ------------------------------------------------------------ operations

def setup(backend, network, container_id, ifname, cidrs, log):
    """Masquerade ``cidrs`` ('ip/prefix') of one attachment.  ``backend`` is
    'nftables', 'iptables' or None (nftables when nft works)."""
    return finish_setup(start_setup(backend, network, container_id, ifname, cidrs), log)


def start_setup(backend, network, container_id, ifname, cidrs):
    """Start the nftables transaction and return at once, so that ADD sets
    up the container while nft runs; ``finish_setup`` collects it (and falls
    back to iptables when nft turns out unusable)."""
    pending = None
    if backend in (None, "nftables"):
        script = render_nft_setup(network, container_id, ifname, cidrs)
        try:
            pending = proc.start(["nft", "-f", "-"], script.encode(), timeout=30)
        except OSError:
            pending = None
    return {"backend": backend, "key": (network, container_id, ifname), "cidrs": cidrs,
            "nft": pending, "done": None}


def finish_setup(t, log):
    """Complete ``start_setup``; returns the backend used.  Safe to call twice."""
    if t["done"] is not None:
        return t["done"]
    network, container_id, ifname = t["key"]
    backend, p = t["backend"], t["nft"]
    t["nft"] = None
    if p is not None:
        r = p.wait()
        if r.rc == 0:
            t["done"] = "nftables"
            return "nftables"
        if backend == "nftables" or nft.available():
            raise errors.Internal("masquerade rules for %s failed: nft exit status %d: %s"
                                  % (container_id, r.rc, r.err_text(600)))
    elif backend == "nftables":
        raise errors.Internal("masquerade rules for %s failed: the nft binary is not installed"
                              % container_id, "install nftables or choose ipMasqBackend iptables")
    if backend is None:
        log.info("nft is not usable here: masquerading with iptables")
    _iptables_setup(network, container_id, t["cidrs"])
    t["done"] = "iptables"
    return "iptables"


def abort_setup(t, log):
    """Undo step of a failed ADD: let a started transaction finish, then
    remove every form of the attachment's rules."""
    p, t["nft"] = t["nft"], None
    if p is not None:
        p.wait()
    network, container_id, ifname = t["key"]
    teardown(network, container_id, ifname, log)


def _iptables_setup(network, container_id, cidrs):
    fams = sorted({_split(c)[0] for c in cidrs})
    with iptables.lock():
        for fam in fams:
            saved = iptables.save(fam, "nat")
            iptables.restore(fam, "nat", render_iptables_setup(fam, network, container_id, cidrs, saved),
                             what="masquerade rules for %s" % container_id)


def teardown(network, container_id, ifname, log):
    """Remove every masquerade form of the attachment; missing parts are fine."""
    finish_teardown(start_teardown(network, container_id, ifname), log)


def start_teardown(network, container_id, ifname):
    """Start the teardown's helpers (the nft deletion of our table, and the
    listings that find what the Go plugin made) and return at once: DEL
    deletes the container link meanwhile, and both wait on the kernel
    together.  Finish with ``finish_teardown``."""
    def spawn(argv, stdin=b""):
        try:
            return proc.start(argv, stdin, timeout=30)
        except OSError:
            return None     # not installed: nothing of that kind to remove
    return {
        "key": (network, container_id, ifname),
        "nft": spawn(["nft", "-f", "-"], render_nft_teardown(network, container_id, ifname).encode()),
        "go_nft": spawn(["nft", "-j", "list", "chain", "inet", GO_NFT_TABLE, GO_NFT_CHAIN]),
        4: spawn(["iptables-save", "-t", "nat"]),
        6: spawn(["ip6tables-save", "-t", "nat"]),
    }


def finish_teardown(t, log):
    """Collect ``start_teardown``'s helpers and remove what they found.

    A backend that is not installed is skipped so that DEL completes; an
    error is raised only when a usable backend failed to remove rules."""
    network, container_id, ifname = t["key"]
    problems = []
    done = {k: (p.wait() if p is not None else None) for k, p in t.items() if k != "key"}
    r = done["nft"]
    if r is not None and r.rc != 0 and nft.available():
        problems.append("nft: %s" % r.err_text(300))
    key = naming.go_nft_masq_key(network, container_id, ifname)
    go = _go_nft_rule_deletes(_json_items(done["go_nft"]), lambda c: c.startswith(key))
    if go:
        try:
            nft.apply(go, what="removal of the reference nftables masquerade rules of %s"
                      % container_id)
            log.info("removed %d reference nftables masquerade rule(s)", go.count("\n"))
        except errors.CniError as exc:
            problems.append(exc.msg)
    chain = naming.go_chain(network, container_id)
    for fam in (4, 6):
        r = done[fam]
        if r is None or r.rc != 0:
            continue
        if not render_iptables_teardown(network, container_id, r.out.decode("utf-8", "replace")):
            continue
        try:
            with iptables.lock():     # read again under the lock, then write
                lines = render_iptables_teardown(network, container_id, iptables.save(fam, "nat"))
                iptables.restore(fam, "nat", lines, what="masquerade teardown for %s" % container_id)
            log.info("removed iptables masquerade chain %s (IPv%d)", chain, fam)
        except errors.CniError as exc:
            problems.append(exc.msg)
    if problems:
        raise errors.Internal("masquerade teardown of %s/%s failed: %s"
                              % (container_id, ifname, "; ".join(problems)))


def _json_items(r):
    """The "nftables" items of an ``nft -j list`` run ([] when it failed)."""
    if r is None or r.rc != 0:
        return []
    from cnilib import jsonio
    try:
        return jsonio.loads(r.out).get("nftables", [])
    except (ValueError, AttributeError):
        return []


def _go_nft_rule_deletes(items, match):
    out = []
    for item in items:
        rule = item.get("rule")
        if rule and match(rule.get("comment") or ""):
            out.append("delete rule inet %s %s handle %d\n" % (GO_NFT_TABLE, GO_NFT_CHAIN, rule["handle"]))
    return "".join(out)


def _go_nft_deletes(match):
    """'delete rule' lines for the Go plugin's nftables masquerade rules whose
    comment satisfies ``match`` ('' when its table does not exist)."""
    return _go_nft_rule_deletes(nft.list_json("chain", "inet", GO_NFT_TABLE, GO_NFT_CHAIN), match)


def present(network, container_id, ifname):
    """True when some masquerade form of the attachment exists (CHECK)."""
    t = table_name(network, container_id, ifname)
    if any(name == t for _, name in nft.tables(t)):
        return True
    key = naming.go_nft_masq_key(network, container_id, ifname)
    if _go_nft_deletes(lambda c: c.startswith(key)):
        return True
    chain = naming.go_chain(network, container_id)
    for fam in (4, 6):
        try:
            if chain in iptables.chains(iptables.save(fam, "nat")):
                return True
        except errors.CniError:
            continue
    return False


def gc(network, valid, log):
    """Remove the masquerade state of ``network``'s attachments not in
    ``valid`` (a set of (container ID, ifname)); returns what was removed."""
    removed = []
    keep = {table_name(network, cid, ifn) for cid, ifn in valid}
    script = ""
    for fam, name in nft.tables(naming.network_table_prefix("masq", network)):
        if name not in keep:
            script += "add table %s %s\ndelete table %s %s\n" % (fam, name, fam, name)
            removed.append(name)
    go_keep = {naming.go_nft_masq_key(network, cid, ifn) for cid, ifn in valid}
    go_prefix = naming.sha512_hex(network)[:16] + "-"
    go = _go_nft_deletes(lambda c: c.startswith(go_prefix) and c[:33] not in go_keep)
    if go:
        removed.append("%d reference nftables rule(s)" % go.count("\n"))
    script += go
    if script:
        nft.apply(script, what="masquerade gc of network %s" % network)
    valid_ids = {cid for cid, _ in valid}
    with iptables.lock():
        for fam in (4, 6):
            try:
                saved = iptables.save(fam, "nat")
            except errors.CniError:
                continue
            lines = []
            for cid, chain in go_chain_owners(network, saved).items():
                if cid not in valid_ids:
                    lines += render_iptables_teardown(network, cid, saved)
                    removed.append(chain)
            if lines:
                iptables.restore(fam, "nat", lines, what="masquerade gc of network %s" % network)
    for what in removed:
        log.info("gc: removed masquerade state %s", what)
    return removed
