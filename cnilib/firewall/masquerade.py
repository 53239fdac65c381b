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
from cnilib.firewall import naming, shared

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
    from cnilib.firewall import iptables
    return "-m comment --comment %s" % iptables.quote(naming.go_comment(network, container_id))


def render_iptables_setup(family, network, container_id, cidrs, saved):
    """iptables-restore lines (nat table) adding what ``saved`` lacks of the
    reference's masquerade chain for these IPs of ``family``."""
    from cnilib.firewall import iptables
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
    from cnilib.firewall import iptables
    chain = naming.go_chain(network, container_id)
    out = ["-D" + r[2:] for r in iptables.rules(saved, "POSTROUTING")
           if r.endswith(" -j " + chain)]
    if chain in iptables.chains(saved):
        out += ["-F " + chain, "-X " + chain]
    return out


def go_chain_owners(network, saved):
    """{container ID: chain} of the reference masquerade chains of ``network``
    that POSTROUTING jumps to, read from their comments."""
    from cnilib.firewall import iptables
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


# ------------------------------------------------------------ the backends
#
# One interface, two backends, as the reference's ipmasq (set up with the
# chosen backend, torn down with both):
#   add(att, cidrs, log, netns)  masquerade the attachment's addresses
#   check(att)                   None when this backend holds no form of the
#                                attachment, else what is missing ('' for nothing)
#   teardown(att, nf, log)       remove every form of the attachment this
#                                backend's kind can hold, ours or the Go
#                                plugin's; ``nf``: an open NfTables or None
#   gc(network, valid, log)      the same for attachments not in ``valid``;
#                                returns what it removed
# ``att`` is (network, container ID, ifname).


class Nftables:
    """Our elements in ``inet pycni-masq`` (cnilib.firewall.shared), the
    previous design's table, and the Go plugin's nftables rules (table
    ``inet cni_plugins_masquerade``, comment starting with its key)."""

    name = "nftables"

    def add(self, att, cidrs, log, netns=None):
        elems, chains = elements(cidrs)
        shared.attach(TABLE, att, elems, log, data={"cidrs": list(cidrs)}, extra=chains, netns=netns)

    def check(self, att):
        from cnilib.firewall import nft
        rec, missing = shared.present(TABLE, att)
        if rec is not None:
            return "missing in nftables table %s: %s" % (T, ", ".join(missing)) if missing else ""
        legacy = TABLE.legacy_table(att)
        if any(name == legacy for _, name in nft.tables(legacy)):
            return ""
        key = naming.go_nft_masq_key(*att)
        if _go_nft_deletes(lambda c: c.startswith(key)):
            return ""
        return None

    def teardown(self, att, nf, log):
        """Ours (and the previous design's table) by record, then the Go
        plugin's rules when its table exists; raises CniError for what
        failed once both were tried."""
        if nf is None:
            return
        problems = []
        try:
            shared.detach(TABLE, att, log, nf=nf)
        except errors.CniError as exc:
            problems.append(exc.msg)
        try:
            go_nft = nf.table_exists("inet", GO_NFT_TABLE)
        except OSError:
            go_nft = False
        if go_nft:
            key = naming.go_nft_masq_key(*att)
            go = _go_nft_deletes(lambda c: c.startswith(key))
            if go:
                from cnilib.firewall import nft
                try:
                    nft.apply(go, what="removal of the reference nftables masquerade rules of %s" % att[1])
                    log.info("removed %d reference nftables masquerade rule(s)", go.count("\n"))
                except errors.CniError as exc:
                    problems.append(exc.msg)
        if problems:
            raise errors.Internal("; ".join(problems))

    def gc(self, network, valid, log):
        from cnilib.firewall import nft
        removed = shared.gc(TABLE, network, valid, log) if nft.available() else []
        go_keep = {naming.go_nft_masq_key(network, cid, ifn) for cid, ifn in valid}
        go_prefix = naming.sha512_hex(network)[:16] + "-"
        go = _go_nft_deletes(lambda c: c.startswith(go_prefix) and c[:33] not in go_keep)
        if go:
            nft.apply(go, what="masquerade gc of network %s" % network)
            removed.append("%d reference nftables rule(s)" % go.count("\n"))
            log.info("gc: removed masquerade state %s", removed[-1])
        return removed


class Iptables:
    """The reference's chain ``CNI-<sha512(network + container ID)>`` and its
    POSTROUTING jumps in the nat table, ours or the Go plugin's: one
    iptables.edit per family and operation, adding only what
    iptables-save does not already show."""

    name = "iptables"

    def add(self, att, cidrs, log, netns=None):
        from cnilib.firewall import iptables
        network, container_id, _ifname = att
        for fam in sorted({_split(c)[0] for c in cidrs}):
            def lines(saved, fam=fam):
                return render_iptables_setup(fam, network, container_id, cidrs, saved)
            iptables.edit(fam, "nat", lines, what="masquerade rules for %s" % container_id)

    def check(self, att):
        from cnilib.firewall import iptables
        chain = naming.go_chain(att[0], att[1])
        for fam in (4, 6):
            if not iptables.may_hold(fam, "nat", [chain]):
                continue
            try:
                if chain in iptables.chains(iptables.save(fam, "nat")):
                    return ""
            except errors.CniError:
                continue
        return None

    def teardown(self, att, nf, log):
        """Asked over netlink first, so iptables-save runs only when there is
        something; a family that fails raises after the other was tried."""
        from cnilib.firewall import iptables
        network, container_id, _ifname = att
        chain = naming.go_chain(network, container_id)
        problems = []
        for fam in [f for f in (4, 6) if iptables.may_hold(f, "nat", [chain], nf)]:
            try:
                lines = iptables.edit(fam, "nat",
                                      lambda saved: render_iptables_teardown(network, container_id, saved),
                                      what="masquerade teardown for %s" % container_id)
                if lines:
                    log.info("removed iptables masquerade chain %s (IPv%d)", chain, fam)
            except errors.CniError as exc:
                problems.append(exc.msg)
        if problems:
            raise errors.Internal("; ".join(problems))

    def gc(self, network, valid, log):
        from cnilib.firewall import iptables
        valid_ids = {cid for cid, _ in valid}
        removed = []
        for fam in (4, 6):
            def lines(saved):
                out = []
                for cid, chain in go_chain_owners(network, saved).items():
                    if cid not in valid_ids:
                        out += render_iptables_teardown(network, cid, saved)
                        removed.append(chain)
                return out
            iptables.edit(fam, "nat", lines, what="masquerade gc of network %s" % network,
                          unreadable_ok=True)
        for chain in removed:
            log.info("gc: removed masquerade state %s", chain)
        return removed


NFTABLES, IPTABLES = Nftables(), Iptables()
BY_NAME = {"nftables": NFTABLES, "iptables": IPTABLES}


# ------------------------------------------------------------ ADD, in two stages

class Setup:
    """An attachment's masquerade between the two stages of bridge ADD: the
    backend start_setup chose (``auto``: chosen here, not by the config),
    and what finish_setup did (``done``: the backend's name, once done)."""

    __slots__ = ("backend", "auto", "att", "cidrs", "netns", "done")

    def __init__(self, backend, auto, att, cidrs, netns):
        self.backend, self.auto, self.att, self.cidrs, self.netns = backend, auto, att, cidrs, netns
        self.done = None


def setup(backend, network, container_id, ifname, cidrs, log, netns=None):
    """Masquerade ``cidrs`` ('ip/prefix') of one attachment.  ``backend`` is
    'nftables', 'iptables' or None (nftables when nft works)."""
    return finish_setup(start_setup(backend, network, container_id, ifname, cidrs, netns), log)


def start_setup(backend, network, container_id, ifname, cidrs, netns=None):
    """Choose the backend; ``finish_setup`` does the work once the
    container is set up (ADD's undo list then knows it may have to remove
    rules)."""
    from cnilib.firewall import nft
    att = (network, container_id, ifname)
    if backend is None:
        return Setup(NFTABLES if nft.available() else IPTABLES, True, att, cidrs, netns)
    if backend == "nftables" and not nft.available():
        raise errors.Internal("masquerade rules for %s failed: nftables is not usable here"
                              % container_id,
                              "the nft binary is missing or the kernel has no nf_tables; "
                              "install nftables or choose ipMasqBackend iptables")
    return Setup(BY_NAME[backend], False, att, cidrs, netns)


def finish_setup(t, log):
    """Write the rules; returns the backend used.  Safe to call twice."""
    if t.done is None:
        if t.auto and t.backend is IPTABLES:
            log.info("nft is not usable here: masquerading with iptables")
        t.backend.add(t.att, t.cidrs, log, t.netns)
        t.done = t.backend.name
    return t.done


def abort_setup(t, log):
    """Undo step of a failed ADD: remove every form of the attachment's rules."""
    teardown(*t.att, log)


# ------------------------------------------------------------ DEL, in two stages (both backends)

class Teardown:
    """An attachment's masquerade between the two stages of bridge DEL: the
    nftables forms are gone (start_teardown) and the netlink socket is kept
    open for finish_teardown's lookups; ``problems`` collects what failed."""

    __slots__ = ("att", "nf", "problems")

    def __init__(self, att):
        self.att, self.nf, self.problems = att, None, []


def teardown(network, container_id, ifname, log):
    """Remove every masquerade form of the attachment; missing parts are fine."""
    finish_teardown(start_teardown(network, container_id, ifname, log), log)


def start_teardown(network, container_id, ifname, log):
    """Remove the nftables forms (ours by record, over netlink) and return
    with the netlink socket still open for ``finish_teardown``'s lookups:
    bridge DEL deletes the veth in between, so the kernel frees the elements
    while the veth is unregistered (an RCU grace period each, overlapping)."""
    from cnilib.kernel import nftables
    t = Teardown((network, container_id, ifname))
    try:
        t.nf = nftables.NfTables()
        NFTABLES.teardown(t.att, t.nf, log)
    except errors.CniError as exc:
        t.problems.append(exc.msg)
    except OSError as exc:      # no nf_tables here: none of our elements can exist
        log.debug("masquerade teardown: nf_tables not usable (%s)", exc)
    return t


def finish_teardown(t, log):
    """Remove what the iptables backend (or the Go plugin) left there,
    then close the socket; raise when a usable backend failed."""
    nf, t.nf = t.nf, None
    try:
        IPTABLES.teardown(t.att, nf, log)
    except errors.CniError as exc:
        t.problems.append(exc.msg)
    finally:
        if nf is not None:
            nf.close()
    if t.problems:
        raise errors.Internal("masquerade teardown of %s/%s failed: %s"
                              % (t.att[1], t.att[2], "; ".join(t.problems)))


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
    from cnilib.firewall import nft
    return _go_nft_rule_deletes(nft.list_json("chain", "inet", GO_NFT_TABLE, GO_NFT_CHAIN), match)


# ------------------------------------------------------------ CHECK and GC (both backends)

def present(network, container_id, ifname):
    """'' when some masquerade form of the attachment exists (CHECK), else
    what is missing."""
    att = (network, container_id, ifname)
    for backend in (NFTABLES, IPTABLES):
        found = backend.check(att)
        if found is not None:
            return found
    return "expected elements in nftables table %s (no record of this attachment) or iptables chain %s" % (
        T, naming.go_chain(network, container_id))


def gc(network, valid, log):
    """Remove the masquerade state of ``network``'s attachments not in
    ``valid`` (a set of (container ID, ifname)); returns what was removed."""
    return NFTABLES.gc(network, valid, log) + IPTABLES.gc(network, valid, log)
