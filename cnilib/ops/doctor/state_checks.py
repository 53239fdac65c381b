"""doctor's pod and state checks: what the layers hold for attachments that
are gone (leases, veths, rules, records) and state files that are damaged,
each with the command that cleans it up.

The cleanup of an attachment is marked safe for ``--fix`` only when
``pycni gc --auto`` would free it too (its judgement, cnilib.ops.autogc: a
record says its netns is gone, nothing holds it live) and then it is the
DEL through its network's plugins; a lease or record removed by hand,
without its plugin's lock, is never applied by ``--fix``."""

import ipaddress

from cnilib.base import paths
from cnilib.ops.doctor.context import config_subnets
from cnilib.ops.doctor.report import cmd_text, pycni_command, worst


def _del_cmd(ctx, r):
    env = []
    if ctx.loc.conf_dir != paths.CONF_DIR:
        env.append("NETCONFPATH=%s" % cmd_text([ctx.loc.conf_dir]))
    env.append("CNI_PATH=%s" % cmd_text([":".join(ctx.loc.bin_dirs)]))
    if ctx.loc.cache_dir != paths.CACHE_DIR:
        env.append("PYCNI_CACHE_DIR=%s" % cmd_text([ctx.loc.cache_dir]))
    return "%s %s del %s --container-id %s --ifname %s   # DEL through the network's plugins " \
           "releases every layer" % (" ".join(env), cmd_text([pycni_command()]), cmd_text([r.network]),
                                     cmd_text([r.cid]), cmd_text([r.ifname]))


def _can_del(ctx, r):
    return r.cache is not None and _configured(ctx, r)


def _configured(ctx, r):
    return bool(r.network and r.cid and r.ifname and any(n.name == r.network for n in ctx.loc.networks()))


def _verdicts(ctx):
    """{attachment key: Verdict} by ``pycni gc --auto``'s judgement
    (cnilib.ops.autogc.judge: the netns a record names is gone, and nothing
    holds the attachment live), read once per run."""
    v = getattr(ctx, "gc_verdicts", None)
    if v is None:
        from cnilib.ops import autogc
        recs = autogc.read_records([])
        by_netns = autogc.peers_by_netns(ctx.node.rows)
        nsdev = autogc.nsfs_dev()
        v = {r.key: autogc.judge(r, recs.get(r.key, []), by_netns, nsdev)
             for r in ctx.node.rows if all(r.key)}
        ctx.gc_verdicts = v
    return v


def _cleanup(ctx, c, r, by_hand):
    """The fix for what gone attachment ``r`` left: its DEL through the
    network's plugins when gc --auto would judge it dead (safe: every layer
    released under its plugin's lock, CNI_NETNS empty), else the DEL with
    its cached config or ``by_hand`` (print-only: nothing says its netns is
    gone, or no config can DEL it).  ``by_hand`` is [(line, safe)]."""
    v = _verdicts(ctx).get(r.key)
    dead = v is not None and v.state == "dead"
    name = "%s/%s/%s" % (r.network or "?", r.cid or "?", r.ifname or "?")
    if dead and _configured(ctx, r):
        c.evidence.append("  %s is gone: %s" % (name, v.why))
        return c.add_fix(_del_cmd(ctx, r), safe=True)
    if v is not None and not dead:
        c.evidence.append("  %s: not for --fix: %s" % (name, v.why))
    if _can_del(ctx, r):
        return c.add_fix(_del_cmd(ctx, r))
    for line, safe in by_hand:
        c.add_fix(line, safe=safe and dead)


def _capacity(ctx, network):
    """Usable addresses of ``network``'s host-local ranges, or None when unknown."""
    for net in ctx.loc.networks():
        if net.name != network:
            continue
        total = 0
        for p in net.plugins:
            if p.get("type") == "flannel":
                env, _ = ctx.subnet_env(p.get("subnetFile") or paths.FLANNEL_SUBNET_FILE)
                subs = env.subnets() if env else []
            else:
                subs = [c for c, _ in config_subnets(net, lambda path: None)]
            for s in subs:
                n = ipaddress.ip_network(s, strict=False)
                total += max(n.num_addresses - (3 if n.version == 4 else 2), 0)
        return total or None
    return None


def check_ipam_leaks(ctx, c):
    rows = [r for r in ctx.node.rows if "lease" in r.orphan]
    counts = {}
    for lease in ctx.node.leases:
        counts[lease.network] = counts.get(lease.network, 0) + 1
    for net, n in sorted(counts.items()):
        cap = _capacity(ctx, net)
        leaked = sum(len(r.leases) for r in rows if r.network == net)
        c.evidence.append("network %s: %d lease(s)%s, %d leaked" % (
            net, n, " of %d addresses" % cap if cap else "", leaked))
    if not ctx.node.leases:
        return c.set("PASS", "no host-local lease on this node" if ctx.node.lease_nets or ctx.node.leases
                     else "no host-local lease dir found (%s)" % ", ".join(ctx.loc.data_dirs))
    if not rows:
        return c.set("PASS", "every lease belongs to a live attachment")
    full = []
    for r in rows:
        for lease in r.leases:
            c.evidence.append("%s %s held by %s/%s: no veth, no netns"
                              % (r.network, lease.ip, r.cid, r.ifname))
        # by hand: the lease file alone, without host-local's lock: never applied by --fix
        _cleanup(ctx, c, r, [("rm %s" % " ".join(cmd_text([lease.path]) for lease in r.leases), False)])
    for net, n in counts.items():
        cap = _capacity(ctx, net)
        if cap and n >= cap:
            full.append(net)
    c.add_fix("or for every network: pycni gc --auto --dry-run, then without --dry-run (what the "
              "pycni-gc.timer runs: attachments whose netns is gone)")
    n = sum(len(r.leases) for r in rows)
    if full:
        return c.set("FAIL", "%d leaked lease(s); %s full: new pods get 'no IP addresses available'"
                     % (n, ", ".join(full)))
    c.set("WARN", "%d leaked lease(s) of attachments that are gone" % n)


def check_orphan_veths(ctx, c):
    rows = [r for r in ctx.node.rows if "veth" in r.orphan]
    if not rows:
        n = sum(1 for r in ctx.node.rows if r.veth is not None)
        return c.set("PASS", "every CNI host veth belongs to a known attachment (%d)" % n)
    for r in rows:
        c.evidence.append("%s (alias %r, peer in %s): %s" % (
            r.veth.name, r.veth.alias or "", r.netns_path() or "an unknown netns",
            "its attachment %s/%s/%s holds no lease" % (r.network, r.cid, r.ifname) if r.cid
            else "no lease, cache entry or alias names it"))
        c.fix.append("ip link delete %s" % r.veth.name)
    c.set("WARN", "%d host veth(s) with no lease or record: a DEL that stopped halfway, or IPs that "
          "may be handed out twice" % len(rows))


def check_leftover_rules(ctx, c):
    rows = [r for r in ctx.node.rows if "rules" in r.orphan]
    if not rows:
        return c.set("PASS", "every portmap, masquerade and firewall rule belongs to a live attachment "
                     "(%d rule set(s))" % len(ctx.node.groups))
    live_ports = {}
    for r in ctx.node.rows:
        if r.live:
            for p in r.host_ports():
                live_ports[(p[0], p[1], p[2])] = (r, p)
    conflict = []
    for r in rows:
        for g in r.rules:
            c.evidence.append("%s (%s) of %s/%s/%s" % (g.where, g.what, r.network or "?", r.cid or "?",
                                                       r.ifname or "?"))
            for p in g.ports:
                c.evidence.append("  DNAT %s %s%d -> %s:%s"
                                  % (p[0], (p[1] + ":") if p[1] else "", p[2], p[3], p[4]))
                other = live_ports.get((p[0], p[1], p[2]))
                if other is not None:
                    conflict.append("hostPort %s/%d goes to the dead %s and the live %s (%s)" % (
                        p[0], p[2], p[3], other[1][3], other[0].pod or other[0].cid))
        # by hand: each element, chain or rule, named by the attachment's key
        _cleanup(ctx, c, r, [(cmd_text(argv), True) for g in r.rules for argv in g.delete])
    if conflict:
        c.evidence += conflict
        return c.set("FAIL", "leftover rules: " + "; ".join(conflict))
    c.set("WARN", "%d rule set(s) of attachments that are gone" % sum(len(r.rules) for r in rows))


def check_stale_records(ctx, c):
    found = 0
    for r in ctx.node.rows:
        layers = [o for o in r.orphan if o in ("cache", "saved", "tuning")]
        if not layers:
            continue
        found += 1
        for o, obj in (("cache", r.cache), ("saved", r.saved), ("tuning", r.tuning)):
            if o in layers:
                c.evidence.append("%s of %s/%s/%s: %s" % (
                    {"cache": "result cache entry", "saved": "flannel saved config",
                     "tuning": "tuning originals"}[o], r.network or "?", r.cid or "?", r.ifname or "?",
                    obj.path)
                    + (" (netns %s gone)" % r.cache.netns if o == "cache" and r.cache.netns else ""))
        _cleanup(ctx, c, r, [("rm %s" % cmd_text([obj.path]), False) for o, obj in
                             (("cache", r.cache), ("saved", r.saved), ("tuning", r.tuning)) if o in layers])
    if not found:
        return c.set("PASS", "no record of a gone attachment (cache %s, flannel %s)"
                     % (ctx.loc.cache_dir, ", ".join(ctx.loc.flannel_dirs)))
    c.set("WARN", "%d attachment(s) gone but still recorded: the runtime will retry their DEL, or "
          "nobody will" % found)


def check_state_files(ctx, c):
    statuses = []
    for s in ctx.node.saved:
        if s.state in ("empty", "corrupt"):
            statuses.append("FAIL")
            c.evidence.append("flannel saved config %s is %s%s"
                              % (s.path, s.state, ": " + s.why if s.why else ""))
            c.fix.append("NETCONFPATH=%s CNI_PATH=%s " % (ctx.loc.conf_dir, ":".join(ctx.loc.bin_dirs))
                         + pycni_command() + " del %s --container-id %s   # pycni's "
                         "flannel rebuilds the config from subnet.env and releases the lease; the Go "
                         "plugin fails this DEL: then rm %s" % (s.network or "<network>", cmd_text([s.cid]),
                                                              cmd_text([s.path])))
    for e in ctx.node.cache:
        if e.problem:
            statuses.append("FAIL")
            c.evidence.append("result cache entry %s: %s" % (e.path, e.problem))
            c.fix.append("rm %s   # libcni before 1.2 fails every DEL/CHECK on it" % cmd_text([e.path]))
    for lease in ctx.node.leases:
        if lease.torn:
            statuses.append("WARN")
            c.evidence.append("lease %s holds no owner (empty or garbled)" % lease.path)
            c.fix.append("rm %s   # pycni's host-local also reclaims it when it needs the address"
                         % cmd_text([lease.path]))
    for t in ctx.node.tuning:
        if not t.ok:
            statuses.append("WARN")
            c.evidence.append("tuning originals %s do not parse: DEL cannot restore the interface" % t.path)
            c.fix.append("rm %s" % cmd_text([t.path]))
    if not statuses:
        return c.set("PASS", "no empty or corrupt state file (%d saved config(s), %d cache entr%s, "
                     "%d lease(s))" % (len(ctx.node.saved), len(ctx.node.cache),
                                       "y" if len(ctx.node.cache) == 1 else "ies", len(ctx.node.leases)))
    st = worst(statuses)
    c.set(st, "%d damaged state file(s)" % len(statuses))

