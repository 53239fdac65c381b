"""doctor's pod and state checks: what the layers hold for attachments that
are gone (leases, veths, rules, records) and state files that are damaged,
each with the command that cleans it up."""

import ipaddress
import os
import sys

from cnilib.base import paths
from cnilib.ops.doctor.context import config_subnets
from cnilib.ops.doctor.report import cmd_text, worst


def _pycni():
    """How to call pycni in a fix line: 'pycni' when the running one is on
    PATH, else its full path."""
    exe = sys.argv[0] if sys.argv else ""
    if os.path.basename(exe) != "pycni":
        return "pycni"
    d = os.path.dirname(os.path.abspath(exe))
    on_path = [os.path.abspath(p) for p in os.environ.get("PATH", "").split(":") if p]
    return "pycni" if d in on_path else os.path.abspath(exe)


def _del_cmd(ctx, r):
    env = []
    if ctx.loc.conf_dir != paths.CONF_DIR:
        env.append("NETCONFPATH=%s" % ctx.loc.conf_dir)
    env.append("CNI_PATH=%s" % ":".join(ctx.loc.bin_dirs))
    if ctx.loc.cache_dir != paths.CACHE_DIR:
        env.append("PYCNI_CACHE_DIR=%s" % ctx.loc.cache_dir)
    return "%s %s del %s --container-id %s --ifname %s   # DEL with the cached config releases " \
           "every layer" % (" ".join(env), _pycni(), cmd_text([r.network]), cmd_text([r.cid]),
                            cmd_text([r.ifname]))


def _can_del(ctx, r):
    return (r.cache is not None and r.network and r.cid and r.ifname
            and any(n.name == r.network for n in ctx.loc.networks()))


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
        if _can_del(ctx, r):
            f = _del_cmd(ctx, r)
        else:
            f = "rm %s" % " ".join(cmd_text([lease.path]) for lease in r.leases)
        if f not in c.fix:
            c.fix.append(f)
    for net, n in counts.items():
        cap = _capacity(ctx, net)
        if cap and n >= cap:
            full.append(net)
    c.fix.append("or for a whole network: pycni gc <network> --dry-run, then without --dry-run "
                 "(cniVersion 1.1.0; the result cache is the valid set)")
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
        if _can_del(ctx, r):
            c.fix.append(_del_cmd(ctx, r))
        else:
            for g in r.rules:
                c.fix += [cmd_text(argv) for argv in g.delete]
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
        if _can_del(ctx, r):
            c.fix.append(_del_cmd(ctx, r))
        else:
            c.fix += ["rm %s" % cmd_text([obj.path]) for o, obj in (("cache", r.cache), ("saved", r.saved),
                                                                  ("tuning", r.tuning)) if o in layers]
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
                         + _pycni() + " del %s --container-id %s   # pycni's "
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

