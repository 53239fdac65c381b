"""portmap: config checks, backend choice, and the runners around the rule text.

Keys.  Our nftables objects (a chain and set elements in the shared table
``inet pycni-hostport``, with a record in the state dir) are keyed by
(network, container ID, ifname); the iptables chain keeps the reference's
name, CNI-DN-<sha512(name+id)>, so rules made by the Go plugin are found
and removed (that name has no ifname: one network attached twice to one
container shares the chain, as with the reference).

Everything the config says is checked before anything is touched:
portMappings (any key case, ports 1-65535, tcp/udp/sctp, a hostIP that is
an IP), the options of the other backend, condition tokens that could
break out of a rule.  Chain names and comments come from hashes and
validated names only.

DEL removes everything under the key from both backends (our chain and
elements by record, the previous design's table, the Go plugin's nftables
rules, the iptables chain and its jumps, ours or the Go plugin's), whether
or not the runtime sends portMappings; netlink lookups tell what exists, so
a DEL with nothing to remove execs nothing.
"""

from cnilib.base import addr, errors, failpoint, proc
from cnilib.firewall import portmap_rules as R

ENTRY_KEYS = ("hostPort", "containerPort", "protocol", "hostIP")
BACKENDS = ("nftables", "iptables")
SAVE = {4: "iptables-save", 6: "ip6tables-save"}


class Config:
    """A validated portmap request."""

    __slots__ = ("name", "cid", "ifname", "backend", "snat", "masq_all", "mark_bit",
                 "external_mark_chain", "conditions", "mappings", "ctrs", "prev", "netns")

    def __init__(self):
        self.netns = None
        self.backend = None
        self.snat = True
        self.masq_all = False
        self.mark_bit = 13
        self.external_mark_chain = None
        self.conditions = {4: [], 6: []}
        self.mappings = []
        self.ctrs = {}
        self.prev = None

    @property
    def att(self):
        return (self.name, self.cid, self.ifname)

    @property
    def nft_chain(self):
        from cnilib.firewall import naming
        return naming.attachment_chain(R.CHAIN_PREFIX, self.name, self.cid, self.ifname)

    @property
    def comment(self):
        from cnilib.firewall import naming
        return naming.element_comment(self.name, self.cid, self.ifname)

    @property
    def chain(self):
        return R.dn_chain(self.name, self.cid)

    def udp_ports(self):
        return {m.host_port for m in self.mappings if m.protocol == "udp"}


# ---------------------------------------------------------------- parsing

def _condition_kind(tokens):
    """'iptables' when the first token starts like an iptables option, else 'nftables'
    (the reference's detectBackendOfConditions); None for no conditions."""
    if not tokens or not tokens[0]:
        return None
    return "iptables" if tokens[0][0] in "-!" else "nftables"


def _check_conditions(key, tokens, kind):
    for tok in tokens:
        bad = None
        if not tok or len(tok) > 256:
            bad = "is empty or over 256 characters"
        elif any(not c.isprintable() for c in tok):
            bad = "has a control character"
        elif kind == "iptables" and any(c in tok for c in '"\\'):
            bad = "has a quote or backslash"
        elif kind == "nftables" and any(c in tok for c in ";#\\"):
            bad = "has ';', '#' or a backslash"
        if bad:
            raise errors.InvalidConfig(
                "%s token %r %s" % (key, tok[:60], bad),
                "conditions are %s match tokens such as %s; each token goes into the rule as it is"
                % (kind, '["-s", "10.0.0.0/8"]' if kind == "iptables" else '["ip", "saddr", "10.0.0.0/8"]'))
    if kind == "nftables":
        text = " ".join(tokens)
        if text.count('"') % 2 or text.count("{") != text.count("}"):
            raise errors.InvalidConfig("%s has unbalanced quotes or braces: %r" % (key, text[:120]))


def _backend(conf):
    """The backend the config asks for (None: choose at run time), refusing
    options of the other backend as the reference does."""
    wants = {}
    if conf.get("externalSetMarkChain") is not None:
        wants.setdefault("iptables", []).append("externalSetMarkChain")
    for key in ("conditionsV4", "conditionsV6"):
        kind = _condition_kind(conf.get(key))
        if kind:
            _check_conditions(key, conf[key], kind)
            wants.setdefault(kind, []).append(key)
    chosen = conf.get("backend")
    if chosen is None and len(wants) == 1:
        chosen = next(iter(wants))
    if chosen is None and len(wants) > 1:
        raise errors.InvalidConfig(
            "portmap config mixes iptables options %s and nftables options %s"
            % (wants["iptables"], wants["nftables"]),
            "conditions starting with '-' or '!' are iptables matches; others are nftables")
    for other in BACKENDS:
        if chosen is not None and other != chosen and wants.get(other):
            raise errors.InvalidConfig(
                "%s backend was requested but configuration contains %s-specific options %s"
                % (chosen, other, wants[other]),
                "remove them or set \"backend\": \"%s\"" % other)
    return chosen


def parse_mappings(conf):
    """runtimeConfig.portMappings (keys in any case) -> [Mapping]."""
    from cnilib.cni import args, validate
    raw = args.runtime_config(conf, "portMappings")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise errors.InvalidConfig(
            "runtimeConfig.portMappings is a JSON %s, expected a list" % type(raw).__name__,
            'expected [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]')
    entries = [args.normalize_keys(e, ENTRY_KEYS) if isinstance(e, dict) else e for e in raw]
    entries = validate.validate("portmappings", {"portMappings": entries},
                                what="runtimeConfig.portMappings")["portMappings"]
    out = []
    for i, e in enumerate(entries):
        proto = (e.get("protocol") or "tcp").lower()
        if proto not in R.PROTOCOLS:
            raise errors.InvalidConfig(
                "runtimeConfig.portMappings[%d].protocol %r is not supported" % (i, e.get("protocol")),
                "expected tcp, udp or sctp")
        host_ip = fam = None
        if e.get("hostIP"):
            got = addr.rule_ip(e["hostIP"])
            if got is None:
                raise errors.InvalidConfig(
                    "runtimeConfig.portMappings[%d].hostIP %r is not an IP address" % (i, e["hostIP"][:64]),
                    "expected an IPv4 or IPv6 address such as 192.0.2.10, or no hostIP")
            fam, host_ip = got
        out.append(R.Mapping(e["hostPort"], e["containerPort"], proto, host_ip, fam))
    return out


def container_addrs(result, ifname):
    """{family: (ip, prefixlen)}: the first IPv4 and first IPv6 of the previous
    result that belong to CNI_IFNAME in a sandbox, or name no interface
    (the reference's parseConfig)."""
    out = {}
    for ip in result.ips:
        got = addr.rule_cidr(ip.get("address"))
        if got is None:
            continue
        fam, host, plen = got
        if fam in out:
            continue
        idx = ip.get("interface")
        if idx is not None and 0 <= idx < len(result.interfaces):
            iface = result.interfaces[idx]
            if iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        out[fam] = (host, plen)
    return out


def parse(a, need_prev):
    """Validate the whole request; nothing is touched before this returns."""
    from cnilib.cni import validate
    conf = validate.validate("portmap", a.conf)
    cfg = Config()
    cfg.name, cfg.cid, cfg.ifname, cfg.netns = conf["name"], a.container_id, a.ifname, a.netns
    if conf.get("markMasqBit") is not None and conf.get("externalSetMarkChain") is not None:
        raise errors.InvalidConfig("Cannot specify externalSetMarkChain and markMasqBit",
                                   "externalSetMarkChain replaces the mark chain the bit is for")
    cfg.backend = _backend(conf)
    cfg.snat = conf.get("snat") is not False
    cfg.masq_all = bool(conf.get("masqAll"))
    if conf.get("markMasqBit") is not None:
        cfg.mark_bit = conf["markMasqBit"]
    cfg.external_mark_chain = conf.get("externalSetMarkChain")
    cfg.conditions = {4: list(conf.get("conditionsV4") or ()), 6: list(conf.get("conditionsV6") or ())}
    cfg.mappings = parse_mappings(conf)
    prev = conf.get("prevResult")
    if need_prev and not prev:
        raise errors.InvalidConfig("portmap must be called as chained plugin: the config has no prevResult",
                                   "list portmap after the plugin that creates the interface (bridge, ptp)")
    if prev:
        from cnilib.cni import invoke
        cfg.prev = invoke.parse_result(prev, a.version, "prevResult")
        cfg.ctrs = container_addrs(cfg.prev, a.ifname)
    return cfg


# ---------------------------------------------------------------- helpers

def _families(cfg):
    return [f for f in (4, 6) if f in cfg.ctrs]


def flush_conntrack(families, ports, log, nf=None):
    """Drop UDP conntrack entries to the host ports (user-pain #19): a
    stream refreshed by its client never expires and keeps its old NAT."""
    if not ports:
        return
    from cnilib.kernel import conntrack
    shown = ",".join(map(str, sorted(ports)))
    try:
        n = conntrack.conntrack_delete_dports(families, "udp", ports, nf)
    except OSError as exc:
        log.warning("failed to delete stale UDP conntrack entries (ports %s): %s", shown, exc)
        return
    if n:
        log.info("deleted %d stale UDP conntrack entries (ports %s)", n, shown)
    else:
        log.debug("no UDP conntrack entry to ports %s", shown)


def guard_iface(cfg):
    """The host interface that routes to the container's IPv4 address
    (usually the bridge): route_localnet goes on there."""
    if not cfg.snat or 4 not in cfg.ctrs:
        return None
    from cnilib.kernel.route import route_oif_name
    name = route_oif_name(cfg.ctrs[4][0])
    if not name or name == "lo" or any(c in name for c in '"\\') or not name.isprintable():
        return None
    return name


def enable_route_localnet(iface):
    from cnilib.kernel import sysctl
    try:
        sysctl.write("net/ipv4/conf/%s/route_localnet" % iface, "1")
    except errors.CniError as exc:
        raise errors.Internal("unable to enable route_localnet on %s: %s" % (iface, exc.msg),
                              "localhost hostPorts need net.ipv4.conf.%s.route_localnet=1" % iface) from exc


# ---------------------------------------------------------------- the backends
#
# As the reference's PortMapper: the backend is an object chosen once from
# the config (choose), and each has
#   add(cfg, iface, log)        install the attachment's mappings
#   check(cfg)                  raise a CNI error naming what is missing
#   teardown(nf, att, udp, log) remove every rule of the attachment this
#                               backend's kind can hold (ours or the Go
#                               plugin's), adding their UDP ports to ``udp``;
#                               ``nf``: an open NfTables, or None without nf_tables
#   gc(name, valid, log)        remove the rules of attachments not in ``valid``
# DEL and GC run every backend (teardown, gc below), so an attachment made
# under one backend is still removed after the config or the node changed.


class Nftables:
    """Our chain and elements in the shared table ``inet pycni-hostport``
    (cnilib.firewall.shared); on teardown also the previous design's table
    and the Go plugin's nftables rules."""

    name = "nftables"

    @staticmethod
    def table():
        from cnilib.firewall import shared
        return shared.Table("hostport", "inet", R.TABLE_NAME, "portmap", R.SKELETON_RULES, R.nft_skeleton,
                            legacy="hp", chain_prefix=R.CHAIN_PREFIX)

    def add(self, cfg, iface, log):
        from cnilib.firewall import shared
        chain = cfg.nft_chain
        elems, extra = R.nft_elements(chain, cfg.mappings, cfg.ctrs, cfg.snat, cfg.masq_all)
        script = R.nft_chain_script(chain, cfg.comment, cfg.mappings, cfg.ctrs, cfg.conditions, iface)
        data = {"udp": sorted(cfg.udp_ports()),
                "mappings": [[m.protocol, m.host_port, m.container_port, m.host_ip] for m in cfg.mappings]}
        shared.attach(self.table(), cfg.att, elems, log, data=data, extra=extra, chain_script=script,
                      chains=[chain], netns=cfg.netns)
        log.info("nftables chain %s %s: %d rules, %d elements", R.T, chain, script.count("dnat "), len(elems))

    def check(self, cfg):
        from cnilib.firewall import nft, shared
        tbl = self.table()
        rec, missing = shared.present(tbl, cfg.att)
        legacy = tbl.legacy_table(cfg.att)
        if rec is None:
            if any(n == legacy for _f, n in nft.tables(legacy)):
                return          # made by the previous design: a table of its own
            raise errors.Internal("the nftables state of this attachment is missing from %s" % R.T,
                                  "run ADD again (or DEL and ADD) to recreate the port mappings")
        where = "nftables table %s" % R.T
        elems, _extra = R.nft_elements(cfg.nft_chain, cfg.mappings, cfg.ctrs, cfg.snat, cfg.masq_all)
        want = sorted("%s %s" % (e.set, e.label) for e in elems)
        have = sorted("%s %s" % (e[0], e[3]) for e in rec.get("elems", ()))
        if missing or want != have:
            raise errors.Internal("%s lacks %s" % (where, ", ".join(missing) or "elements of this config"),
                                  "expected elements %s; the record lists %s" % (", ".join(want),
                                                                                 ", ".join(have)))
        items = nft.list_json("table", "inet", R.TABLE_NAME)
        got, exp = R.nft_chain_mappings(items, cfg.nft_chain), R.expected_mappings(cfg.mappings, cfg.ctrs)
        if got != exp:
            raise errors.Internal("%s chain %s does not hold the expected DNAT rules"
                                  % (where, cfg.nft_chain), "expected %s, found %s" % (exp, got))
        hooks = {}
        for it in items:
            c = it.get("chain")
            if isinstance(c, dict) and c.get("hook"):
                hooks[c.get("name")] = (c.get("type"), c.get("hook"))
        want_hooks = {"prerouting": ("nat", "prerouting"), "output": ("nat", "output")}
        if cfg.snat:
            want_hooks["postrouting"] = ("nat", "postrouting")
        for chain, hook in want_hooks.items():
            if hooks.get(chain) != hook:
                raise errors.Internal("%s has no %s chain hooked at %s" % (where, chain, hook[1]),
                                      "found chains %s; ADD rewrites them" % sorted(hooks))
            if not R.nft_rules(items, "inet", R.TABLE_NAME, chain):
                raise errors.Internal("%s chain %s is empty" % (where, chain), "ADD rewrites it")
        if len(R.nft_rules(items, "inet", R.TABLE_NAME, "hostports")) != 4:
            raise errors.Internal("%s chain hostports lacks its dispatch rules" % where, "ADD rewrites them")

    def teardown(self, nf, att, udp, log):
        if nf is None:
            return
        from cnilib.firewall import shared
        tbl = self.table()
        legacy = tbl.legacy_table(att)
        if nf.table_exists("inet", legacy):     # its UDP ports are in the table itself
            from cnilib.firewall import nft
            for r in R.nft_rules(nft.list_json("table", "inet", legacy), "inet", legacy, "hostports"):
                d = R.nft_dnat_rule(r.get("expr"))
                if d and d[1] == "udp":
                    udp.add(d[2])
        rec = shared.detach(tbl, att, log, nf=nf)
        if rec is not None:
            udp |= set(rec.get("udp") or ())
        go_tables = [f for f in ("ip", "ip6") if nf.table_exists(f, R.GO_NFT_TABLE)]
        log.debug("nftables teardown done; reference rules in %s", go_tables or "no table")
        go_rules = []
        if go_tables:
            from cnilib.firewall import nft
        for fam in go_tables:
            items = nft.list_json("table", fam, R.GO_NFT_TABLE)
            mine = R.go_nft_rules_of(items, att[1])
            handles = {h for _f, _t, _c, h in mine}
            for r in R.nft_rules(items, fam, R.GO_NFT_TABLE):
                d = r.get("handle") in handles and R.nft_dnat_rule(r.get("expr"))
                if d and d[1] == "udp":
                    udp.add(d[2])
            go_rules += mine
        if go_rules:
            nft.apply(R.nft_delete_script((), go_rules), "portmap nftables teardown")
            log.info("deleted %d nftables rules of the reference plugin", len(go_rules))

    def gc(self, name, valid, log):
        from cnilib.firewall import nft, shared
        if nft.available():
            shared.gc(self.table(), name, set(valid), log)


class Iptables:
    """The reference's chains (CNI-DN-<hash>, CNI-SN-<hash>) and its shared
    chains and jumps in the nat table, ours or the Go plugin's, one
    iptables.edit per family and operation."""

    name = "iptables"

    def add(self, cfg, iface, log):
        from cnilib.firewall import iptables
        shared = R.ipt_shared_rules(cfg.snat, cfg.mark_bit, cfg.external_mark_chain)
        needed = R.shared_chains(cfg.snat, cfg.external_mark_chain)
        setmark = cfg.external_mark_chain or R.SETMARK
        if iface:
            # before route_localnet goes on (the plugin turns it on after
            # add); kept, like route_localnet, after the last DEL
            if iptables.edit(4, "raw", lambda saved: R.ipt_guard_lines(saved, iface),
                             "portmap localnet guard (raw PREROUTING)"):
                log.info("iptables raw PREROUTING drops 127.0.0.0/8 arriving on %s", iface)
        done = []
        try:
            for fam in _families(cfg):
                dn = R.ipt_dn_rules(cfg.chain, fam, cfg.ctrs[fam], cfg.mappings, cfg.snat, cfg.masq_all,
                                    setmark)
                entries = R.ipt_entry_rules(cfg.chain, cfg.name, cfg.cid, cfg.mappings, cfg.conditions[fam])

                def lines(saved, fam=fam, dn=dn, entries=entries):
                    out = R.ipt_add_lines(saved, cfg.chain, dn, entries, shared, needed)
                    done.append(fam)
                    return out
                iptables.edit(fam, "nat", lines, "portmap iptables rules (IPv%d)" % fam)
                log.info("iptables IPv%d chain %s: %d rules, %d jumps", fam, cfg.chain, len(dn), len(entries))
                failpoint.hit("portmap-ipt-after-family")
        except BaseException:
            for fam in done:
                try:
                    _ipt_teardown(fam, [cfg.chain], set())
                except errors.CniError:
                    pass
            raise

    def check(self, cfg):
        from cnilib.firewall import iptables
        setmark = cfg.external_mark_chain or R.SETMARK
        shared = R.ipt_shared_rules(cfg.snat, cfg.mark_bit, cfg.external_mark_chain)
        for fam in _families(cfg):
            saved = iptables.save(fam, "nat")
            what = "iptables IPv%d nat table" % fam
            if cfg.chain not in iptables.chains(saved):
                raise errors.Internal("chain %s not found in %s" % (cfg.chain, what),
                                      "run ADD again (or DEL and ADD) to recreate the port mappings")
            have = iptables.rules(saved, cfg.chain)
            want = R.ipt_dn_rules(cfg.chain, fam, cfg.ctrs[fam], cfg.mappings, cfg.snat, cfg.masq_all,
                                  setmark)
            if have != want:
                missing = [r for r in want if r not in have]
                raise errors.Internal("chain %s in %s does not hold the expected rules" % (cfg.chain, what),
                                      "missing %s; found %s" % (missing, have))
            got = R.ipt_entry_ports(saved, cfg.chain)
            for proto, groups in R.port_groups(cfg.mappings).items():
                for ports in groups:
                    if (proto, ports) not in got:
                        raise errors.Internal("%s has no %s jump for ports %s to %s"
                                              % (what, R.TOP_DNAT, ports, cfg.chain))
            rules = set(iptables.rules(saved))
            for _c, line, _first in shared:
                if line not in rules:
                    raise errors.Internal("%s lacks the shared rule '%s'" % (what, line),
                                          "was the nat table flushed (firewalld reload)? ADD restores it")
        iface = guard_iface(cfg)
        if iface:
            line = R.ipt_localnet_guard(iface)
            if line not in iptables.rules(iptables.save(4, "raw"), "PREROUTING"):
                raise errors.Internal("iptables IPv4 raw table lacks the localnet guard '%s'" % line,
                                      "route_localnet is on for %s; ADD restores the guard" % iface)

    def teardown(self, nf, att, udp, log):
        from cnilib.firewall import iptables
        chains = [R.dn_chain(att[0], att[1]), R.sn_chain(att[0], att[1])]
        for fam in [f for f in (4, 6) if iptables.may_hold(f, "nat", chains, nf)]:
            if _ipt_teardown(fam, chains, udp):
                log.info("deleted iptables IPv%d chain %s and its jumps", fam, chains[0])

    def gc(self, name, valid, log):
        from cnilib.firewall import iptables
        live = {cid for cid, _i in valid}
        for fam in (4, 6):
            if proc.which(SAVE[fam]) is None:
                continue
            dead = []

            def lines(saved, dead=dead):
                dead.extend(ch for cid, ch in R.dn_chains_of_network(saved, name).items() if cid not in live)
                return R.ipt_teardown_lines(saved, dead)
            iptables.edit(fam, "nat", lines, "portmap iptables GC (IPv%d)" % fam)
            if dead:
                log.info("GC deleted %d iptables IPv%d chains", len(dead), fam)


def _ipt_teardown(fam, chains, udp_ports):
    """Remove ``chains`` and the rules jumping to them; collect their UDP ports."""
    from cnilib.firewall import iptables

    def lines(saved):
        for c in chains:
            udp_ports.update(R.ipt_udp_ports(saved, c))
        return R.ipt_teardown_lines(saved, chains)
    return bool(iptables.edit(fam, "nat", lines, "portmap iptables teardown (IPv%d)" % fam))


NFTABLES, IPTABLES = Nftables(), Iptables()
BY_NAME = {"nftables": NFTABLES, "iptables": IPTABLES}


def choose(cfg):
    """The backend of an ADD or CHECK: as configured, else nftables when
    nft and nf_tables work, else iptables."""
    if cfg.backend:
        return BY_NAME[cfg.backend]
    from cnilib.firewall import nft
    if nft.available():
        return NFTABLES
    if proc.which("iptables-restore") is not None:
        return IPTABLES
    raise errors.Internal("portmap has no usable backend: neither nft nor iptables-restore works here",
                          "install nftables (or iptables), or check the kernel's nf_tables support")


# ---------------------------------------------------------------- DEL and GC (every backend)

def teardown(name, cid, ifname, mappings, log):
    """DEL: remove every rule of the attachment from both backends, then the
    conntrack entries of its UDP ports, over one netfilter socket."""
    from cnilib.kernel import nftables
    udp = {m.host_port for m in mappings if m.protocol == "udp"}
    try:
        nf = nftables.NfTables()
    except OSError as exc:      # no nf_tables here: only iptables can hold anything
        log.debug("portmap teardown: nf_tables not usable (%s)", exc)
        nf = None
    try:
        for backend in (NFTABLES, IPTABLES):
            backend.teardown(nf, (name, cid, ifname), udp, log)
        flush_conntrack((4, 6), udp, log, nf)
    finally:
        if nf is not None:
            nf.close()


def gc(name, valid, log):
    """Remove the rules of this network's attachments that are not in ``valid``."""
    for backend in (NFTABLES, IPTABLES):
        backend.gc(name, valid, log)
