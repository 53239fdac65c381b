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



# ---------------------------------------------------------------- VXLAN checksum offload

# Kernels known to send VXLAN packets with a bad UDP checksum while tx checksum
# offload is on for the vxlan device: (first affected, first fixed), what goes
# wrong, where it is told.  One table: add a row when a distro kernel is found.
VXLAN_CSUM_KERNELS = (
    ((0, 0, 0), (5, 7, 0),
     "with tx checksum offload on, flannel.1 sends a UDP checksum of 0 and leaves the inner one to "
     "the NIC; when the outer header is NATed (kube-proxy's masquerade mark survives encapsulation, "
     "MASQUERADE --random-fully changes the port) netfilter 'updates' that 0 into a wrong checksum, and "
     "the peer drops the packet ('UDP: bad checksum ... :8472'; 63 s ClusterIP delays)",
     "fixed in Linux 5.7 by ea64d8d6c675 'netfilter: nat: never update the UDP checksum when it's 0'; "
     "flannel-io/flannel#1279, k3s-io/k3s#2013, kubernetes/kubernetes#88986; Calico turns the offload "
     "off below 5.7 (projectcalico/felix#2811); the workaround is in flannel's troubleshooting guide"),
)
CSUM_FEATURE = "tx-checksum-ip-generic"
# past the range: reports of bad VXLAN checksums on fixed kernels, tied to the NIC or hypervisor
CSUM_LATER = ("reported on 5.8, 5.15 and 6.8 kernels with some NICs and hypervisors (VMware vmxnet3): "
              "projectcalico/calico#4865, kubernetes-sigs/kubespray#8992, flannel-io/flannel#2152")
UDEV_RULE = ('SUBSYSTEM=="net", ACTION=="add|change|move", ENV{INTERFACE}=="%s", '
             'RUN+="/usr/sbin/ethtool -K %s tx-checksum-ip-generic off"')


def csum_affected(version):
    """The VXLAN_CSUM_KERNELS rows ``version`` (a (major, minor, patch)) falls in."""
    return [row for row in VXLAN_CSUM_KERNELS if version is not None and row[0] <= version < row[1]]


def parse_ethtool_features(text):
    """{feature: "on"|"off"} of ``ethtool -k DEV`` (", [fixed]" and "[requested on]" dropped)."""
    out = {}
    for line in text.splitlines():
        name, sep, val = line.strip().partition(":")
        if sep and val.strip():
            out[name.strip()] = val.split()[0]
    return out


def udp_csum_errors(path="/proc/net/snmp"):
    """Udp InCsumErrors of this netns (datagrams dropped for a bad checksum), or None."""
    try:
        with open(path) as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
    except OSError:
        return None
    if len(rows) >= 2 and "InCsumErrors" in rows[0]:
        try:
            return int(rows[1][rows[0].index("InCsumErrors")])
        except (ValueError, IndexError):
            return None
    return None


def _ethtool_features(dev):
    from cnilib.base import proc
    r = proc.run(["ethtool", "-k", dev], timeout=15)
    if r.rc != 0:
        raise OSError("ethtool -k %s failed (exit %d): %s" % (dev, r.rc, r.err_text(200)))
    return parse_ethtool_features(r.out.decode("utf-8", "replace"))


def check_vxlan_csum(ctx, c):
    devs = [d for d, _i in ctx.vxlan_devs()]
    if not devs:
        return c.set("SKIP", "no flannel vxlan device here (host-gw, or no flannel)")
    text, ver = ctx.kernel_release()
    rows = csum_affected(ver)
    errs = udp_csum_errors()
    c.evidence.append("kernel %s%s: %s" % (
        text, " (given by --kernel-version)" if ctx.opt("kernel_version") else "",
        "cannot tell its version" if ver is None else
        "in the range that sends bad VXLAN checksums with offload on (< %s)" % ".".join(map(str, rows[0][1]))
        if rows else "has the fix (5.7+)"))
    if errs is not None:
        c.evidence.append("Udp InCsumErrors %d (UDP datagrams this netns dropped for a bad checksum)" % errs)
    on = []
    for dev in devs:
        try:
            feats = _ethtool_features(dev.name)
        except FileNotFoundError:
            c.error = "ethtool is not installed: cannot read %s's offloads" % dev.name
            return c.set("SKIP", c.error, (), ["apt-get install ethtool (dnf install ethtool)"])
        state = feats.get(CSUM_FEATURE)
        c.evidence.append("%s: %s %s" % (dev.name, CSUM_FEATURE, state or "(not reported)"))
        if state == "on":
            on.append(dev.name)
    if not rows and on and errs:
        # the fixed kernels too, with some NICs and hypervisors (VMware's vmxnet3 most often)
        c.evidence.append("source: %s" % CSUM_LATER)
        for name in on:
            c.add_fix("ethtool -K %s %s off" % (name, CSUM_FEATURE), safe=True)
        c.add_fix("if it cures the drops: echo '%s' > /etc/udev/rules.d/90-flannel.rules   # keeps it off "
                  "when flanneld recreates %s" % (UDEV_RULE % (on[0], on[0]), on[0]))
        return c.set("WARN", "kernel %s has the fix, but %d UDP datagrams with bad checksums arrived here "
                     "and tx checksum offload is on for %s: some NICs and hypervisors still corrupt VXLAN "
                     "checksums" % (text, errs, ", ".join(on)))
    if not rows:
        return c.set("PASS", "kernel %s does not send bad VXLAN checksums (fixed in 5.7)%s" % (
            text, "; offload on for %s" % ", ".join(on) if on else ""))
    c.evidence.append("why: %s" % rows[0][2])
    c.evidence.append("source: %s" % rows[0][3])
    if not on:
        return c.set("PASS", "kernel %s is affected, and tx checksum offload is off on %s (the workaround "
                     "is in place)" % (text, ", ".join(d.name for d in devs)))
    for name in on:
        c.add_fix("ethtool -K %s %s off" % (name, CSUM_FEATURE), safe=True)
    for name in on:
        c.add_fix("echo '%s' > /etc/udev/rules.d/90-flannel.rules   # keeps it off when flanneld recreates %s"
                  % (UDEV_RULE % (name, name), name))
    c.add_fix("or run a kernel >= 5.7 (or a distro kernel carrying ea64d8d6c675), where offload is safe")
    if errs:
        return c.set("FAIL", "kernel %s sends bad VXLAN checksums with tx checksum offload on %s, and %d "
                     "UDP datagrams with bad checksums arrived here: pods on other nodes time out"
                     % (text, ", ".join(on), errs))
    c.set("WARN", "kernel %s sends bad VXLAN checksums with tx checksum offload, which is on for %s: "
          "NATed pod traffic between nodes is dropped by the peer" % (text, ", ".join(on)))


# ---------------------------------------------------------------- table sizes

NEIGH_WARN, CT_WARN, CT_FAIL = 0.9, 0.75, 0.9


def _int(v):
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


def _pow2(n):
    p = 1
    while p < n:
        p *= 2
    return p


def neigh_sizes(need, t3=None):
    """gc_thresh1/2/3 for a node needing ``need`` neighbour entries: thresh3
    at least twice that (a power of two, never below 4096 nor ``t3``)."""
    t = max(4096, _pow2(2 * need), t3 or 0)
    return t // 4, t // 2, t


def _peer_nodes(ctx):
    """The other nodes this one knows: VXLAN peers, host-gw routes into the
    pod networks via a gateway, --nodes entries."""
    peers = set()
    for dev, _i in ctx.vxlan_devs():
        peers |= {f.dst for f in ctx.fdb(dev.index)}
    nets = [n for n, _s, _b in ctx.pod_networks()]
    for r in ctx.routes():
        if r.dst is not None and getattr(r, "gateway", None):
            try:
                dst = ipaddress.ip_network(r.cidr, strict=False)
            except ValueError:
                continue
            gw = ipaddress.ip_address(r.gateway)
            if any(dst.version == n.version and dst.subnet_of(n) for n in nets) \
                    and not any(gw in n for n in nets):      # host-gw: via the peer's own address
                peers.add(r.gateway)
    listed = 0
    path = ctx.opt("nodes")
    if path:
        from cnilib.base import jsonio
        try:
            with open(path, "rb") as f:
                data = jsonio.loads(f.read())
            listed = len(data["nodes"] if isinstance(data, dict) and "nodes" in data else data) - 1
        except (OSError, ValueError, TypeError, KeyError):
            listed = 0
    return max(len(peers), listed)


def check_table_sizes(ctx, c):
    pods = sum(1 for r in ctx.node.rows if r.live)
    nodes = _peer_nodes(ctx) + 1
    need = pods + nodes
    given = ctx.opt("neigh_gc_thresh3")
    t3 = _int(given) if given is not None else _int(ctx.sysctl("net/ipv4/neigh/default/gc_thresh3"))
    ct_given = ctx.opt("conntrack_max")
    ct_max = _int(ct_given) if ct_given is not None else _int(ctx.sysctl("net/netfilter/nf_conntrack_max"))
    ct_count = _int(ctx.sysctl("net/netfilter/nf_conntrack_count"))
    statuses, what = [], []
    entries = sum(1 for n in ctx.neighbours_all() if n.family == 2)
    c.evidence.append("%d live pod(s) + %d node(s) = %d neighbours needed; %d IPv4 neighbour entries now"
                      % (pods, nodes, need, entries))
    if t3 is None:
        c.evidence.append("net.ipv4.neigh.default.gc_thresh3: not visible in this netns (the limit is "
                          "machine-wide: run doctor in the host's netns, or give --neigh-gc-thresh3)")
    else:
        c.evidence.append("net.ipv4.neigh.default.gc_thresh3 = %d%s"
                          % (t3, " (given)" if given is not None else ""))
        worst_need = max(need, entries)
        if worst_need > t3:
            statuses.append("FAIL")
            what.append("gc_thresh3 %d is below the %d neighbours this node needs: the kernel logs "
                        "'neighbour table overflow' and drops packets to new neighbours" % (t3, worst_need))
        elif worst_need > NEIGH_WARN * t3:
            statuses.append("WARN")
            what.append("gc_thresh3 %d is nearly used up (%d needed)" % (t3, worst_need))
        else:
            statuses.append("PASS")
        if statuses[-1] != "PASS":
            t1, t2, t3n = neigh_sizes(worst_need, t3)
            keys = ["net.%s.neigh.default.gc_thresh%d=%d" % (fam, i, v)
                    for fam in ("ipv4", "ipv6") for i, v in ((1, t1), (2, t2), (3, t3n))]
            c.add_fix("sysctl -w %s" % " ".join(keys))
            c.add_fix("printf '%s\\n' > /etc/sysctl.d/90-neigh.conf   # survives a reboot"
                      % "\\n".join(k.replace("=", " = ") for k in keys))
    if ct_max is None or ct_count is None:
        c.evidence.append("conntrack: %s" % ("no nf_conntrack here" if ct_count is None else
                                             "nf_conntrack_max not visible (give --conntrack-max)"))
    else:
        c.evidence.append("conntrack: %d entries of nf_conntrack_max %d%s (%.0f%%)" % (
            ct_count, ct_max, " (given)" if ct_given is not None else "", 100.0 * ct_count / max(ct_max, 1)))
        if ct_count >= CT_FAIL * ct_max:
            statuses.append("FAIL")
            what.append("conntrack holds %d of %d entries: new connections are dropped ('nf_conntrack: "
                        "table full, dropping packet')" % (ct_count, ct_max))
        elif ct_count >= CT_WARN * ct_max:
            statuses.append("WARN")
            what.append("conntrack holds %d of %d entries" % (ct_count, ct_max))
        else:
            statuses.append("PASS")
        if statuses[-1] != "PASS":
            new = max(_pow2(2 * ct_count), 2 * ct_max)
            c.add_fix("sysctl -w net.netfilter.nf_conntrack_max=%d   # kube-proxy sets it at start from "
                      "--conntrack-max-per-core (conntrack.maxPerCore): raise that too, or it comes back"
                      % new)
            c.add_fix("echo %d > /sys/module/nf_conntrack/parameters/hashsize   # buckets: max / 4"
                      % (new // 4))
    if not statuses:
        return c.set("SKIP", "neither limit is visible here (machine-wide: run in the host's netns, or "
                     "give --neigh-gc-thresh3 / --conntrack-max)")
    st = worst(statuses)
    c.set(st, "; ".join(what) if what else
          "the neighbour and conntrack tables fit this node (%d pods, %d nodes)" % (pods, nodes))
