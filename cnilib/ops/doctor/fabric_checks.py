"""doctor's flannel fabric and firewall checks: pod traffic through the
forward hook and VXLAN through INPUT/OUTPUT (walked by ``trace``), flannel.1's
local address, the nodes' public IPs."""

import ipaddress
import re

from cnilib.ops.doctor import trace
from cnilib.ops.doctor.context import process_running
from cnilib.ops.doctor.report import cmd_text, pycni_command, worst

OUTSIDE_PROBE = "203.0.113.1"     # TEST-NET-3: only asked of the routing table, never sent to
ANNOTATION = "flannel.alpha.coreos.com/"
FWD_CHAIN = "FLANNEL-FWD"
FWD_FIX = re.compile(r"^\S+ fabric forward-rules --network(-v6)? \S+   # ")


def remote_address(network, local):
    """An address in ``network`` outside ``local`` (a pod on another node)."""
    if local.prefixlen <= network.prefixlen:
        return None
    for sub in network.subnets(new_prefix=local.prefixlen):
        if sub != local:
            return sub.network_address + 2
    return None


def parse_node_list(data):
    """[(name, public IP)] from the fabric's nodes file (a list or {"nodes": [...]})."""
    if isinstance(data, dict) and "nodes" in data:
        data = data["nodes"]
    out = []
    for i, item in enumerate(data if isinstance(data, list) else ()):
        if isinstance(item, dict):
            out.append((str(item.get("name") or "node %d" % i), item.get("publicIP")))
    return out


def parse_annotations(data):
    """[(name, public IP, VtepMAC or None)] from node annotations: kubectl's
    ``get nodes -o json`` List, a list of node objects, or {name: {annotation: value}}."""
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]
    nodes = []
    if isinstance(data, list):
        for i, n in enumerate(data):
            md = n.get("metadata", {}) if isinstance(n, dict) else {}
            nodes.append((md.get("name") or "node %d" % i, md.get("annotations") or {}))
    elif isinstance(data, dict):
        nodes = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    out = []
    for name, ann in nodes:
        ip = ann.get(ANNOTATION + "public-ip-overwrite") or ann.get(ANNOTATION + "public-ip")
        mac = None
        bd = ann.get(ANNOTATION + "backend-data")
        if isinstance(bd, str):
            from cnilib.base import jsonio
            try:
                bd = jsonio.loads(bd)
            except ValueError:
                bd = None
        if isinstance(bd, dict):
            mac = bd.get("VtepMAC")
        out.append((name, ip, mac))
    return out


def duplicates(pairs):
    """{value: [names]} for values more than one name holds."""
    seen = {}
    for name, value in pairs:
        if value:
            seen.setdefault(str(value).lower(), []).append(name)
    return {v: ns for v, ns in seen.items() if len(ns) > 1}


def _trace_packets(ctx):
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
            out.append(("from a pod on another node", trace.Packet(remote, pod, iif=overlay, oif=br)))
            out.append(("to a pod on another node", trace.Packet(pod, remote, iif=br, oif=overlay)))
        if ctx.sysctl("net/bridge/bridge-nf-call-ip%stables" % ("" if net.version == 4 else "6")) == "1":
            out.append(("between two pods on %s" % br,
                        trace.Packet(pod, local.network_address + 3, iif=br, oif=br)))
        if net.version == 4 and default is None:
            r = ctx.route(OUTSIDE_PROBE)
            default = ctx.by_index[r.oif].name if r is not None and r.oif in ctx.by_index else ""
        if net.version == 4 and default and default != br:
            out.append(("from a pod to outside the cluster (via %s)" % default,
                        trace.Packet(pod, OUTSIDE_PROBE, iif=br, oif=default)))
    return out


def _fix_for(decision, pkt, net):
    """Commands letting ``pkt`` (of pod network ``net``) through where ``decision`` stopped it."""
    tool = "iptables" if pkt.family == 4 else "ip6tables"
    if decision.by.startswith("policy ") and "nft" not in decision.by:
        # only the policy stopped it: flanneld's FLANNEL-FWD, appended to FORWARD, lets it through
        own = [] if tool not in ("iptables", "ip6tables") else [
            "%s fabric forward-rules %s %s   # %s as flanneld keeps it (--iptables-forward-rules, on by "
            "default): FORWARD jumps to it, it accepts from and to %s" % (
                cmd_text([pycni_command()]), "--network" if pkt.family == 4 else "--network-v6", net,
                FWD_CHAIN, net)]
        # by hand (the only line when another backend than the node's iptables drops it)
        return own + [
                ("or by hand: " if own else "") + "%s -A FORWARD -s %s -j ACCEPT && %s -A FORWARD -d %s "
                "-j ACCEPT   # what flanneld's FLANNEL-FWD holds (flanneld --iptables-forward-rules, on "
                "by default)" % (tool, net, tool, net),
                "or: %s -P FORWARD ACCEPT   # the seed's cure; Docker sets DROP at every start" % tool]
    if decision.by.startswith("-A "):
        return ["%s -I FORWARD 1 -s %s -j ACCEPT && %s -I FORWARD 1 -d %s -j ACCEPT   # before: %s"
                % (tool, net, tool, net, decision.by),
                "or remove it: %s -D %s" % (tool, decision.by[3:])]
    where = decision.where.split()
    if len(where) >= 5 and where[0] == "nft":
        ipx = "" if pkt.family == 4 else "6"
        return ["nft insert rule %s %s %s ip%s saddr %s accept && "
                "nft insert rule %s %s %s ip%s daddr %s accept"
                % (where[1], where[2], where[4], ipx, net, where[1], where[2], where[4], ipx, net)]
    return ["let %s through: %s" % (net, decision.by)]


def check_forward_policy(ctx, c):
    nets = ctx.pod_networks()
    if not nets:
        return c.set("SKIP", "no pod network known (no subnet.env, no bridge subnet)")
    ipt = ctx.node.ipt.get(4, {})
    nft_fwd = ["%s %s %s policy %s" % (f, t, ch.name, ch.policy)
               for (f, t), tbl in sorted(ctx.node.nft_chains.items()) for ch in tbl.values()
               if ch.hook == "forward" and not (f in ("ip", "ip6") and t in trace.IPTABLES_NFT_TABLES)]
    c.evidence.append("FORWARD policy: iptables %s%s" % (
        ipt["filter"].policies.get("FORWARD", "ACCEPT") if ipt.get("filter") else "(no filter table)",
        "; nft forward base chains: " + ", ".join(nft_fwd) if nft_fwd else ""))
    statuses = []
    for label, pkt in _trace_packets(ctx):
        d = trace.decide(ctx.node.ipt.get(pkt.family), ctx.node.nft_chains, "forward", pkt)
        if d is None:
            statuses.append("PASS")
            c.evidence.append("%s (%s): no rule on the forward hook" % (label, pkt))
            continue
        c.evidence.append("%s (%s): %s by %s%s" % (label, pkt, d.verdict.upper(), d.by,
                                                    "" if d.certain else " (uncertain)"))
        for x in d.doubts[:3]:
            c.evidence.append("  could not evaluate: %s" % x)
        net = next((str(n) for n, s, b in nets if pkt.saddr in s or pkt.daddr in s), str(nets[0][0]))
        if d.verdict != "accept":
            statuses.append("FAIL" if d.certain else "WARN")
            for f in _fix_for(d, pkt, net):
                if f not in c.fix:
                    c.fix.append(f)
        else:
            statuses.append("PASS" if d.certain else "WARN")
    for f in list(c.fix):
        if FWD_FIX.search(f):       # one command, converging, touching only FLANNEL-FWD: safe
            c.add_fix(f, safe=True)
    st = worst(statuses) if statuses else "PASS"
    c.set(st, {"PASS": "pod traffic passes the forward hook",
               "WARN": "pod traffic may be dropped on the forward hook (rules this walk cannot evaluate)",
               "FAIL": "pod traffic is dropped on the forward hook: pods on different nodes cannot talk"}[st])


def check_vxlan_port(ctx, c):
    devs = ctx.vxlan_devs()
    if not devs:
        return c.set("SKIP", "no flannel vxlan device here (host-gw, or no flannel)")
    statuses = []
    if process_running("firewalld"):
        c.evidence.append("firewalld is running: a reload rewrites its rules")
    for dev, info in devs:
        port = info.port or 8472
        under = ctx.by_index[info.link].name if info.link in ctx.by_index else None
        peers = sorted({f.dst for f in ctx.fdb(dev.index)})
        if not peers:
            c.evidence.append("%s has no peer in its fdb" % dev.name)
            continue
        local = str(info.local) if info.local else None
        for peer in peers:
            if local is None:
                r = ctx.route(peer)
                local = r.prefsrc if r is not None else None
            if local is None:
                continue
            for hooks, pkt, label in (
                    (("prerouting", "input"), trace.Packet(peer, local, "udp", 40000, port, iif=under),
                     "from %s" % peer),
                    (("output",), trace.Packet(local, peer, "udp", 40000, port, oif=under),
                     "to %s" % peer)):
                for hook in hooks:
                    d = trace.decide(ctx.node.ipt.get(pkt.family), ctx.node.nft_chains, hook, pkt)
                    if d is None or (d.passes and d.certain):
                        continue
                    c.evidence.append("VXLAN udp/%d %s (%s) on %s: %s by %s%s" % (
                        port, label, pkt, hook, d.verdict.upper(), d.by, "" if d.certain else " (uncertain)"))
                    if d.passes:
                        statuses.append("WARN")
                        continue
                    statuses.append("FAIL" if d.certain else "WARN")
                    tool = "iptables" if pkt.family == 4 else "ip6tables"
                    chain = "INPUT" if hook != "output" else "OUTPUT"
                    side = "-s %s" % peer if hook != "output" else "-d %s" % peer
                    fix = "%s -I %s 1 -p udp --dport %d %s -j ACCEPT" % (tool, chain, port, side)
                    if d.by.startswith("-A "):
                        fix += "   # or remove the rule: %s -D %s" % (tool, d.by[3:])
                    elif d.where.startswith("nft "):
                        w = d.where.split()
                        fix = "nft insert rule %s %s %s udp dport %d accept" % (w[1], w[2], w[4], port)
                    for f in (fix, "firewalld: firewall-cmd --permanent --add-port=%d/udp && "
                              "firewall-cmd --reload; cloud security groups must allow udp/%d "
                              "between nodes too" % (port, port)):
                        if f not in c.fix:
                            c.fix.append(f)
                    break
            statuses.append("PASS")
        c.evidence.append("%s: udp/%d with %d peer(s): %s" % (dev.name, port, len(peers), ", ".join(peers)))
    st = worst(statuses) if statuses else "SKIP"
    c.set(st, {"PASS": "VXLAN (udp/%d) passes this node's firewall both ways" % (devs[0][1].port or 8472),
               "WARN": "a rule this walk cannot evaluate may drop VXLAN traffic",
               "FAIL": "this node's firewall drops or rejects VXLAN: pods on other nodes are unreachable "
                       "(the peer sees 'admin prohibited filter' for a REJECT)",
               "SKIP": "no peer known in the vxlan fdb"}[st])


def check_vxlan_local(ctx, c):
    devs = ctx.vxlan_devs()
    if not devs:
        return c.set("SKIP", "no flannel vxlan device here")
    statuses = []
    mine = ctx.local_ips()
    for dev, info in devs:
        local = str(info.local) if info.local else None
        under = ctx.by_index.get(info.link)
        dev_name = under.name if under else info.link or "(none)"
        c.evidence.append("%s: vxlan id %s local %s dev %s dstport %s" % (
            dev.name, info.vni, local or "(unset)", dev_name, info.port))
        if local and local not in mine:
            statuses.append("FAIL")
            c.evidence.append("no interface of this node holds %s" % local)
            c.fix.append("flanneld --public-ip=<an address of this node> (or --iface), then "
                         "ip link delete %s and restart flanneld" % dev.name)
            continue
        peers = sorted({f.dst for f in ctx.fdb(dev.index)})
        if not peers:
            c.evidence.append("no peer in %s's fdb" % dev.name)
            continue
        bad = []
        for peer in peers:
            r = ctx.route(peer)
            if r is None:
                bad.append((peer, None, None))
                c.evidence.append("peer %s: no route" % peer)
                continue
            oif = ctx.by_index.get(r.oif)
            c.evidence.append("peer %s: route get -> dev %s src %s"
                              % (peer, oif.name if oif else r.oif, r.prefsrc))
            if (info.link and r.oif != info.link) or (local and r.prefsrc and r.prefsrc != local):
                bad.append((peer, oif, r.prefsrc))
        if bad:
            statuses.append("FAIL")
            peer, oif, src = bad[0]
            if oif is None:
                c.fix.append("add a route to the peer nodes (%s), or announce an address they can reach"
                             % ", ".join(p for p, _o, _s in bad))
            else:
                c.evidence.append("%s sends from %s on %s, but the peers are reached through %s (src %s): "
                                  "their replies go to an address on the wrong interface (the seed's "
                                  "multi-homed host)" % (dev.name, local, under.name if under else "?",
                                                        oif.name, src))
                c.fix += ["flanneld --iface=%s (or --public-ip=%s), then ip link delete %s and restart "
                          "flanneld so it recreates it" % (oif.name, src, dev.name),
                          "kube-flannel: add '--iface=%s' to the kube-flannel container args; pycni fabric: "
                          "publicIP %s and --iface %s" % (oif.name, src, oif.name)]
        else:
            statuses.append("PASS")
    st = worst(statuses) if statuses else "SKIP"
    c.set(st, {"PASS": "flannel.1's local address is on the interface that reaches its peers",
               "FAIL": "flannel.1 sends from an address its peers do not reach it on",
               "SKIP": "no peer known in the vxlan fdb", "WARN": ""}[st])


def check_public_ip(ctx, c):
    from cnilib.base import jsonio
    statuses = []
    sources = 0
    me_ips = ctx.local_ips()
    for opt, parse in (("nodes", parse_node_list), ("annotations", parse_annotations)):
        path = getattr(ctx.args, opt, None)
        if not path:
            continue
        sources += 1
        try:
            with open(path, "rb") as f:
                data = jsonio.loads(f.read())
        except (OSError, ValueError) as exc:
            c.error = "cannot read --%s %s: %s" % (opt, path, exc)
            continue
        items = parse(data)
        ips = [(i[0], i[1]) for i in items]
        c.evidence.append("--%s %s: %s" % (opt, path, ", ".join("%s=%s" % x for x in ips) or "no node"))
        for ip, names in sorted(duplicates(ips).items()):
            statuses.append("FAIL")
            c.evidence.append("%s is announced by %s" % (ip, ", ".join(names)))
            c.fix.append("give each node its own public IP: flanneld --iface=<the cluster NIC> or "
                         "--public-ip on %s (or kubectl annotate node <node> --overwrite "
                         "%spublic-ip-overwrite=<its IP>)" % (", ".join(names), ANNOTATION))
        if opt == "annotations":
            for mac, names in sorted(duplicates([(i[0], i[2]) for i in items]).items()):
                statuses.append("FAIL")
                c.evidence.append("VtepMAC %s is announced by %s (cloned machines?)"
                                  % (mac, ", ".join(names)))
                c.fix.append("ip link delete flannel.1 on %s and restart flanneld: it picks a new MAC"
                             % ", ".join(names[1:]))
        me = [(n, ip) for n, ip in ips if (ctx.args.node and n == ctx.args.node)]
        if not me:
            me = [(n, ip) for n, ip in ips if ip in me_ips]
        if ctx.args.node and not me:
            c.evidence.append("node %s is not in --%s" % (ctx.args.node, opt))
        for n, ip in me:
            if ip not in me_ips:
                statuses.append("FAIL")
                c.evidence.append("this node (%s) announces %s, which none of its interfaces holds" % (n, ip))
                c.fix.append("flanneld --public-ip=<an address of this node> on %s" % n)
    for dev, info in ctx.vxlan_devs():
        sources += 1
        fdb = ctx.fdb(dev.index)
        local = str(info.local) if info.local else None
        pairs = [(f.lladdr, f.dst) for f in fdb if f.lladdr and f.lladdr != "00:00:00:00:00:00"]
        for ip, macs in sorted(duplicates([(m, d) for m, d in pairs]).items()):
            statuses.append("FAIL")
            c.evidence.append("%s fdb: VTEPs %s all point at %s: several nodes announce one public IP"
                              % (dev.name, ", ".join(macs), ip))
            c.fix.append("give each node its own public IP (flanneld --iface / --public-ip)")
        for m, d in pairs:
            if local and d == local:
                statuses.append("FAIL")
                c.evidence.append("%s fdb: peer VTEP %s points at %s, this node's own address"
                                  % (dev.name, m, d))
                c.fix.append("the node behind VTEP %s announces %s, this node's address: give it its "
                             "own (flanneld --iface / --public-ip)" % (m, d))
        if pairs and not any("fdb" in e for e in c.evidence):
            c.evidence.append("%s fdb: %s" % (dev.name, ", ".join("%s -> %s" % p for p in pairs)))
    if not sources:
        return c.set("SKIP", "no node list (--nodes), no annotations (--annotations), no vxlan fdb")
    st = worst(statuses) if statuses else "PASS"
    c.set(st, {"PASS": "every node announces its own public IP",
               "FAIL": "two nodes announce one public IP, or this node announces an address it lacks",
               "WARN": "", "SKIP": ""}[st])

