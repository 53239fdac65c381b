"""doctor's iptables split-brain check: rules in both iptables backends
(legacy and nft), the tools that wrote them, and which backend decides the
fate of the packets the fabric checks walk."""

from cnilib.ops.doctor import trace

# who writes chains of these names (the evidence of which tool uses which backend)
CHAIN_OWNERS = (("KUBE-", "kube-proxy/kubelet"), ("FLANNEL-", "flanneld"),
                ("CNI-", "CNI plugins (portmap, bridge ipMasq, firewall)"), ("DOCKER", "Docker"),
                ("cali-", "Calico"), ("f2b-", "fail2ban"), ("ufw", "ufw"), ("LIBVIRT_", "libvirt"))
# what kubelet and kube-proxy leave in the backend they use (iptables-wrapper's test)
KUBE_MARKS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
                  "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
                  "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
                  "raw": ("PREROUTING", "OUTPUT"), "security": ("INPUT", "FORWARD", "OUTPUT")}


def backend_state(fams):
    """What one iptables backend holds that can change a packet's fate:
    {"rules": n, "chains": [user chains], "policies": ["filter FORWARD DROP"],
    "tables": {family: [tables holding any of it]}}.  A table with only
    built-in chains, no rule and ACCEPT policies (what listing it once
    leaves) changes nothing and does not count."""
    st = {"rules": 0, "chains": [], "policies": [], "tables": {}}
    for fam, tables in sorted(fams.items()):
        for tname, t in sorted(tables.items()):
            rules = sum(len(v) for v in t.chains.values())
            users = [ch for ch in t.chains if ch not in t.policies]
            pols = ["%s%s %s %s" % (tname, "" if fam == 4 else " (IPv6)", ch, p)
                    for ch, p in sorted(t.policies.items()) if p != "ACCEPT"]
            if rules or users or pols:
                st["tables"].setdefault(fam, []).append(tname)
            st["rules"] += rules
            st["chains"] += [ch for ch in users if ch not in st["chains"]]
            st["policies"] += pols
    return st


def chain_writers(chains):
    return sorted({who for ch in chains for prefix, who in CHAIN_OWNERS if ch.startswith(prefix)})


def _state_text(st):
    parts = ["%d rule%s" % (st["rules"], "" if st["rules"] == 1 else "s")]
    if st["chains"]:
        n = len(st["chains"])
        parts.append("%d chain%s (%s%s)" % (n, "" if n == 1 else "s", ", ".join(st["chains"][:6]),
                                           ", ..." if n > 6 else ""))
    if st["policies"]:
        parts.append("policy " + ", ".join(st["policies"]))
    who = chain_writers(st["chains"])
    if who:
        parts.append("written by " + ", ".join(who))
    return ", ".join(parts)


def keep_backend(states, default):
    """(backend to keep, why): the one kubelet/kube-proxy mark as theirs,
    else the one holding more rules, else the node's default."""
    marked = [b for b, st in states.items() if any(m in st["chains"] for m in KUBE_MARKS)]
    if len(marked) == 1:
        return marked[0], "kubelet/kube-proxy use it (%s)" % "/".join(KUBE_MARKS)
    kube = [b for b, st in states.items() if any(ch.startswith("KUBE-") for ch in st["chains"])]
    if len(kube) == 1:
        return kube[0], "kube-proxy's chains are there"
    most = sorted(states, key=lambda b: (-states[b]["rules"], b != default))
    if states[most[0]]["rules"] != states[most[-1]]["rules"]:
        return most[0], "it holds more rules"
    return (default or most[0]), "it is what the node's iptables command writes"


def reset_input(tables):
    """iptables-restore input emptying ``tables``: every chain flushed, user
    chains deleted, built-in policies ACCEPT."""
    lines = []
    for t in tables:
        lines.append("*%s" % t)
        lines += [":%s ACCEPT [0:0]" % ch for ch in BUILTIN_CHAINS.get(t, ())]
        lines.append("COMMIT")
    return "\\n".join(lines) + "\\n"


def _verdict(d):
    """('accept'|'drop'|'reject', by, certain) of a per-backend decision; no
    chain on the hook lets the packet through."""
    if d is None:
        return "accept", "no rule on that hook", True
    return d.verdict, d.by, d.certain


def check_iptables_backends(ctx, c):
    backends = ctx.ipt_backends()
    if not backends:
        return c.set("SKIP", "iptables is not installed (nftables only: nothing to split)")
    states = {name: backend_state(fams) for name, fams in backends}
    for name, _f in backends:
        c.evidence.append("%s%s: %s" % (name, " (the node's iptables)" if name == ctx.ipt_default else "",
                                         _state_text(states[name]) if any(states[name]["tables"].values())
                                         else "nothing"))
    used = [b for b in states if states[b]["tables"]]
    if len(used) < 2:
        if used and used[0] != ctx.ipt_default and ctx.ipt_default:
            c.evidence.append("the rules are in %s while the node's iptables writes %s: the next tool "
                              "run as plain iptables starts a split" % (used[0], ctx.ipt_default))
        return c.set("PASS", "iptables rules live in one backend (%s)"
                     % (used[0] if used else "none has any"))
    # both hold rules: the kernel runs both, and a packet must pass both
    differ, unsure = [], []
    packets = [(label, ("forward",), pkt) for label, pkt in trace.pod_packets(ctx)]
    for dev, info in ctx.vxlan_devs():
        packets += [("VXLAN " + label, hooks, pkt)
                    for _p, hooks, pkt, label in trace.vxlan_packets(ctx, dev, info)]
    for label, hooks, pkt in packets:
        for hook in hooks:
            got = {name: _verdict(trace.ipt_decide(fams.get(pkt.family) or {}, hook, pkt, name))
                   for name, fams in backends}
            passes = {name: v[0] == "accept" for name, v in got.items()}
            if len(set(passes.values())) < 2:
                continue
            line = "%s (%s) on %s: %s" % (label, pkt, hook, "; ".join(
                "%s %s it (%s)" % (name, "ACCEPTS" if passes[name] else v[0].upper() + "S", v[1])
                for name, v in sorted(got.items())))
            stop = [(name, v) for name, v in sorted(got.items()) if not passes[name]][0]
            short = "%s %ss %s what %s accepts (by %s)" % (
                stop[0], stop[1][0], label, " and ".join(n for n in sorted(got) if passes[n]), stop[1][1])
            (differ if all(v[2] for v in got.values()) else unsure).append((line, short))
            break
    names = " and ".join(sorted(used))
    keep, why = keep_backend({b: states[b] for b in used}, ctx.ipt_default)
    drop = [b for b in used if b != keep][0]
    c.evidence += ["verdicts differ: " + x for x, _s in differ]
    c.evidence += ["verdicts may differ: " + x for x, _s in unsure]
    c.evidence.append("keep %s: %s" % (keep, why))
    sfx = drop[len("iptables"):]
    c.add_fix("iptables%s-save > /root/iptables%s.rules; ip6tables%s-save > /root/ip6tables%s.rules   "
              "# a copy of what %s holds: move what you still need into %s"
              % (sfx, sfx, sfx, sfx, drop, keep))
    for fam, tool in ((4, "iptables"), (6, "ip6tables")):
        tables = states[drop]["tables"].get(fam)
        if tables:
            c.add_fix("printf '%s' | %s%s-restore   # empties %s's %s tables %s"
                      % (reset_input(tables), tool, sfx, drop,
                         "IPv4" if fam == 4 else "IPv6", ", ".join(tables)))
    ksfx = keep[len("iptables"):]
    c.add_fix("make every tool write to %s: update-alternatives --set iptables /usr/sbin/iptables%s && "
              "update-alternatives --set ip6tables /usr/sbin/ip6tables%s (Debian, Ubuntu); images that "
              "ship their own iptables (kube-proxy, flannel, Docker) choose at start: restart them after"
              % (keep, ksfx, ksfx))
    if differ:
        return c.set("FAIL", "rules in both %s, and their verdicts differ on %d packet%s: %s"
                     % (names, len(differ), "" if len(differ) == 1 else "s", differ[0][1]))
    c.set("WARN", "rules in both %s (split brain: every packet must pass both; tools reading one "
          "backend do not see the other)%s" % (names, ": their verdicts may differ" if unsure else ""))
