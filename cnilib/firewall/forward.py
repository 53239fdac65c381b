"""firewall: let a container's forwarded traffic through the host's filter.

The reference plugin (plugins/meta/firewall, iptables backend) keeps a
``CNI-FORWARD`` chain in the filter table, jumped to first from FORWARD,
whose first rule jumps to ``CNI-ADMIN`` (the administrator's overrides),
and per container address two ACCEPT rules: traffic from it, and
RELATED/ESTABLISHED traffic to it.  That is what cures a host whose FORWARD
policy is DROP (Docker sets it) for pods on a bridge with br_netfilter.

Differences from the reference, on purpose:
  * each rule carries a comment with the attachment key
    ("pycni fw <net hash>-<attachment hash> ..."), so DEL finds the rules by
    key in one iptables-save read and needs no prevResult, and GC finds the
    rules of dead attachments; rules the reference made (no comment) are
    removed too when DEL has a prevResult naming their addresses;
  * one iptables-restore batch per family and operation;
  * an nftables backend: one table for every attachment, ``inet pycni-fw``,
    whose forward chain accepts from the addresses in sets ``ips4``/``ips6``
    (and RELATED/ESTABLISHED traffic to them); an attachment is one element
    per address, added and removed over netlink with its record
    (cnilib.firewall.shared).  An accept there cannot override a drop in
    another table (every base chain on a hook must accept), so it only
    helps where nothing else drops; that is why the iptables backend is
    chosen whenever iptables-nft's FORWARD chain has policy DROP or
    iptables is the legacy variant;
  * no firewalld backend (it needs D-Bus): ``"backend": "firewalld"`` is refused.

``ingressPolicy`` same-bridge / isolated adds the reference's
CNI-ISOLATION-STAGE-1/2 chains (iptables, whatever the backend), never
removed on DEL because other containers on the bridge may need them.
"""

from cnilib.base import addr, errors, proc

FORWARD = "CNI-FORWARD"
ADMIN = "CNI-ADMIN"
STAGE1, STAGE2 = "CNI-ISOLATION-STAGE-1", "CNI-ISOLATION-STAGE-2"
SAVE = {4: "iptables-save", 6: "ip6tables-save"}


# ====================================================================== names

def key(network, container_id, ifname):
    from cnilib.firewall import naming
    return "pycni fw %s-%s" % (naming.net_hash(network),
                               naming.attachment_hash(network, container_id, ifname))


def network_key_prefix(network):
    from cnilib.firewall import naming
    return "pycni fw %s-" % naming.net_hash(network)


def comment(network, container_id, ifname):
    """The attachment's rule comment: its key, then the names as far as
    iptables' 255 bytes take them (``iptables.comment_text``)."""
    from cnilib.firewall import iptables
    return iptables.comment_text("%s net=%s id=%s if=%s"
                                 % (key(network, container_id, ifname), network, container_id, ifname))


def parse_comment(text):
    """(net hash, attachment hash, {net, id, if}) of a rule comment
    ``comment`` wrote, or None; the names only when all three are there
    (a comment cut to iptables' 255 characters may have lost them)."""
    words = text.split() if isinstance(text, str) else []
    if len(words) < 3 or words[:2] != ["pycni", "fw"]:
        return None
    nh, sep, ah = words[2].partition("-")
    if not (sep and len(nh) == 12 and len(ah) == 16 and all(c in "0123456789abcdef" for c in nh + ah)):
        return None
    names = dict(w.partition("=")[::2] for w in words[3:6] if "=" in w)
    return nh, ah, names if set(names) == {"net", "id", "if"} else {}


TABLE_NAME = "pycni-fw"
T = "inet " + TABLE_NAME
SET = {4: "ips4", 6: "ips6"}


# ====================================================================== rule text (pure)

def _q(text):
    from cnilib.firewall import iptables
    return iptables.quote(text)


def jump_rules(admin=ADMIN):
    """[(canonical line, insert first?)] of the shared jumps."""
    return [('-A FORWARD -m comment --comment "CNI firewall plugin rules" -j %s' % FORWARD, True),
            ('-A %s -m comment --comment "CNI firewall plugin admin overrides" -j %s'
             % (FORWARD, admin), True)]


def accept_rules(ips, fam, note):
    """The per-address ACCEPT rules in canonical iptables-save form."""
    plen = addr.host_prefix(fam)
    out = []
    for ip in ips:
        out.append("-A %s -d %s/%d -m conntrack --ctstate RELATED,ESTABLISHED "
                   "-m comment --comment %s -j ACCEPT" % (FORWARD, ip, plen, _q(note)))
        out.append("-A %s -s %s/%d -m comment --comment %s -j ACCEPT" % (FORWARD, ip, plen, _q(note)))
    return out


def reference_rules(ips, fam):
    """The same rules as the reference plugin writes them (no comment)."""
    plen = addr.host_prefix(fam)
    out = []
    for ip in ips:
        out.append("-A %s -d %s/%d -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
                   % (FORWARD, ip, plen))
        out.append("-A %s -s %s/%d -j ACCEPT" % (FORWARD, ip, plen))
    return out


def isolation_rules(bridge, isolated):
    """[(chain, canonical line, insert first?)] of the ingress policy, in the
    reference's order of insertion."""
    pol = "CNI firewall plugin rules (ingressPolicy: %s)" % ("isolated" if isolated else "same-bridge")
    default = "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)"
    out = [("FORWARD", "-A FORWARD -m comment --comment %s -j %s" % (_q(default), STAGE1), True),
           (STAGE1, "-A %s -i %s ! -o %s -m comment --comment %s -j %s"
            % (STAGE1, bridge, bridge, _q(pol), STAGE2),
            True)]
    if isolated:
        out.append((STAGE1, "-A %s -i %s -o %s -m comment --comment %s -j DROP"
                    % (STAGE1, bridge, bridge, _q(pol)),
                    True))
    out += [(STAGE1, "-A %s -m comment --comment %s -j RETURN" % (STAGE1, _q(default)), False),
            (STAGE2, "-A %s -o %s -m comment --comment %s -j DROP" % (STAGE2, bridge, _q(default)), True),
            (STAGE2, "-A %s -m comment --comment %s -j RETURN" % (STAGE2, _q(default)), False)]
    return out


def _rules(saved):
    return [ln for ln in saved.splitlines() if ln.startswith("-A ")]


def _chains(saved):
    return {ln[1:].split(" ", 1)[0] for ln in saved.splitlines() if ln.startswith(":")}


def keyed_rules(saved, prefix):
    """[(rule, key)] of saved rules whose comment starts with ``prefix``; the
    key is the comment's first three words ("pycni fw <hashes>")."""
    mark = '--comment "' + prefix
    out = []
    for r in _rules(saved):
        i = r.find(mark)
        if i >= 0:
            out.append((r, " ".join(r[i + 11:].split('"', 1)[0].split(" ")[:3])))
    return out


def rules_with_key(saved, k):
    """Saved rules carrying the attachment key ``k``."""
    return [r for r, rk in keyed_rules(saved, k) if rk == k]


def _insert(line):
    head, _sp, rest = line[3:].partition(" ")
    return "-I %s 1 %s" % (head, rest)


def ipt_add_lines(saved, admin, new_rules, k, isolation=()):
    """One filter-table batch: chains and jumps when missing, this attachment's
    old rules out, its new rules in, the ingress policy rules when missing."""
    have_chains = _chains(saved)
    have = set(_rules(saved))
    chains = [FORWARD, admin] + ([STAGE1, STAGE2] if isolation else [])
    out = [":%s - [0:0]" % c for c in chains if c not in have_chains]
    for line, first in jump_rules(admin):
        if line not in have:
            out.append(_insert(line) if first else line)
    out += ["-D" + r[2:] for r in rules_with_key(saved, k)]
    out += new_rules
    for _c, line, first in isolation:
        if line not in have:
            out.append(_insert(line) if first else line)
    return out


def ipt_del_lines(saved, k, reference=()):
    """Delete the attachment's keyed rules, and the given reference-style rules
    when present."""
    have = set(_rules(saved))
    out = ["-D" + r[2:] for r in rules_with_key(saved, k)]
    out += ["-D" + r[2:] for r in reference if r in have]
    return out


def render_skeleton():
    """The nftables backend's table (idempotent)."""
    out = ['add table %s { comment "pycni firewall: accept the forwarded traffic of containers" ; }' % T,
           "add set %s ips4 { type ipv4_addr ; }" % T,
           "add set %s ips6 { type ipv6_addr ; }" % T,
           "add chain %s forward { type filter hook forward priority 0 ; policy accept ; }" % T,
           "flush chain %s forward" % T]
    for fam in (4, 6):
        ipx = "ip" if fam == 4 else "ip6"
        out.append("add rule %s forward %s daddr @%s ct state established,related accept"
                   % (T, ipx, SET[fam]))
        out.append("add rule %s forward %s saddr @%s accept" % (T, ipx, SET[fam]))
    return "\n".join(out) + "\n"


def _table():
    from cnilib.firewall import shared
    return shared.Table("fw", "inet", TABLE_NAME, "firewall", {"forward": 4}, render_skeleton, legacy="fw")


def nft_elements(ips):
    from cnilib.firewall import shared
    return [shared.Elem(SET[fam], shared.ip_key(fam, ip), None, ip)
            for fam in (4, 6) for ip in ips.get(fam, ())]


# ====================================================================== config

class Config:
    __slots__ = ("name", "cid", "ifname", "backend", "admin", "policy", "ips", "bridge", "prev", "netns")

    @property
    def key(self):
        return key(self.name, self.cid, self.ifname)

    @property
    def comment(self):
        return comment(self.name, self.cid, self.ifname)

    @property
    def att(self):
        return (self.name, self.cid, self.ifname)


def parse(a, need_prev):
    from cnilib.cni import validate
    conf = validate.validate("firewall", a.conf)
    cfg = Config()
    cfg.name, cfg.cid, cfg.ifname, cfg.netns = conf["name"], a.container_id, a.ifname, a.netns
    cfg.backend = conf.get("backend") or None
    if cfg.backend == "firewalld":
        raise errors.InvalidConfig(
            "firewall backend \"firewalld\" is not supported by pycni",
            "firewalld needs D-Bus; use \"iptables\" (trust the pod network in firewalld "
            "separately) or leave \"backend\" out")
    cfg.admin = conf.get("iptablesAdminChainName") or ADMIN
    cfg.policy = conf.get("ingressPolicy") or "open"
    cfg.ips, cfg.bridge, cfg.prev = {}, None, None
    prev = conf.get("prevResult")
    if need_prev and not prev:
        raise errors.InvalidConfig("missing prevResult from earlier plugin",
                                   "list firewall after the plugin that assigns the addresses (bridge)")
    if prev:
        from cnilib.cni import invoke
        cfg.prev = invoke.parse_result(prev, a.version, "prevResult")
        for ip in cfg.prev.ips:
            got = addr.rule_cidr(ip.get("address"))
            if got is not None:
                cfg.ips.setdefault(got[0], []).append(got[1])
        if cfg.policy != "open" and need_prev:
            cfg.bridge = _bridge(cfg.prev, cfg.policy)
    return cfg


def bare(a):
    """The attachment key alone (DEL of a config that does not validate)."""
    cfg = Config()
    cfg.name, cfg.cid, cfg.ifname, cfg.netns = a.name, a.container_id, a.ifname, a.netns
    cfg.backend, cfg.admin, cfg.policy, cfg.ips, cfg.bridge, cfg.prev = None, ADMIN, "open", {}, None, None
    return cfg


def _bridge(prev, policy):
    if not prev.interfaces:
        raise errors.InvalidConfig(
            "interface needs to be set for ingress policy %r, make sure to chain \"firewall\" "
            "plugin with \"bridge\"" % policy)
    name = prev.interfaces[0].get("name") or ""
    if not name or len(name.encode()) > 15 or not name.isprintable() \
            or any(c in name for c in ' "\\/:'):
        raise errors.InvalidConfig("prevResult.interfaces[0].name %r is not a bridge name" % name[:40])
    return name


# ====================================================================== the backends
#
# One interface, two backends (as portmap's, after the reference's
# PortMapper); ``choose`` picks one from the config for ADD and CHECK, and
# DEL and GC run both, so an attachment made under one backend is still
# removed after the config or the node changed:
#   add(cfg, log)          accept the attachment's addresses
#   check(cfg)             raise a CNI error naming what is missing
#   teardown(cfg, nf, log) remove the attachment's rules (by key, and the
#                          reference's for prevResult's addresses); ``nf``:
#                          an open NfTables, or None without nf_tables
#   gc(name, valid, log)   remove the rules of attachments not in ``valid``


class Nftables:
    """One element per address in ``inet pycni-fw`` (cnilib.firewall.shared)."""

    name = "nftables"

    def add(self, cfg, log):
        from cnilib.firewall import shared
        shared.attach(_table(), cfg.att, nft_elements(cfg.ips), log,
                      data={"ips": {str(f): v for f, v in cfg.ips.items()}}, netns=cfg.netns)
        log.info("nftables table %s accepts %s", T, ",".join(ip for f in (4, 6) for ip in cfg.ips.get(f, ())))

    def check(self, cfg):
        from cnilib.firewall import nft, shared
        rec, missing = shared.present(_table(), cfg.att)
        if rec is None:
            raise errors.Internal("the firewall elements of this attachment are missing from nftables "
                                  "table %s" % T, "no record of this attachment: run ADD again")
        want = sorted("%s %s" % (e.set, e.label) for e in nft_elements(cfg.ips))
        have = sorted("%s %s" % (e[0], e[3]) for e in rec.get("elems", ()))
        if missing or want != have:
            raise errors.Internal("nftables table %s lacks %s"
                                  % (T, ", ".join(missing) or "addresses of this config"),
                                  "expected elements %s; the record lists %s" % (", ".join(want),
                                                                                 ", ".join(have)))
        rules = [r for it in nft.list_json("chain", "inet", TABLE_NAME, "forward")
                 for r in [it.get("rule")] if isinstance(r, dict)]
        if len(rules) != 4:
            raise errors.Internal("nftables chain %s forward has %d rules, expected 4" % (T, len(rules)),
                                  "ADD rewrites the table's rules")

    def teardown(self, cfg, nf, log):
        if nf is not None:
            from cnilib.firewall import shared
            shared.detach(_table(), cfg.att, log, nf=nf)

    def gc(self, name, valid, log):
        from cnilib.firewall import nft, shared
        if nft.available():
            shared.gc(_table(), name, set(valid), log)


class Iptables:
    """The reference's CNI-FORWARD (and CNI-ADMIN, the isolation chains) in
    the filter table, our rules keyed by comment; one iptables.edit per
    family and operation."""

    name = "iptables"

    def add(self, cfg, log):
        from cnilib.firewall import iptables
        isolation = isolation_rules(cfg.bridge, cfg.policy == "isolated") if cfg.bridge else ()
        done = []
        try:
            for fam in (4, 6):
                if fam not in cfg.ips:
                    continue

                def lines(saved, fam=fam):
                    out = ipt_add_lines(saved, cfg.admin, accept_rules(cfg.ips[fam], fam, cfg.comment),
                                        cfg.key, isolation)
                    done.append(fam)
                    return out
                iptables.edit(fam, "filter", lines, "firewall iptables rules (IPv%d)" % fam)
                log.info("iptables IPv%d: %s accepts %s", fam, FORWARD, ",".join(cfg.ips[fam]))
        except BaseException:
            for fam in done:
                try:
                    _ipt_teardown(fam, cfg.key, ())
                except errors.CniError:
                    pass
            raise

    def check(self, cfg):
        from cnilib.firewall import iptables
        for fam in (4, 6):
            if fam not in cfg.ips:
                continue
            saved = iptables.save(fam, "filter")
            have = set(iptables.rules(saved))
            what = "iptables IPv%d filter table" % fam
            for line, _first in jump_rules(cfg.admin):
                if line not in have:
                    raise errors.Internal("expected rule '%s' not found in %s" % (line, what),
                                          "ADD restores it")
            for line in accept_rules(cfg.ips[fam], fam, cfg.comment):
                if line not in have:
                    raise errors.Internal("expected rule '%s' not found in %s" % (line, what))

    def teardown(self, cfg, nf, log):
        from cnilib.firewall import iptables
        for fam in [f for f in (4, 6) if iptables.may_hold(f, "filter", [FORWARD], nf)]:
            n = _ipt_teardown(fam, cfg.key, reference_rules(cfg.ips.get(fam, ()), fam))
            if n:
                log.info("deleted %d iptables IPv%d rules from %s", n, fam, FORWARD)

    def gc(self, name, valid, log):
        from cnilib.firewall import iptables
        keep = {key(name, cid, ifn) for cid, ifn in valid}
        prefix = network_key_prefix(name)
        for fam in (4, 6):
            if proc.which(SAVE[fam]) is None:
                continue
            dead = []

            def lines(saved, dead=dead):
                dead.extend(r for r, k in keyed_rules(saved, prefix) if k not in keep)
                return ["-D" + r[2:] for r in dead]
            iptables.edit(fam, "filter", lines, "firewall iptables GC")
            if dead:
                log.info("GC deleted %d iptables IPv%d rules", len(dead), fam)


def _ipt_teardown(fam, k, reference):
    from cnilib.firewall import iptables
    return len(iptables.edit(fam, "filter", lambda saved: ipt_del_lines(saved, k, reference),
                             "firewall iptables teardown (IPv%d)" % fam))


NFTABLES, IPTABLES = Nftables(), Iptables()
BY_NAME = {"nftables": NFTABLES, "iptables": IPTABLES}


def choose(cfg):
    """The backend of an ADD or CHECK: as configured, else iptables where a
    drop lives in iptables' FORWARD (or iptables is legacy and nft cannot
    tell), else nftables when it works, else iptables."""
    if cfg.backend:
        return BY_NAME[cfg.backend]
    from cnilib.firewall import iptables, nft
    has_ipt = proc.which("iptables-restore") is not None
    if not nft.available():
        return IPTABLES
    if has_ipt and not iptables.nft_backed():
        return IPTABLES
    if has_ipt and "drop" in forward_policies():
        return IPTABLES
    return NFTABLES


def forward_policies():
    """Policies of iptables-nft's FORWARD chains (ip and ip6 ``filter``),
    asked over netlink."""
    from cnilib.kernel import nftables
    try:
        with nftables.NfTables() as nf:
            return [nf.chain_policy(f, "filter", "FORWARD") for f in ("ip", "ip6")]
    except OSError:
        return []


# ====================================================================== DEL and GC (every backend)

def teardown(cfg, log):
    """DEL: the attachment's elements and keyed rules, from both backends,
    with one netfilter socket for the lookups."""
    from cnilib.kernel import nftables
    nf = None
    try:
        nf = nftables.NfTables()
        NFTABLES.teardown(cfg, nf, log)
    except OSError:     # no nf_tables here (or it stopped answering): iptables still goes
        if nf is not None:
            nf.close()
        nf = None
    try:
        IPTABLES.teardown(cfg, nf, log)
    finally:
        if nf is not None:
            nf.close()


def gc(name, valid, log):
    for backend in (NFTABLES, IPTABLES):
        backend.gc(name, valid, log)
