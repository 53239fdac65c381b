"""The node's firewall rules as the tools print them, parsed for reading.

  ``iptables-save`` (legacy or nf_tables variant) -> {table: IptTable}: the
      policies of the built-in chains and every chain's rules in order, each
      rule's tokens with iptables-save's quoting undone;
  ``nft -j list ruleset`` -> {(family, table): {chain: NftChain}} and the
      tables' comments.

nodestate groups these per attachment (whois, doctor's leftover checks);
doctor's packet tracer (cnilib.ops.doctor.trace) walks them.  Pure.
"""

import shlex


class IptRule:
    __slots__ = ("line", "chain", "tokens", "target", "goto")

    def __init__(self, line):
        self.line = line
        try:
            toks = shlex.split(line)
        except ValueError:
            toks = line.split()
        self.chain = toks[1] if len(toks) > 1 else ""
        self.tokens, self.target, self.goto = toks[2:], None, False
        for i, t in enumerate(self.tokens):
            if t in ("-j", "--jump", "-g", "--goto") and i + 1 < len(self.tokens):
                self.target, self.goto = self.tokens[i + 1], t in ("-g", "--goto")
                self.tokens = self.tokens[:i]
                break


class IptTable:
    __slots__ = ("name", "policies", "chains")

    def __init__(self, name):
        self.name, self.policies, self.chains = name, {}, {}


def parse_save(text):
    """iptables-save text -> {table: IptTable} (policies of built-in chains,
    rules of every chain in order)."""
    tables, cur = {}, None
    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], IptTable(line[1:]))
        elif cur is None or not line or line.startswith("#"):
            continue
        elif line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            cur.chains.setdefault(name, [])
            pol = rest.split(" ", 1)[0]
            if pol and pol != "-":
                cur.policies[name] = pol
        elif line.startswith("-A "):
            r = IptRule(line)
            cur.chains.setdefault(r.chain, []).append(r)
    return tables


class NftChain:
    __slots__ = ("family", "table", "name", "hook", "prio", "policy", "type", "rules")

    def __init__(self, d):
        self.family, self.table, self.name = d.get("family"), d.get("table"), d.get("name")
        self.hook, self.type = d.get("hook"), d.get("type")
        prio = d.get("prio", 0)
        self.prio = prio if isinstance(prio, int) else 0
        self.policy = d.get("policy", "accept")
        self.rules = []


def parse_ruleset(items):
    """``nft -j list ruleset`` items -> {(family, table): {chain name: NftChain}},
    plus table comments: returns (chains, comments)."""
    chains, comments = {}, {}
    for it in items or ():
        if "table" in it:
            t = it["table"]
            comments[(t.get("family"), t.get("name"))] = t.get("comment")
            chains.setdefault((t.get("family"), t.get("name")), {})
        elif "chain" in it:
            c = NftChain(it["chain"])
            chains.setdefault((c.family, c.table), {})[c.name] = c
        elif "rule" in it:
            r = it["rule"]
            c = chains.setdefault((r.get("family"), r.get("table")), {}).get(r.get("chain"))
            if c is not None:
                c.rules.append(r)
    return chains, comments

