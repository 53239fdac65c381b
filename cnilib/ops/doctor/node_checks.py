"""doctor's host checks: the bridge address, forwarding, reverse-path and
bridge netfilter sysctls, the MTU chain."""

import ipaddress

from cnilib.ops.doctor.report import worst

VXLAN_OVERHEAD = 50


def check_bridge_address(ctx, c):
    nets = ctx.bridge_networks()
    if not nets:
        return c.set("SKIP", "no bridge or flannel network configured")
    statuses = []
    for name, br, subs, gw in nets:
        link = ctx.by_name.get(br)
        if not subs:
            c.evidence.append("network %s: its subnet is unknown (subnet.env missing?)" % name)
            continue
        nets_ = [ipaddress.ip_network(s, strict=False) for s in subs]
        if link is None:
            statuses.append("PASS")
            c.evidence.append("network %s: %s does not exist yet (the first pod ADD makes it)" % (name, br))
            continue
        have = [a for a in ctx.addrs_of(link.index) if a.scope == 0]
        ports = ctx.ports_of(link)
        c.evidence.append("network %s: %s holds %s, subnet %s, %d port(s)" % (
            name, br, ", ".join(a.cidr for a in have) or "no address", ", ".join(subs), len(ports)))
        stale = [a for a in have if not any(ipaddress.ip_address(a.address) in n for n in nets_)
                 and a.family == 2]
        if stale:
            statuses.append("FAIL")
            for a in stale:
                c.evidence.append("%s holds %s, outside %s: a leftover of an earlier lease or cluster; "
                                  "the reference bridge fails every ADD with 'already has an IP address "
                                  "different from ...'" % (br, a.cidr, ", ".join(subs)))
                if ports:
                    c.fix.append("%d pod(s) still use %s: drain the node (kubectl drain <node> "
                                 "--ignore-daemonsets), then ip link delete %s" % (len(ports), br, br))
                else:
                    # no port on the bridge, the address outside every subnet it serves: safe
                    c.add_fix("ip addr del %s dev %s   # no pod uses it; the next ADD adds the gateway"
                              % (a.cidr, br), safe=True)
            continue
        if gw:
            want = [str(n.network_address + 1) for n in nets_]
            if not any(a.address in want for a in have):
                statuses.append("WARN" if ports else "PASS")
                c.evidence.append("%s lacks the gateway %s" % (br, " or ".join(want)))
                if ports:
                    c.fix.append("ip addr add %s/%d dev %s" % (want[0], nets_[0].prefixlen, br))
                continue
        statuses.append("PASS")
    st = worst(statuses)
    c.set(st, {"PASS": "bridge addresses match their subnets",
               "WARN": "a bridge lacks its gateway address",
               "FAIL": "a bridge holds an address from another subnet",
               "SKIP": "no bridge subnet known"}[st])


def check_ip_forward(ctx, c):
    if not ctx.loc.networks():
        return c.set("SKIP", "no network configured")
    v4 = ctx.sysctl("net/ipv4/ip_forward")
    c.evidence.append("net.ipv4.ip_forward = %s" % v4)
    want6 = any(n.version == 6 for n, _s, _b in ctx.pod_networks())
    v6 = ctx.sysctl("net/ipv6/conf/all/forwarding") if want6 else None
    if want6:
        c.evidence.append("net.ipv6.conf.all.forwarding = %s" % (v6 if v6 is not None else
                                                                 "(absent: IPv6 is disabled)"))
    bad = []
    if v4 != "1":
        bad.append("net.ipv4.ip_forward=1")
    if want6 and v6 != "1":
        bad.append("net.ipv6.conf.all.forwarding=1")
    if bad:
        for b in bad:
            c.add_fix("sysctl -w %s" % b, safe=True)
        return c.set("FAIL", "forwarding is off: pods cannot reach beyond this node", (),
                     ["printf '%%s\\n' %s > /etc/sysctl.d/90-pycni.conf   # survives a reboot"
                      % " ".join("'%s'" % b.replace("=", " = ") for b in bad)])
    c.set("PASS", "forwarding is on")


def check_rp_filter(ctx, c):
    devs = ctx.vxlan_devs()
    names = [n for n in ("flannel.1", "cni0") if n in ctx.by_name]
    underlay = None
    if devs and devs[0][1].link in ctx.by_index:
        underlay = ctx.by_index[devs[0][1].link].name
        names.append(underlay)
    if not names:
        return c.set("SKIP", "no flannel.1, cni0 or underlay to look at")
    allv = ctx.sysctl("net/ipv4/conf/all/rp_filter")
    strict = []
    for n in names:
        v = ctx.sysctl("net/ipv4/conf/%s/rp_filter" % n)
        eff = max(int(allv or 0), int(v or 0))
        shown = {0: "off", 1: "strict", 2: "loose"}.get(eff, eff)
        c.evidence.append("%s: rp_filter %s (all %s) -> %s" % (n, v, allv, shown))
        if eff == 1:
            strict.append(n)
    asym = []
    if devs and underlay in strict:
        dev, info = devs[0]
        for f in ctx.fdb(dev.index):
            r = ctx.route(f.dst)
            if r is not None and r.oif and r.oif != info.link:
                asym.append("peer %s is routed via %s, VXLAN arrives on %s" % (
                    f.dst, ctx.by_index.get(r.oif).name if r.oif in ctx.by_index else r.oif, underlay))
    if asym:
        return c.set("WARN", "strict rp_filter on an asymmetric path drops overlay traffic", asym,
                     ["sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.%s.rp_filter=2   # loose"
                      % underlay])
    c.set("PASS", "no strict reverse-path filter on an asymmetric pod path"
          + (" (strict on %s, symmetric)" % ", ".join(strict) if strict else ""))


def check_br_netfilter(ctx, c):
    if not ctx.bridge_networks():
        return c.set("SKIP", "no bridge network configured")
    v4 = ctx.sysctl("net/bridge/bridge-nf-call-iptables")
    v6 = ctx.sysctl("net/bridge/bridge-nf-call-ip6tables")
    if v4 is None:
        return c.set("SKIP", "the kernel has no bridge netfilter in this netns "
                     "(/proc/sys/net/bridge absent: br_netfilter not loaded or not built): bridged "
                     "pod-to-pod traffic bypasses iptables, so Service replies between pods of one "
                     "node are not un-NATed", (),
                     ["modprobe br_netfilter && echo br_netfilter > /etc/modules-load.d/br_netfilter.conf"])
    c.evidence.append("net.bridge.bridge-nf-call-iptables = %s, bridge-nf-call-ip6tables = %s" % (v4, v6))
    if v4 != "1":
        return c.set("WARN", "bridged pod traffic skips iptables: a Service backed by a pod on "
                     "the same node fails (k8s#38802)", (),
                     ["sysctl -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1"])
    c.set("PASS", "bridged traffic goes through iptables")


def check_mtu(ctx, c):
    env, path = ctx.flannel_env()
    devs = ctx.vxlan_devs()
    if env is None and not devs:
        return c.set("SKIP", "no subnet.env and no flannel vxlan device")
    bad = []
    want = env.mtu if env is not None else None
    for dev, info in devs:
        under = ctx.by_index.get(info.link)
        over = VXLAN_OVERHEAD if dev.name == "flannel.1" else 70
        if under is not None:
            c.evidence.append("%s mtu %d over %s mtu %d (needs >= %d)" % (dev.name, dev.mtu, under.name,
                                                                         under.mtu, dev.mtu + over))
            if under.mtu < dev.mtu + over:
                bad.append("%s mtu %d needs an underlay of %d; %s has %d" % (
                    dev.name, dev.mtu, dev.mtu + over, under.name, under.mtu))
                c.fix.append("ip link set %s mtu %d, FLANNEL_MTU=%d (flanneld derives it from the "
                             "underlay: restart flanneld), then recreate the pods"
                             % (dev.name, under.mtu - over, under.mtu - over))
        if dev.name == "flannel.1" and want is not None and dev.mtu != want:
            bad.append("FLANNEL_MTU %d in %s, flannel.1 has %d" % (want, path, dev.mtu))
            c.fix.append("restart flanneld so subnet.env and flannel.1 agree")
    if want is not None:
        br_name = ctx._flannel_bridge()
        br = ctx.by_name.get(br_name)
        if br is not None:
            c.evidence.append("%s mtu %d, FLANNEL_MTU %d" % (br_name, br.mtu, want))
            if br.mtu != want:
                bad.append("%s mtu %d != FLANNEL_MTU %d" % (br_name, br.mtu, want))
                c.fix.append("ip link set %s mtu %d" % (br_name, want))
            veths = [link for link in ctx.ports_of(br) if link.kind == "veth"]
            wrong = [link for link in veths if link.mtu != want]
            c.evidence.append("%d veth(s) on %s, %d with mtu != %d" % (len(veths), br_name, len(wrong), want))
            rows = {r.veth.name: r for r in ctx.node.rows if r.veth is not None}
            for link in wrong:
                r = rows.get(link.name)
                who = " (%s)" % (r.pod or r.cid) if r is not None and (r.pod or r.cid) else ""
                bad.append("veth %s%s mtu %d" % (link.name, who, link.mtu))
            if wrong:
                c.fix.append("recreate the pods of %s (their eth0 has the old MTU too; pycni whois "
                             "<veth> names them), or ip link set <veth> mtu %d plus the same on eth0 "
                             "inside the pod" % (", ".join(link.name for link in wrong), want))
    if bad:
        return c.set("FAIL", "MTU chain broken: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""),
                     ["mismatch: " + b for b in bad])
    c.set("PASS", "MTU chain consistent (underlay >= flannel.1 + %d, cni0 and veths = FLANNEL_MTU)"
          % VXLAN_OVERHEAD)

