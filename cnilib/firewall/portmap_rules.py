"""portmap's rule text for both backends: pure functions, no I/O.

Everything here turns validated values (cnilib.firewall.portmap checks them) into
the exact text handed to ``nft -f -`` or ``iptables-restore --noflush``
(and the set elements cnilib.firewall.shared adds over netlink), and reads
back what ``nft -j list`` and ``iptables-save`` print, so the golden tests
in tests/unit/test_hostport_rules.py pin every byte.

nftables: one table for every attachment, ``inet pycni-hostport``:

    prerouting / output   nat, priority -100: fib daddr type local jump hostports
    hostports             ip daddr . meta l4proto . th dport vmap @hostip4   (hostIP mappings)
                          ip6 daddr . meta l4proto . th dport vmap @hostip6
                          meta nfproto ipv4 meta l4proto . th dport vmap @ports4
                          meta nfproto ipv6 meta l4proto . th dport vmap @ports6
    hp-<net hash>-<attachment hash>   one chain per attachment: its DNAT
                          rules ([conditions] proto dport -> container address)
    postrouting           nat, priority 100: ct status dnat ip daddr vmap @masq4 (ip6: @masq6)
    hairpin-<subnet hash> masquerade sources of the container's subnet (hairpin)
                          and, IPv4, 127.0.0.0/8 (localhost, route_localnet)
    masq-all              masquerade (masqAll)
    localnet-guard        filter/prerouting -300: drop 127.0.0.0/8 destinations
                          arriving on an interface in @localnet, where portmap
                          turned route_localnet on (the martian hole of cp#481)

An attachment owns its chain and one element per (family, protocol,
hostPort) in @ports4/6 (or per hostIP in @hostip4/6) jumping to it, plus
one per container address in @masq4/6 jumping to its subnet's hairpin
chain: a hostPort held by another attachment is a conflict, not a silent
first-wins (user-pain #18).

iptables: the reference's chains in the nat table, rules printed in the
canonical form iptables-save uses, so a saved rule and a rendered one
compare as strings:

    CNI-HOSTPORT-SETMARK  -j MARK --set-xmark <bit>     (shared, snat)
    CNI-HOSTPORT-MASQ     mark -> MASQUERADE, from POSTROUTING (shared, snat)
    CNI-HOSTPORT-DNAT     from PREROUTING/OUTPUT on local destinations (shared)
      -> CNI-DN-<sha512(name+id)>  per container: setmark + DNAT per mapping
"""

from cnilib.base import addr

PROTOCOLS = ("tcp", "udp", "sctp")
NFPROTO = {4: "ipv4", 6: "ipv6"}
NFIP = {4: "ip", 6: "ip6"}

TOP_DNAT = "CNI-HOSTPORT-DNAT"
SETMARK = "CNI-HOSTPORT-SETMARK"
MASQ = "CNI-HOSTPORT-MASQ"
OLD_SNAT = "CNI-HOSTPORT-SNAT"
MULTIPORT_MAX = 15

# chains of the reference nftables portmap (table cni_hostport, ip and ip6)
GO_NFT_TABLE = "cni_hostport"
GO_NFT_CHAINS = ("hostports", "hostip_hostports", "masquerading")


class Mapping:
    """One validated portMappings entry."""

    __slots__ = ("host_port", "container_port", "protocol", "host_ip", "host_family")

    def __init__(self, host_port, container_port, protocol="tcp", host_ip=None, host_family=None):
        self.host_port = host_port
        self.container_port = container_port
        self.protocol = protocol
        self.host_ip = host_ip            # canonical text, None when absent
        self.host_family = host_family    # 4/6 when host_ip is set

    def applies(self, fam):
        """The reference skips a mapping whose hostIP is of the other family."""
        return self.host_family is None or self.host_family == fam

    def daddr(self, fam):
        """Destination match for ``fam``: None for no hostIP or 0.0.0.0 / ::."""
        if self.host_ip is None or addr.is_unspecified(fam, self.host_ip):
            return None
        return self.host_ip

    def __repr__(self):
        return "Mapping(%s %s%d -> %d)" % (self.protocol, self.host_ip + ":" if self.host_ip else "",
                                           self.host_port, self.container_port)


def join_host_port(fam, ip, port):
    return ("[%s]:%d" if fam == 6 else "%s:%d") % (ip, port)


# ====================================================================== nftables

def nft_comment(text):
    """An nft comment literal: at most 128 bytes, no quote can end it early."""
    clean = "".join(c for c in text if c.isprintable() and c not in '"\\')
    return '"%s"' % clean.encode()[:127].decode("ascii", "ignore")


TABLE_NAME = "pycni-hostport"
T = "inet " + TABLE_NAME
CHAIN_PREFIX = "hp"
LOCALNET_COMMENT = "pycni portmap: route_localnet is on here"


SKELETON = [
    ("hostports", None, ["ip daddr . meta l4proto . th dport vmap @hostip4",
                         "ip6 daddr . meta l4proto . th dport vmap @hostip6",
                         "meta nfproto ipv4 meta l4proto . th dport vmap @ports4",
                         "meta nfproto ipv6 meta l4proto . th dport vmap @ports6"]),
    ("prerouting", "type nat hook prerouting priority -100 ; policy accept ;",
     ["fib daddr type local jump hostports"]),
    ("output", "type nat hook output priority -100 ; policy accept ;",
     ["fib daddr type local jump hostports"]),
    ("postrouting", "type nat hook postrouting priority 100 ; policy accept ;",
     ["ct status dnat ip daddr vmap @masq4", "ct status dnat ip6 daddr vmap @masq6"]),
    ("masq-all", None, ["masquerade"]),
    ("localnet-guard", "type filter hook prerouting priority -300 ; policy accept ;",
     ["iifname @localnet ip daddr 127.0.0.0/8 drop"]),
]
SKELETON_RULES = {name: len(rules) for name, _hook, rules in SKELETON}


def nft_skeleton():
    """The shared table, its maps and base chains (idempotent: every base
    chain is flushed and rewritten, never appended to)."""
    out = ['add table %s { comment "pycni portmap: hostPort -> one chain per attachment" ; }' % T]
    for name, typ in (("hostip4", "ipv4_addr . inet_proto . inet_service"),
                      ("hostip6", "ipv6_addr . inet_proto . inet_service"),
                      ("ports4", "inet_proto . inet_service"), ("ports6", "inet_proto . inet_service"),
                      ("masq4", "ipv4_addr"), ("masq6", "ipv6_addr")):
        out.append("add map %s %s { type %s : verdict ; }" % (T, name, typ))
    out.append("add set %s localnet { type ifname ; }" % T)
    for name, hook, rules in SKELETON:
        out.append("add chain %s %s%s" % (T, name, " { %s }" % hook if hook else ""))
        out.append("flush chain %s %s" % (T, name))
        out += ["add rule %s %s %s" % (T, name, r) for r in rules]
    return "\n".join(out) + "\n"


def hairpin_chain(fam, ip, plen):
    """(name, script) of the chain masquerading hairpin (and, IPv4,
    localhost) connections DNAT'ed to a container of subnet ip/plen."""
    from cnilib.firewall import naming
    net = "%s/%d" % (addr.rule_network(fam, ip, plen), plen)
    name = "hairpin-" + naming.sha512_hex("pycni-subnet\0" + net)[:12]
    ipx = NFIP[fam]
    lines = ['add chain %s %s { comment "masquerade hostPort connections from %s" ; }' % (T, name, net),
             "flush chain %s %s" % (T, name),
             "add rule %s %s %s saddr %s masquerade" % (T, name, ipx, net)]
    if fam == 4:
        lines.append("add rule %s %s ip saddr 127.0.0.0/8 masquerade" % (T, name))
    return name, "\n".join(lines) + "\n"


def nft_chain_script(chain, comment, mappings, ctrs, conditions=None, guard_iface=None):
    """The attachment's chain, (re)written whole: its DNAT rules for the
    container addresses ``ctrs`` ({family: (ip, prefixlen)}).  With
    ``guard_iface``, that interface joins @localnet."""
    conditions = conditions or {}
    out = ["add chain %s %s { comment %s ; }" % (T, chain, nft_comment(comment)),
           "flush chain %s %s" % (T, chain)]
    for fam in (4, 6):
        if fam not in ctrs:
            continue
        ip = ctrs[fam][0]
        cond = " ".join(conditions.get(fam) or ())
        for m in mappings:
            if not m.applies(fam):
                continue
            daddr = m.daddr(fam)
            match = ("%s daddr %s" % (NFIP[fam], daddr)) if daddr else ("meta nfproto %s" % NFPROTO[fam])
            if cond:
                match += " " + cond
            out.append("add rule %s %s %s %s dport %d dnat %s to %s"
                       % (T, chain, match, m.protocol, m.host_port, NFIP[fam],
                          join_host_port(fam, ip, m.container_port)))
    if guard_iface and 4 in ctrs:
        out.append('add element %s localnet { "%s" comment %s }'
                   % (T, guard_iface, nft_comment(LOCALNET_COMMENT)))
    return "\n".join(out) + "\n"


def nft_elements(chain, mappings, ctrs, snat=True, masq_all=False):
    """([Elem], [(chain, script)]) of an attachment: the dispatch elements
    of its mappings, and with snat its addresses' masquerade elements with
    the shared chains they jump to."""
    from cnilib.firewall import shared
    elems, seen, extra = [], set(), {}
    for fam in (4, 6):
        if fam not in ctrs:
            continue
        for m in mappings:
            if not m.applies(fam):
                continue
            daddr = m.daddr(fam)
            pkey = shared.port_key(m.protocol, m.host_port)
            wild = "hostPort %d/%s (IPv%d)" % (m.host_port, m.protocol, fam)
            # a hostPort on every address and the same one on a specific
            # address of that family clash, both ways round: the specific
            # element is looked up first and would take the traffic
            if daddr:
                e = shared.Elem("hostip%d" % fam, shared.ip_port_key(fam, daddr, m.protocol, m.host_port),
                                chain,
                                "hostPort %s/%s" % (join_host_port(fam, daddr, m.host_port), m.protocol),
                                overlaps=[shared.Overlap("ports%d" % fam, pkey, wild)])
            else:
                specific = shared.Overlap("hostip%d" % fam, pkey, "hostPort {ip}/%s" % m.protocol,
                                          fam=fam, port=m.host_port)
                e = shared.Elem("ports%d" % fam, pkey, chain, wild, overlaps=[specific])
            if (e.set, e.key) not in seen:
                seen.add((e.set, e.key))
                elems.append(e)
    if snat:
        for fam in (4, 6):
            if fam not in ctrs:
                continue
            ip, plen = ctrs[fam]
            if masq_all:
                target = "masq-all"
            else:
                target, script = hairpin_chain(fam, ip, plen)
                extra[target] = script
            elems.append(shared.Elem("masq%d" % fam, shared.ip_key(fam, ip), target,
                                     "hostPort masquerade for %s" % ip))
    return elems, sorted(extra.items())


def nft_delete_script(tables=(), go_rules=()):
    """Delete whole tables [(family, name)] and single rules [(family, table, chain, handle)]."""
    out = ["delete table %s %s" % ft for ft in tables]
    out += ["delete rule %s %s %s handle %d" % r for r in go_rules]
    return "\n".join(out) + "\n" if out else ""


def _match(e):
    m = e.get("match") if isinstance(e, dict) else None
    if not isinstance(m, dict) or m.get("op", "==") != "==":
        return None, None
    left, right = m.get("left"), m.get("right")
    if isinstance(left, dict) and isinstance(left.get("payload"), dict):
        p = left["payload"]
        return (p.get("protocol"), p.get("field")), right
    return None, None


def nft_dnat_rule(expr):
    """(family, proto, dport, daddr, to_addr, to_port) of a DNAT rule, else None."""
    proto = dport = daddr = None
    for e in expr or ():
        key, val = _match(e)
        if key is not None:
            if key[1] == "dport" and key[0] in PROTOCOLS:
                proto, dport = key[0], val
            elif key[1] == "daddr" and key[0] in ("ip", "ip6"):
                daddr = val
        d = e.get("dnat") if isinstance(e, dict) else None
        if isinstance(d, dict) and proto is not None:
            fam = 6 if d.get("family") == "ip6" else 4
            if "family" not in d and ":" in str(d.get("addr", "")):
                fam = 6
            return fam, proto, dport, daddr, d.get("addr"), d.get("port")
    return None


def nft_rules(items, family=None, table=None, chain=None):
    """The "rule" objects of ``nft -j list`` output, optionally filtered."""
    out = []
    for it in items:
        r = it.get("rule") if isinstance(it, dict) else None
        if not isinstance(r, dict):
            continue
        if ((family is None or r.get("family") == family) and (table is None or r.get("table") == table)
                and (chain is None or r.get("chain") == chain)):
            out.append(r)
    return out


def nft_chain_mappings(items, chain):
    """Sorted DNAT tuples found in an attachment chain of our table."""
    got = []
    for r in nft_rules(items, "inet", TABLE_NAME, chain):
        d = nft_dnat_rule(r.get("expr"))
        if d is not None:
            got.append(d)
    return sorted(got, key=repr)


def expected_mappings(mappings, ctrs):
    """What nft_chain_mappings must return for a correct table."""
    out = []
    for fam in (4, 6):
        if fam not in ctrs:
            continue
        for m in mappings:
            if m.applies(fam):
                out.append((fam, m.protocol, m.host_port, m.daddr(fam), ctrs[fam][0], m.container_port))
    return sorted(out, key=repr)


def go_nft_rules_of(items, container_id):
    """[(family, table, chain, handle)] of the reference's rules for a container
    (its nftables backend keys rules by a comment equal to the container ID)."""
    out = []
    for r in nft_rules(items, table=GO_NFT_TABLE):
        if r.get("chain") in GO_NFT_CHAINS and r.get("comment") == container_id \
                and isinstance(r.get("handle"), int):
            out.append((r["family"], r["table"], r["chain"], r["handle"]))
    return out


# ====================================================================== iptables

def dn_chain(name, container_id):
    from cnilib.firewall import naming
    return naming.go_chain(name, container_id, "CNI-DN-")


def sn_chain(name, container_id):
    from cnilib.firewall import naming
    return naming.go_chain(name, container_id, "CNI-SN-")


def ipt_quote(token):
    """A token for an iptables-restore line: as it is when nothing in it
    needs quoting (an operator's condition), else quoted as iptables-save
    prints it (``iptables.quote``: ``" \\ '`` escaped)."""
    from cnilib.firewall import iptables
    if token and not any(c in token for c in ' "\t\n\\\''):
        return token
    return iptables.quote(token)


def trim_comment(text):
    """iptables takes comments of at most 255 bytes (the reference's
    trimComment cuts to 256 characters, which iptables refuses)."""
    from cnilib.firewall import iptables
    return iptables.comment_text(text)


def entry_comment(name, container_id):
    return trim_comment('dnat name: "%s" id: "%s"' % (name, container_id))


def ipt_localnet_guard(iface):
    """The iptables localnet guard of ``iface`` (raw PREROUTING, canonical
    form): what nftables' localnet-guard does for an element of @localnet,
    drop 127.0.0.0/8 destinations arriving there, before conntrack and NAT
    see them (CVE-2020-8558: route_localnet would let them through to the
    node's loopback-only services)."""
    return "-A PREROUTING -d 127.0.0.0/8 -i %s -m comment --comment %s -j DROP" % (
        iface, ipt_quote(LOCALNET_COMMENT))


def ipt_guard_lines(saved, iface):
    """Raw-table lines inserting the guard first in PREROUTING unless it is there."""
    line = ipt_localnet_guard(iface)
    if line in _rules(saved):
        return []
    return ["-I PREROUTING 1" + line[len("-A PREROUTING"):]]


def mark_value(bit):
    v = 1 << bit
    return "%#x/%#x" % (v, v)


def ipt_shared_rules(snat=True, mark_bit=13, external_mark_chain=None):
    """[(chain it goes in, canonical -A line, insert first?)] of the shared chains."""
    out = []
    if snat and not external_mark_chain:
        mark = mark_value(mark_bit)
        out.append((SETMARK, '-A %s -m comment --comment "CNI portfwd masquerade mark" -j MARK '
                             '--set-xmark %s' % (SETMARK, mark), False))
        out.append((MASQ, "-A %s -m mark --mark %s -j MASQUERADE" % (MASQ, mark), False))
        out.append(("POSTROUTING", '-A POSTROUTING -m comment --comment "CNI portfwd requiring '
                                   'masquerade" -j %s' % MASQ, True))
    for entry in ("PREROUTING", "OUTPUT"):
        out.append((entry, "-A %s -m addrtype --dst-type LOCAL -j %s" % (entry, TOP_DNAT), False))
    return out


def shared_chains(snat=True, external_mark_chain=None):
    if snat and not external_mark_chain:
        return [SETMARK, MASQ, TOP_DNAT]
    return [TOP_DNAT]


def ipt_dn_rules(chain, fam, ctr, mappings, snat=True, masq_all=False, setmark_chain=SETMARK):
    """The per-container chain, in the reference's order, in canonical form."""
    ip, plen = ctr
    hostlen = addr.host_prefix(fam)
    out = []
    for m in mappings:
        if not m.applies(fam):
            continue
        daddr = m.daddr(fam)
        dst = " -d %s/%d" % (daddr, hostlen) if daddr else ""
        match = " -p %s -m %s --dport %d" % (m.protocol, m.protocol, m.host_port)
        if snat:
            src = "" if masq_all else " -s %s/%d" % (addr.rule_network(fam, ip, plen), plen)
            out.append("-A %s%s%s%s -j %s" % (chain, src, dst, match, setmark_chain))
            if fam == 4 and not masq_all:
                out.append("-A %s -s 127.0.0.1/32%s%s -j %s" % (chain, dst, match, setmark_chain))
        out.append("-A %s%s%s -j DNAT --to-destination %s"
                   % (chain, dst, match, join_host_port(fam, ip, m.container_port)))
    return out


def port_groups(mappings):
    """{protocol: ["p1,p2,...", ...]} in groups of at most 15 (multiport's limit),
    protocols sorted; every mapping counts, whatever its hostIP family."""
    by = {}
    for m in mappings:
        by.setdefault(m.protocol, []).append(str(m.host_port))
    return {p: [",".join(by[p][i:i + MULTIPORT_MAX]) for i in range(0, len(by[p]), MULTIPORT_MAX)]
            for p in sorted(by)}


def ipt_entry_rules(chain, name, container_id, mappings, conditions=()):
    """Jumps from CNI-HOSTPORT-DNAT to the container chain, one per protocol and
    port group.  Without conditions the text is canonical; conditions are
    appended as given (iptables-save may print them reordered)."""
    comment = ipt_quote(entry_comment(name, container_id))
    cond = "".join(" " + ipt_quote(c) for c in conditions or ())
    out = []
    for proto, groups in port_groups(mappings).items():
        for ports in groups:
            out.append("-A %s -p %s -m comment --comment %s -m multiport --dports %s%s -j %s"
                       % (TOP_DNAT, proto, comment, ports, cond, chain))
    return out


def jumps_to(saved, chain):
    """'-A ...' lines of a save section whose target is ``chain``."""
    tail = " -j " + chain
    return [r for r in _rules(saved) if r.endswith(tail) or (" -g " + chain) in r]


def _rules(saved):
    return [ln for ln in saved.splitlines() if ln.startswith("-A ")]


def _chains(saved):
    return {ln[1:].split(" ", 1)[0] for ln in saved.splitlines() if ln.startswith(":")}


def ipt_add_lines(saved, chain, dn_rules, entry_rules, shared, chains_needed):
    """One restore batch that leaves ``chain`` holding exactly ``dn_rules``,
    CNI-HOSTPORT-DNAT jumping to it exactly through ``entry_rules``, and the
    shared chains and jumps present once.  Declaring an existing chain in a
    --noflush batch would flush it, so only missing chains are declared."""
    have_chains = _chains(saved)
    have_rules = set(_rules(saved))
    out = [":%s - [0:0]" % c for c in chains_needed + [chain] if c not in have_chains]
    for _c, line, first in shared:
        if line in have_rules:
            continue
        if first:
            head, _sp, rest = line[3:].partition(" ")
            out.append("-I %s 1 %s" % (head, rest))
        else:
            out.append(line)
    out += ["-D" + r[2:] for r in jumps_to(saved, chain)]
    if chain in have_chains:
        out.append("-F " + chain)
    out += dn_rules + entry_rules
    return out


def ipt_teardown_lines(saved, chains):
    """Delete ``chains`` and every rule jumping to them, when they exist."""
    have = _chains(saved)
    out = []
    for chain in chains:
        if chain not in have:
            continue
        out += ["-D" + r[2:] for r in jumps_to(saved, chain)]
        out += ["-F " + chain, "-X " + chain]
    return out


def ipt_entry_ports(saved, chain):
    """{(proto, "p1,p2")} of the multiport jumps to ``chain`` found in a save."""
    found = set()
    for r in jumps_to(saved, chain):
        toks = r.split()
        proto = ports = None
        for i, tok in enumerate(toks[:-1]):
            if tok == "-p":
                proto = toks[i + 1]
            elif tok in ("--dports", "--destination-ports"):
                ports = toks[i + 1]
        if proto and ports:
            found.add((proto, ports))
    return found


def ipt_udp_ports(saved, chain):
    """UDP host ports DNAT'ed by a container chain (for the conntrack flush)."""
    out = set()
    for r in _rules(saved):
        toks = r.split()
        if len(toks) < 2 or toks[1] != chain or "DNAT" not in toks:
            continue
        if "-p" in toks and toks[toks.index("-p") + 1] == "udp" and "--dport" in toks:
            out.add(int(toks[toks.index("--dport") + 1]))
    return out


def dn_chains_of_network(saved, name):
    """{container ID: chain} for the entry jumps whose comment names network ``name``."""
    prefix = '--comment "dnat name: \\"%s\\" id: \\"' % name
    out = {}
    for r in _rules(saved):
        i = r.find(prefix)
        if i < 0 or not r.split()[-1].startswith("CNI-DN-"):
            continue
        rest = r[i + len(prefix):]
        cid = rest.split('\\"', 1)[0]
        out[cid] = r.split()[-1]
    return out
