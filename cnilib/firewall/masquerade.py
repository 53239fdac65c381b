"""Masquerade for a container's IPs (bridge ``ipMasq``), keyed by attachment.

Traffic from a container IP to anything outside its subnet (and not
multicast) leaves with the host's address.  State is keyed by (network,
container ID, ifname) and DEL and GC find it by that key alone, never by
addresses read back from a netns that may be gone.

nftables (the default when nft and nf_tables work): one table for every
attachment, ``inet pycni-masq``, written once:

    map saddr4 { ipv4_addr : verdict }  / saddr6      container IP -> jump its subnet's chain
    chain postrouting  nat, srcnat:  ip saddr vmap @saddr4; ip6 saddr vmap @saddr6
    chain subnet-<hash of the subnet>:  ip daddr <subnet> return;
                                        ip daddr 224.0.0.0/4 return; masquerade

An attachment is one element per IP, ``<ip> comment "pycni <key> net=..
id=.. if=.." : jump subnet-<hash>``, added and removed over netlink with
its record in the state dir (cnilib.firewall.shared): O(1) whatever the
node holds, and DEL needs no listing.

iptables (``ipMasqBackend: iptables``, or when nft is unusable): the
reference's own chain ``CNI-<sha512(network + container ID)>`` and rules,
applied in one ``iptables-restore --noflush`` batch per family, adding only
the lines iptables-save does not already show.

DEL tears down every form the attachment can have, whichever backend made
it: our elements, the previous design's table ``inet pycni-masq-<net
hash>-<attachment hash>``, the Go plugin's nftables rules (table ``inet
cni_plugins_masquerade``, comment starting with its key) and the reference
iptables chain with its POSTROUTING jumps.  Whether the last two exist is
asked over netlink first, so iptables-save runs only when they do.
"""

from cnilib.base import errors
from cnilib.firewall import iptables, naming, nft, shared

GO_NFT_TABLE = "cni_plugins_masquerade"
GO_NFT_CHAIN = "masq_checks"
MCAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
TABLE_NAME = "pycni-masq"
T = "inet " + TABLE_NAME
SET = {4: "saddr4", 6: "saddr6"}


def _split(cidr):
    """'10.1.0.5/24' -> (family, '10.1.0.5', '10.1.0.0/24')."""
    from cnilib.base import addr
    fam, n, _prefix = addr.cidr(cidr)
    return fam, addr.fmt(fam, n), addr.network(cidr)


# ------------------------------------------------------------ rendering (pure)

def render_skeleton():
    """The table, its maps and its base chain (idempotent: re-running
    rewrites the two dispatch rules, never duplicates them)."""
    return ("add table %s { comment \"pycni bridge ipMasq: container IP -> its subnet's chain\" ; }\n"
            "add map %s saddr4 { type ipv4_addr : verdict ; }\n"
            "add map %s saddr6 { type ipv6_addr : verdict ; }\n"
            "add chain %s postrouting { type nat hook postrouting priority srcnat ; policy accept ; }\n"
            "flush chain %s postrouting\n"
            "add rule %s postrouting ip saddr vmap @saddr4\n"
            "add rule %s postrouting ip6 saddr vmap @saddr6\n" % ((T,) * 7))


def subnet_chain(net):
    """Chain name of a subnet ('10.22.0.0/24'): a hash, the subnet is in its comment."""
    return "subnet-" + naming.sha512_hex("pycni-subnet\0" + net)[:12]


def render_subnet_chain(fam, net):
    c = subnet_chain(net)
    p = "ip" if fam == 4 else "ip6"
    return ("add chain %s %s { comment \"masquerade from %s to outside it\" ; }\n"
            "flush chain %s %s\n"
            "add rule %s %s %s daddr %s return\n"
            "add rule %s %s %s daddr %s return\n"
            "add rule %s %s masquerade\n"
            % (T, c, net, T, c, T, c, p, net, T, c, p, MCAST[fam], T, c))


def elements(cidrs):
    """([Elem], [(chain, script)]) of an attachment's IPs ('ip/prefix')."""
    elems, chains = [], {}
    for cidr in cidrs:
        fam, ip, net = _split(cidr)
        chain = subnet_chain(net)
        elems.append(shared.Elem(SET[fam], shared.ip_key(fam, ip), chain, ip))
        chains.setdefault(chain, render_subnet_chain(fam, net))
    return elems, sorted(chains.items())


TABLE = shared.Table("masq", "inet", TABLE_NAME, "masquerade", {"postrouting": 2}, render_skeleton,
                     legacy="masq")


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

def setup(backend, network, container_id, ifname, cidrs, log, netns=None):
    """Masquerade ``cidrs`` ('ip/prefix') of one attachment.  ``backend`` is
    'nftables', 'iptables' or None (nftables when nft works)."""
    return finish_setup(start_setup(backend, network, container_id, ifname, cidrs, netns), log)


def start_setup(backend, network, container_id, ifname, cidrs, netns=None):
    """Choose the backend; ``finish_setup`` does the work once the
    container is set up (ADD's undo list then knows it may have to remove
    rules)."""
    if backend is None:
        backend = "nftables" if nft.available() else None
    elif backend == "nftables" and not nft.available():
        raise errors.Internal("masquerade rules for %s failed: nftables is not usable here"
                              % container_id,
                              "the nft binary is missing or the kernel has no nf_tables; "
                              "install nftables or choose ipMasqBackend iptables")
    return {"backend": backend, "key": (network, container_id, ifname), "cidrs": cidrs, "done": None,
            "netns": netns}


def finish_setup(t, log):
    """Write the rules; returns the backend used.  Safe to call twice."""
    if t["done"] is not None:
        return t["done"]
    network, container_id, ifname = t["key"]
    if t["backend"] == "nftables":
        elems, chains = elements(t["cidrs"])
        shared.attach(TABLE, t["key"], elems, log, data={"cidrs": list(t["cidrs"])}, extra=chains,
                      netns=t["netns"])
        t["done"] = "nftables"
        return "nftables"
    if t["backend"] is None:
        log.info("nft is not usable here: masquerading with iptables")
    _iptables_setup(network, container_id, t["cidrs"])
    t["done"] = "iptables"
    return "iptables"


def abort_setup(t, log):
    """Undo step of a failed ADD: remove every form of the attachment's rules."""
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
    finish_teardown(start_teardown(network, container_id, ifname, log), log)


def start_teardown(network, container_id, ifname, log):
    """Remove our elements (by record, over netlink) and return with the
    netlink socket still open for ``finish_teardown``'s lookups: bridge DEL
    deletes the veth in between, so the kernel frees the elements while the
    veth is unregistered (an RCU grace period each, overlapping)."""
    from cnilib.kernel import nftables
    t = {"key": (network, container_id, ifname), "nf": None, "problems": []}
    try:
        t["nf"] = nftables.NfTables()
        shared.detach(TABLE, t["key"], log, nf=t["nf"])
    except errors.CniError as exc:
        t["problems"].append(exc.msg)
    except OSError as exc:      # no nf_tables here: none of our elements can exist
        log.debug("masquerade teardown: nf_tables not usable (%s)", exc)
    return t


def finish_teardown(t, log):
    """Remove what the Go plugin and the iptables backend left (asked over
    netlink first, so iptables-save runs only when there is something),
    then close the socket; raise when a usable backend failed."""
    network, container_id, ifname = t["key"]
    problems = t["problems"]
    chain = naming.go_chain(network, container_id)
    nf, t["nf"] = t["nf"], None
    try:
        go_nft = nf is not None and nf.table_exists("inet", GO_NFT_TABLE)
        fams = [f for f in (4, 6) if iptables.may_hold(f, "nat", [chain], nf)]
    except OSError:
        go_nft, fams = False, [f for f in (4, 6) if iptables.may_hold(f, "nat", [chain])]
    finally:
        if nf is not None:
            nf.close()
    if go_nft:
        key = naming.go_nft_masq_key(network, container_id, ifname)
        go = _go_nft_deletes(lambda c: c.startswith(key))
        if go:
            try:
                nft.apply(go, what="removal of the reference nftables masquerade rules of %s"
                          % container_id)
                log.info("removed %d reference nftables masquerade rule(s)", go.count("\n"))
            except errors.CniError as exc:
                problems.append(exc.msg)
    for fam in fams:
        try:
            with iptables.lock():
                lines = render_iptables_teardown(network, container_id, iptables.save(fam, "nat"))
                iptables.restore(fam, "nat", lines, what="masquerade teardown for %s" % container_id)
            if lines:
                log.info("removed iptables masquerade chain %s (IPv%d)", chain, fam)
        except errors.CniError as exc:
            problems.append(exc.msg)
    if problems:
        raise errors.Internal("masquerade teardown of %s/%s failed: %s"
                              % (container_id, ifname, "; ".join(problems)))


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
    """'' when some masquerade form of the attachment exists (CHECK), else
    what is missing."""
    att = (network, container_id, ifname)
    rec, missing = shared.present(TABLE, att)
    if rec is not None:
        if missing:
            return "missing in nftables table %s: %s" % (T, ", ".join(missing))
        return ""
    legacy = TABLE.legacy_table(att)
    if any(name == legacy for _, name in nft.tables(legacy)):
        return ""
    key = naming.go_nft_masq_key(network, container_id, ifname)
    if _go_nft_deletes(lambda c: c.startswith(key)):
        return ""
    chain = naming.go_chain(network, container_id)
    for fam in (4, 6):
        if not iptables.may_hold(fam, "nat", [chain]):
            continue
        try:
            if chain in iptables.chains(iptables.save(fam, "nat")):
                return ""
        except errors.CniError:
            continue
    return "expected elements in nftables table %s (no record of this attachment) or iptables chain %s" % (
        T, chain)


def gc(network, valid, log):
    """Remove the masquerade state of ``network``'s attachments not in
    ``valid`` (a set of (container ID, ifname)); returns what was removed."""
    removed = shared.gc(TABLE, network, valid, log) if nft.available() else []
    other = []
    go_keep = {naming.go_nft_masq_key(network, cid, ifn) for cid, ifn in valid}
    go_prefix = naming.sha512_hex(network)[:16] + "-"
    go = _go_nft_deletes(lambda c: c.startswith(go_prefix) and c[:33] not in go_keep)
    if go:
        nft.apply(go, what="masquerade gc of network %s" % network)
        other.append("%d reference nftables rule(s)" % go.count("\n"))
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
                    other.append(chain)
            if lines:
                iptables.restore(fam, "nat", lines, what="masquerade gc of network %s" % network)
    for what in other:
        log.info("gc: removed masquerade state %s", what)
    return removed + other
