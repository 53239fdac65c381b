"""Walk one packet through the node's firewall, read-only, for ``pycni doctor``.

The seed article's operator finds a dropped packet with counters and
tcpdump ("flannel.1 receives it, cni0 never does: iptables ate it").
doctor answers the same question from the rules themselves: given a packet
(a pod-to-pod packet through FORWARD, a VXLAN datagram into INPUT), which
rule decides its fate, in every table that sees it.

Two sources, both read as text the tools print (parsed by cnilib.ops.rulesets):

  * ``iptables-save`` of each backend in use (``iptables-nft-save`` and
    ``iptables-legacy-save``: both hook into the kernel at once, so a packet
    must pass both): chains, policies and ``-A`` lines, walked in table
    order for the hook (raw, mangle, filter), each verdict labelled with the
    backend it came from;
  * ``nft -j list ruleset``: base chains on the hook, in priority order.
    Tables that iptables-nft owns (family ip/ip6, names filter/nat/...) are
    left to the iptables walk, so a rule is never judged twice.

A packet must get through every base chain of its hook: an accept ends one
chain, a drop or reject ends the packet.  Matches this module does not
understand make a rule "maybe": a maybe-drop is reported as uncertain, a
maybe-accept does not count as accepting.  Everything here is pure.
"""

import ipaddress

YES, MAYBE, NO = 2, 1, 0
IPT_HOOK_TABLES = {
    "prerouting": (("raw", "PREROUTING"), ("mangle", "PREROUTING")),
    "input": (("mangle", "INPUT"), ("filter", "INPUT"), ("security", "INPUT")),
    "forward": (("mangle", "FORWARD"), ("filter", "FORWARD"), ("security", "FORWARD")),
    "output": (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("filter", "OUTPUT"), ("security", "OUTPUT")),
}
IPT_TABLES = ("filter", "nat", "mangle", "raw", "security")
TERMINAL = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject"}
L4 = ("tcp", "udp", "sctp", "udplite", "dccp")
PROTO_NUM = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}


class Packet:
    """One packet: family 4/6, proto ('udp', 'tcp', 'icmp'), addresses,
    ports, input/output interface names, conntrack state, mark."""

    __slots__ = ("family", "proto", "saddr", "daddr", "sport", "dport", "iif", "oif",
                 "ct_state", "mark")

    def __init__(self, saddr, daddr, proto="tcp", sport=40000, dport=80, iif=None, oif=None,
                 ct_state="new", mark=0):
        self.saddr, self.daddr = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
        self.family = self.saddr.version
        self.proto, self.sport, self.dport = proto, sport, dport
        self.iif, self.oif, self.ct_state, self.mark = iif, oif, ct_state, mark

    def __str__(self):
        ports = " %s %d" % (self.proto, self.dport) if self.proto in L4 else " " + self.proto
        ifs = "".join(" %s %s" % (k, v) for k, v in (("in", self.iif), ("out", self.oif)) if v)
        return "%s -> %s%s%s" % (self.saddr, self.daddr, ports, ifs)


class Decision:
    """The fate of a packet in one hook: ``verdict`` accept/drop/reject;
    ``by`` the rule or policy that decided (text); ``certain`` False when a
    rule it could not evaluate stood before the decision; ``doubts`` those
    rules; ``source`` the rule set that decided ("iptables-nft",
    "iptables-legacy", "nftables"; several joined by ", " for an accept)."""

    __slots__ = ("verdict", "by", "certain", "doubts", "where", "source")

    def __init__(self, verdict, by, certain=True, doubts=(), where="", source=""):
        self.verdict, self.by, self.certain = verdict, by, certain
        self.doubts, self.where, self.source = list(doubts), where, source

    @property
    def passes(self):
        return self.verdict == "accept"

    def __repr__(self):
        return "<Decision %s by %r%s>" % (self.verdict, self.by, "" if self.certain else " (uncertain)")


# ====================================================================== helpers

def _and(a, b):
    return min(a, b)


def _neg(r, neg):
    if not neg or r == MAYBE:
        return r
    return NO if r == YES else YES


def addr_in(addr, spec):
    """YES/NO: ``addr`` (an ip_address) within ``spec`` ('10.0.0.0/8', '1.2.3.4',
    comma lists as iptables prints them)."""
    for part in spec.split(","):
        try:
            net = ipaddress.ip_network(part, strict=False)
        except ValueError:
            return MAYBE
        if net.version == addr.version and addr in net:
            return YES
    return NO


def iface_is(name, pattern):
    """iptables '-i eth+' / nft 'eth*' wildcards; None name (no interface) never matches."""
    if name is None:
        return NO
    if pattern.endswith("+") or pattern.endswith("*"):
        return YES if name.startswith(pattern[:-1]) else NO
    return YES if name == pattern else NO


def port_in(port, spec):
    """'8472', '8000:9000', '80,443' (multiport) -> YES/NO."""
    if port is None:
        return NO
    for part in str(spec).split(","):
        lo, sep, hi = part.partition(":")
        try:
            if (int(lo or 0) <= port <= int(hi or 65535)) if sep else port == int(lo):
                return YES
        except ValueError:
            return MAYBE
    return NO


# ====================================================================== iptables

_STATE_OPTS = ("--ctstate", "--state")


def ipt_match(rule, pkt):
    """YES / MAYBE / NO: do the matches of ``rule`` (before -j) hold for ``pkt``?"""
    toks, res, i, neg = rule.tokens, YES, 0, False
    while i < len(toks):
        t = toks[i]
        if t == "!":
            neg, i = True, i + 1
            continue
        val = toks[i + 1] if i + 1 < len(toks) else ""
        if t in ("-m", "--match"):
            i += 2
            continue
        if t in ("-s", "--source"):
            r, i = addr_in(pkt.saddr, val), i + 2
        elif t in ("-d", "--destination"):
            r, i = addr_in(pkt.daddr, val), i + 2
        elif t in ("-i", "--in-interface"):
            r, i = iface_is(pkt.iif, val), i + 2
        elif t in ("-o", "--out-interface"):
            r, i = iface_is(pkt.oif, val), i + 2
        elif t in ("-p", "--protocol"):
            r = YES if val in (pkt.proto, "all", str(PROTO_NUM.get(pkt.proto))) else NO
            i += 2
        elif t in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            r, i = (port_in(pkt.dport, val) if pkt.proto in L4 else NO), i + 2
        elif t in ("--sport", "--source-port", "--sports", "--source-ports"):
            r, i = (port_in(pkt.sport, val) if pkt.proto in L4 else NO), i + 2
        elif t == "--comment":
            r, i = YES, i + 2
        elif t in _STATE_OPTS:
            r, i = (YES if pkt.ct_state.upper() in val.upper().split(",") else NO), i + 2
        elif t == "--mark":
            v, _, m = val.partition("/")
            try:
                r = YES if (pkt.mark & int(m or "0xffffffff", 0)) == int(v, 0) else NO
            except ValueError:
                r = MAYBE
            i += 2
        else:
            # an extension this walk does not model: it may or may not match
            r, i = MAYBE, i + 1
            while i < len(toks) and not toks[i].startswith("-") and toks[i] != "!":
                i += 1
        res = _and(res, _neg(r, neg))
        neg = False
        if res == NO:
            return NO
    return res


def ipt_walk(table, chain, pkt, doubts, depth=0):
    """The verdict of ``chain`` for ``pkt``: (verdict, rule line) or None when
    the chain returns without one.  Uncertain terminal rules go to ``doubts``."""
    if depth > 32:
        doubts.append("(chain jumps nest deeper than 32 at %s)" % chain)
        return None
    for r in table.chains.get(chain, ()):
        m = ipt_match(r, pkt)
        if m == NO:
            continue
        tgt = r.target
        if tgt in TERMINAL:
            if m == YES:
                return TERMINAL[tgt], r.line
            doubts.append(r.line)
        elif tgt == "RETURN":
            if m == YES:
                return None
        elif tgt in table.chains:
            sub = ipt_walk(table, tgt, pkt, doubts, depth + 1)
            if sub is not None:
                if m == YES:
                    return sub
                doubts.append(r.line)
            elif r.goto and m == YES:
                return None
    return None


def ipt_decide(tables, hook, pkt, name="iptables"):
    """Decision for ``pkt`` on ``hook`` over the iptables tables that see it;
    None when no table has a chain for it (nothing filters there)."""
    seen = False
    doubts, accepted = [], []
    for tname, chain in IPT_HOOK_TABLES[hook]:
        table = tables.get(tname)
        if table is None or chain not in table.chains:
            continue
        seen = True
        got = ipt_walk(table, chain, pkt, doubts)
        where = "%s -t %s %s" % (name, tname, chain)
        if got is None:
            pol = table.policies.get(chain, "ACCEPT")
            if pol != "ACCEPT":
                return Decision(pol.lower(), "policy %s of %s %s" % (pol, tname, chain),
                                not doubts, doubts, where, name)
            continue
        if got[0] != "accept":
            return Decision(got[0], got[1], not doubts, doubts, where, name)
        accepted.append(got[1])
    if not seen:
        return None
    return Decision("accept", "; ".join(accepted) or "no %s rule drops it" % name, not doubts, doubts, "",
                    name)


# ====================================================================== nftables

IPTABLES_NFT_TABLES = ("filter", "nat", "mangle", "raw", "security")


def _nft_value_match(value, right):
    """YES/NO/MAYBE: does ``value`` (ip_address, int or str) equal or fall in ``right``?"""
    if isinstance(right, dict):
        if "prefix" in right:
            p = right["prefix"]
            if not isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                return MAYBE
            return addr_in(value, "%s/%s" % (p.get("addr"), p.get("len")))
        if "range" in right:
            lo, hi = right["range"]
            try:
                if isinstance(value, int):
                    return YES if int(lo) <= value <= int(hi) else NO
                return YES if ipaddress.ip_address(lo) <= value <= ipaddress.ip_address(hi) else NO
            except (ValueError, TypeError):
                return MAYBE
        if "set" in right:
            best = NO
            for el in right["set"]:
                best = max(best, _nft_value_match(value, el))
            return best
        return MAYBE
    if isinstance(right, list):
        best = NO
        for el in right:
            best = max(best, _nft_value_match(value, el))
        return best
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        try:
            return addr_in(value, str(right))
        except ValueError:
            return MAYBE
    if isinstance(value, str) and isinstance(right, str):
        return iface_is(value, right) if right.endswith("*") else (YES if value == right else NO)
    return YES if value == right else NO


_NFPROTO = {4: "ipv4", 6: "ipv6"}


def _nft_left_value(left, pkt):
    """The packet's value for a match's left side, or a sentinel: NO when the
    field cannot exist for this packet (a udp header on tcp), MAYBE unknown."""
    if not isinstance(left, dict):
        return MAYBE, None
    if "payload" in left:
        p = left["payload"]
        proto, field = p.get("protocol"), p.get("field")
        if proto in ("ip", "ip6"):
            if (proto == "ip") != (pkt.family == 4):
                return NO, None
            if field in ("saddr", "daddr"):
                return None, getattr(pkt, field)
            if field in ("protocol", "nexthdr"):
                return None, pkt.proto
            return MAYBE, None
        if proto in L4 or proto == "th":
            if proto != "th" and proto != pkt.proto:
                return NO, None
            if proto == "th" and pkt.proto not in L4:
                return NO, None
            if field in ("dport", "sport"):
                return None, getattr(pkt, field)
        return MAYBE, None
    if "meta" in left:
        key = left["meta"].get("key")
        if key == "iifname":
            return None, pkt.iif
        if key == "oifname":
            return None, pkt.oif
        if key == "l4proto":
            return None, pkt.proto
        if key == "nfproto":
            return None, _NFPROTO[pkt.family]
        if key == "mark":
            return None, pkt.mark
        return MAYBE, None
    if "ct" in left and left["ct"].get("key") == "state":
        return None, pkt.ct_state
    return MAYBE, None


def nft_match(expr, pkt):
    """YES / MAYBE / NO for one ``match`` expression."""
    op, left, right = expr.get("op", "=="), expr.get("left"), expr.get("right")
    sentinel, value = _nft_left_value(left, pkt)
    if sentinel is not None:
        return sentinel
    if value is None:
        return NO if op in ("==", "in") else YES
    if isinstance(right, (int, str)) and isinstance(value, str) and right in PROTO_NUM.values():
        right = next(k for k, v in PROTO_NUM.items() if v == right)
    if op in ("==", "in"):
        return _nft_value_match(value, right)
    if op == "!=":
        return _neg(_nft_value_match(value, right), True)
    return MAYBE


_NOOP = ("counter", "log", "limit", "comment", "meter", "notrack", "mangle", "set", "ct count")


def nft_rule_effect(rule, pkt):
    """(match YES/MAYBE, verdict) for a rule that may apply, or (NO, None).
    verdict: ('accept'|'drop'|'reject'|'return'|'jump'|'goto', target)."""
    res = YES
    for e in rule.get("expr", ()):
        if not isinstance(e, dict) or not e:
            continue
        k = next(iter(e))
        if k == "match":
            res = _and(res, nft_match(e[k], pkt))
            if res == NO:
                return NO, None
        elif k in ("accept", "drop", "return", "continue"):
            return res, (k, None) if k != "continue" else None
        elif k == "reject":
            return res, ("reject", None)
        elif k in ("jump", "goto"):
            return res, (k, (e[k] or {}).get("target"))
        elif k in ("xt", "vmap", "fib", "lookup") or k not in _NOOP:
            if k in ("dnat", "snat", "masquerade", "redirect", "queue"):
                return res, None
            res = _and(res, MAYBE)
    return res, None


def nft_rule_text(rule):
    """A short readable form of a rule: 'table inet t chain c handle N: ...'."""
    parts = []
    for e in rule.get("expr", ()):
        if not isinstance(e, dict) or not e:
            continue
        k = next(iter(e))
        v = e[k]
        if k == "match":
            parts.append("%s %s %s"
                         % (_nft_term(v.get("left")), v.get("op", "=="), _nft_term(v.get("right"))))
        elif k in ("counter",):
            continue
        elif k in ("jump", "goto"):
            parts.append("%s %s" % (k, (v or {}).get("target")))
        else:
            parts.append(k if v is None else "%s %s" % (k, _nft_term(v)))
    return "nft %s %s chain %s: %s" % (rule.get("family"), rule.get("table"), rule.get("chain"),
                                       " ".join(parts))


def _nft_term(v):
    if isinstance(v, dict) and len(v) == 1:
        k, x = next(iter(v.items()))
        if k == "payload" and isinstance(x, dict):
            return "%s %s" % (x.get("protocol"), x.get("field"))
        if k in ("meta", "ct") and isinstance(x, dict):
            return "%s %s" % (k, x.get("key"))
        if k == "prefix" and isinstance(x, dict):
            return "%s/%s" % (x.get("addr"), x.get("len"))
        if k == "set" and isinstance(x, list):
            return "{ %s }" % ", ".join(_nft_term(i) for i in x)
        if k == "range" and isinstance(x, list):
            return "-".join(_nft_term(i) for i in x)
        return "%s %s" % (k, _nft_term(x))
    if isinstance(v, list):
        return "{ %s }" % ", ".join(_nft_term(i) for i in v)
    if isinstance(v, dict):
        return " ".join("%s %s" % (k, _nft_term(x)) for k, x in v.items())
    return str(v)


def nft_walk(table, chain, pkt, doubts, depth=0):
    """(verdict, rule text) of nft ``chain`` (a NftChain in ``table``), or None."""
    if depth > 32:
        doubts.append("(chain jumps nest deeper than 32 at %s)" % chain.name)
        return None
    for r in chain.rules:
        m, eff = nft_rule_effect(r, pkt)
        if m == NO or eff is None:
            continue
        kind, target = eff
        if kind in ("accept", "drop", "reject"):
            if m == YES:
                return kind, nft_rule_text(r)
            doubts.append(nft_rule_text(r))
        elif kind == "return":
            if m == YES:
                return None
        elif target in table:
            sub = nft_walk(table, table[target], pkt, doubts, depth + 1)
            if sub is not None:
                if m == YES:
                    return sub
                doubts.append(nft_rule_text(r))
            elif kind == "goto" and m == YES:
                return None
    return None


def nft_decide(chains, hook, pkt, skip_iptables_tables=True):
    """Decision for ``pkt`` over every nft base chain on ``hook`` of its
    family (ip/ip6 and inet), lowest priority first; None when none exists."""
    fams = ("ip", "inet") if pkt.family == 4 else ("ip6", "inet")
    base = []
    for (fam, tname), table in chains.items():
        if fam not in fams:
            continue
        if skip_iptables_tables and fam in ("ip", "ip6") and tname in IPTABLES_NFT_TABLES:
            continue
        for c in table.values():
            if c.hook == hook:
                base.append((c.prio, fam, tname, c))
    if not base:
        return None
    base.sort(key=lambda x: (x[0], x[1], x[2]))
    doubts, accepted = [], []
    for _prio, fam, tname, c in base:
        got = nft_walk(chains[(fam, tname)], c, pkt, doubts)
        where = "nft %s %s chain %s" % (fam, tname, c.name)
        if got is None:
            if c.policy == "drop":
                return Decision("drop", "policy drop of %s" % where, not doubts, doubts, where, "nftables")
            continue
        if got[0] != "accept":
            return Decision(got[0], got[1], not doubts, doubts, where, "nftables")
        accepted.append(got[1])
    return Decision("accept", "; ".join(accepted) or "no nft base chain drops it", not doubts, doubts, "",
                    "nftables")


def decide(ipt, nft_chains, hook, pkt, skip_iptables_tables=True):
    """The packet's fate on ``hook`` across iptables and nftables: the first
    drop or reject found; otherwise accept (uncertain if any was).
    ``ipt`` is one backend's tables ({table: IptTable}, named "iptables")
    or a list of (backend name, tables or None), each walked on its own.
    Returns None when nothing has anything on that hook."""
    backends = ipt if isinstance(ipt, list) else [("iptables", ipt)]
    found = [ipt_decide(tables, hook, pkt, name) for name, tables in backends if tables]
    if nft_chains:
        found.append(nft_decide(nft_chains, hook, pkt, skip_iptables_tables))
    found = [d for d in found if d is not None]
    if not found:
        return None
    for d in found:
        if not d.passes:
            return d
    doubts = [x for d in found for x in d.doubts]
    return Decision("accept", "; ".join(d.by for d in found), not doubts, doubts, "",
                    ", ".join(d.source for d in found))


# ---------------------------------------------------------------- the packets the checks walk
# (built from doctor's context, passed in: this module imports no check group nor context)

OUTSIDE_PROBE = "203.0.113.1"     # TEST-NET-3: only asked of the routing table, never sent to


def remote_address(network, local):
    """An address in ``network`` outside ``local`` (a pod on another node)."""
    if local.prefixlen <= network.prefixlen:
        return None
    for sub in network.subnets(new_prefix=local.prefixlen):
        if sub != local:
            return sub.network_address + 2
    return None


def pod_packets(ctx):
    """[(label, Packet)] of pod traffic the FORWARD hook sees."""
    out = []
    vx = {link.name for link, _i in ctx.vxlan_devs()}
    default = None
    routes = ctx.routes()
    for net, local, br in ctx.pod_networks():
        pod = local.network_address + 2
        tunnel = "flannel.1" if net.version == 4 else "flannel-v6.1"
        overlay = tunnel if tunnel in vx else None
        # a peer's pod: from a route into the network (flannel's per-node routes) when there is one
        remote = remote_address(net, local)
        for r in routes:
            if r.dst is not None and r.family == (2 if net.version == 4 else 10):
                dst = ipaddress.ip_network(r.cidr, strict=False)
                if dst.subnet_of(net) and dst != local and dst.num_addresses > 2:
                    remote = dst.network_address + 2
                    break
        if overlay is None and remote is not None:
            r = ctx.route(str(remote))
            overlay = ctx.by_index[r.oif].name if r is not None and r.oif in ctx.by_index else None
        if remote is not None and net != local:
            out.append(("from a pod on another node", Packet(remote, pod, iif=overlay, oif=br)))
            out.append(("to a pod on another node", Packet(pod, remote, iif=br, oif=overlay)))
        if ctx.sysctl("net/bridge/bridge-nf-call-ip%stables" % ("" if net.version == 4 else "6")) == "1":
            out.append(("between two pods on %s" % br,
                        Packet(pod, local.network_address + 3, iif=br, oif=br)))
        if net.version == 4 and default is None:
            r = ctx.route(OUTSIDE_PROBE)
            default = ctx.by_index[r.oif].name if r is not None and r.oif in ctx.by_index else ""
        if net.version == 4 and default and default != br:
            out.append(("from a pod to outside the cluster (via %s)" % default,
                        Packet(pod, OUTSIDE_PROBE, iif=br, oif=default)))
    return out


def vxlan_packets(ctx, dev, info):
    """[(peer, hooks, Packet, label)]: a VXLAN datagram from and to each peer
    in ``dev``'s fdb, with the hooks each crosses."""
    port = info.port or 8472
    under = ctx.by_index[info.link].name if info.link in ctx.by_index else None
    local = str(info.local) if info.local else None
    out = []
    for peer in sorted({f.dst for f in ctx.fdb(dev.index)}):
        if local is None:
            r = ctx.route(peer)
            local = r.prefsrc if r is not None else None
        if local is None:
            continue
        out.append((peer, ("prerouting", "input"), Packet(peer, local, "udp", 40000, port, iif=under),
                    "from %s" % peer))
        out.append((peer, ("output",), Packet(local, peer, "udp", 40000, port, oif=under),
                    "to %s" % peer))
    return out
