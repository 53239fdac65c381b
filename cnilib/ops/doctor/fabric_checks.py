"""doctor's flannel fabric and firewall checks: pod traffic through the
forward hook and VXLAN through INPUT/OUTPUT (walked by ``trace``), flannel.1's
local address, the nodes' public IPs."""

import ipaddress
import re

from cnilib.ops.doctor import trace
from cnilib.ops.doctor.context import process_running
from cnilib.ops.doctor.report import cmd_text, plain, pycni_command, worst

ANNOTATION = "flannel.alpha.coreos.com/"
FWD_CHAIN = "FLANNEL-FWD"
FWD_FIX = re.compile(r"^\S+ fabric forward-rules --network(-v6)? \S+   # ")


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


def _ipt(ctx, family):
    """[(backend, tables)] of one family for trace.decide."""
    return [(name, fams.get(family)) for name, fams in ctx.ipt_backends()]


def _decide(ctx, hook, pkt):
    backends = ctx.ipt_backends()
    skip = any(name == "iptables-nft" for name, _f in backends) or not backends
    return trace.decide(_ipt(ctx, pkt.family), ctx.node.nft_chains, hook, pkt, skip)


def _src(d):
    return " (%s)" % d.source if d.source else ""


def _fix_for(decision, pkt, net, tool):
    """Commands letting ``pkt`` (of pod network ``net``) through where ``decision`` stopped it."""
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
    pols = []
    for name, fams in ctx.ipt_backends():
        flt = fams.get(4, {}).get("filter")
        if flt is not None or name == ctx.ipt_default:
            pol = flt.policies.get("FORWARD", "ACCEPT") if flt else "(no filter table)"
            pols.append("%s %s" % (name, pol))
    nft_fwd = ["%s %s %s policy %s" % (f, t, ch.name, ch.policy)
               for (f, t), tbl in sorted(ctx.node.nft_chains.items()) for ch in tbl.values()
               if ch.hook == "forward" and not (f in ("ip", "ip6") and t in trace.IPTABLES_NFT_TABLES)]
    c.evidence.append("FORWARD policy: %s%s" % (
        ", ".join(pols) or "no iptables",
        "; nft forward base chains: " + ", ".join(nft_fwd) if nft_fwd else ""))
    statuses = []
    for label, pkt in trace.pod_packets(ctx):
        d = _decide(ctx, "forward", pkt)
        if d is None:
            statuses.append("PASS")
            c.evidence.append("%s (%s): no rule on the forward hook" % (label, pkt))
            continue
        c.evidence.append("%s (%s): %s by %s%s%s" % (label, pkt, d.verdict.upper(), d.by, _src(d),
                                                      "" if d.certain else " (uncertain)"))
        for x in d.doubts[:3]:
            c.evidence.append("  could not evaluate: %s" % x)
        net = next((str(n) for n, s, b in nets if pkt.saddr in s or pkt.daddr in s), str(nets[0][0]))
        if d.verdict != "accept":
            statuses.append("FAIL" if d.certain else "WARN")
            for f in _fix_for(d, pkt, net, ctx.ipt_tool(d.source, pkt.family)):
                c.add_fix(f)
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
        peers = sorted({f.dst for f in ctx.fdb(dev.index)})
        if not peers:
            c.evidence.append("%s has no peer in its fdb" % dev.name)
            continue
        for peer, hooks, pkt, label in trace.vxlan_packets(ctx, dev, info):
            statuses.append("PASS")
            for hook in hooks:
                d = _decide(ctx, hook, pkt)
                if d is None or (d.passes and d.certain):
                    continue
                c.evidence.append("VXLAN udp/%d %s (%s) on %s: %s by %s%s%s" % (
                    port, label, pkt, hook, d.verdict.upper(), d.by, _src(d),
                    "" if d.certain else " (uncertain)"))
                if d.passes:
                    statuses.append("WARN")
                    continue
                statuses.append("FAIL" if d.certain else "WARN")
                tool = ctx.ipt_tool(d.source, pkt.family)
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
                    c.add_fix(f)
                break
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



# ---------------------------------------------------------------- VTEP MACs

ZERO_MAC = "00:00:00:00:00:00"


def vtep_findings(own, neighbours, fdb):
    """Duplicate VTEP MACs on one vxlan device, pure: ``own`` its MAC,
    ``neighbours`` [(peer gateway IP, MAC)], ``fdb`` [(MAC, peer public IP)].
    Returns (problems, peers): problems [(kind, mac, [peer labels])] with kind
    "own" (a peer announces this node's MAC) or "shared" (two peers one MAC);
    peers the labels "10.244.2.0 -> aa:.. -> 192.0.2.2"."""
    own = (own or "").lower()
    dst = {}
    for mac, ip in fdb:
        if mac and mac.lower() != ZERO_MAC:
            dst.setdefault(mac.lower(), []).append(ip)
    by_mac = {}
    for ip, mac in neighbours:
        if mac and mac.lower() != ZERO_MAC:
            by_mac.setdefault(mac.lower(), []).append(ip)
    peers, problems = [], []
    for mac in sorted(set(by_mac) | set(dst)):
        ips = sorted(by_mac.get(mac, []), key=lambda ip: (":" in ip, ipaddress.ip_address(ip)))
        labels = ["%s -> %s -> %s" % (ip, mac, ", ".join(dst.get(mac, [])) or "(no fdb entry)")
                  for ip in ips] or ["(no neighbour) -> %s -> %s" % (mac, ", ".join(dst[mac]))]
        peers += labels
        if mac == own:
            problems.append(("own", mac, labels))
        elif len(ips) > 1 or len(dst.get(mac, [])) > 1:
            problems.append(("shared", mac, labels))
    return problems, peers


def check_vtep_mac(ctx, c):
    devs = ctx.vxlan_devs()
    if not devs:
        return c.set("SKIP", "no flannel vxlan device here (host-gw, or no flannel)")
    bad = []
    for dev, _info in devs:
        neigh = [(n.dst, n.lladdr) for n in ctx.neighbours(dev.index) if n.dst and n.lladdr]
        fdb = [(f.lladdr, f.dst) for f in ctx.fdb(dev.index)]
        problems, peers = vtep_findings(dev.mac, neigh, fdb)
        c.evidence.append("%s MAC %s; %d peer VTEP(s)%s" % (dev.name, (dev.mac or "?").lower(), len(peers),
                                                            ": " + "; ".join(peers) if peers else ""))
        for kind, mac, labels in problems:
            where = " and ".join(x.split(" -> ")[0] for x in labels)
            nodes = ", ".join(sorted({x.split(" -> ")[2] for x in labels}))
            if kind == "own":
                bad.append("peer %s announces VTEP MAC %s, %s's own" % (where, mac, dev.name))
                c.evidence.append("%s: frames for that peer carry this node's own MAC; the peer's "
                                  "replies and every third node cannot tell the two apart" % mac)
            else:
                bad.append("peers %s share VTEP MAC %s" % (where, mac))
                c.evidence.append("%s: the fdb sends it to %s only, so traffic to the other peer's pods "
                                  "goes to the wrong node and is dropped" % (mac, nodes))
            c.add_fix("on the node behind %s (%s): give it its own machine-id if it is a clone "
                      "(rm /etc/machine-id && systemd-machine-id-setup; flanneld < 0.15.1 under systemd's "
                      "MACAddressPolicy=persistent derives flannel.1's MAC from it), then ip link delete %s "
                      "and restart flanneld there: it makes %s with a new MAC and announces it (VtepMAC), "
                      "and every flanneld rewrites its entries" % (where, nodes, dev.name, dev.name))
    if bad:
        return c.set("FAIL", "duplicate VTEP MAC: " + "; ".join(bad) + ": traffic to them black-holes")
    c.set("PASS", "every peer VTEP has its own MAC, none is this node's")


# ---------------------------------------------------------------- the node as the cluster sees it

def parse_node_spec(data, name=None):
    """(node name, podCIDRs, annotations, InternalIPs) of a ``kubectl get node
    NAME -o json`` dump (or a List: the item called ``name``, or the only one),
    every string made safe to show.  Raises ValueError naming what is wrong."""
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        items = [i for i in data["items"] if isinstance(i, dict)]
        if name:
            items = [i for i in items if (i.get("metadata") or {}).get("name") == name]
        if len(items) != 1:
            raise ValueError("%d nodes in the list%s: pass one node's dump or --node NAME"
                             % (len(items), " called %s" % name if name else ""))
        data = items[0]
    if not isinstance(data, dict) or data.get("kind", "Node") != "Node":
        raise ValueError("not a Node object (kubectl get node NAME -o json)")
    md = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
    cidrs = [x for x in spec.get("podCIDRs") or [] if isinstance(x, str)]
    if isinstance(spec.get("podCIDR"), str) and spec["podCIDR"] not in cidrs:
        cidrs.insert(0, spec["podCIDR"])
    ann = md.get("annotations") if isinstance(md.get("annotations"), dict) else {}
    st = data.get("status") if isinstance(data.get("status"), dict) else {}
    internal = [plain(a["address"], 64) for a in st.get("addresses") or []
                if isinstance(a, dict) and a.get("type") == "InternalIP"
                and isinstance(a.get("address"), str)]
    ann = {k: plain(v, 1024) for k, v in ann.items() if isinstance(k, str) and isinstance(v, str)}
    name = md.get("name") if isinstance(md.get("name"), str) else None
    return plain(name, 253) if name else "(unnamed)", [plain(x, 64) for x in cidrs], ann, internal


def _backend_data(ann, key):
    from cnilib.base import jsonio
    bd = ann.get(ANNOTATION + key)
    if isinstance(bd, str):
        try:
            bd = jsonio.loads(bd)
        except ValueError:
            return None
    return bd if isinstance(bd, dict) else None


def check_node_spec(ctx, c):
    path = ctx.opt("node_spec")
    if not path:
        return c.set("SKIP", "no --node-spec FILE (kubectl get node <this node> -o json > FILE)")
    from cnilib.base import jsonio
    try:
        with open(path, "rb") as f:
            name, cidrs, ann, internal = parse_node_spec(jsonio.loads(f.read()), ctx.opt("node"))
    except (OSError, ValueError) as exc:
        c.error = "cannot read --node-spec %s: %s" % (path, exc)
        return c.set("SKIP", c.error)
    bad = []
    restart = ("restart flanneld on %s (kubectl -n kube-flannel delete pod --field-selector "
               "spec.nodeName=%s): it rewrites subnet.env from the node's podCIDR and re-announces "
               "flannel.1's MAC and its public IP" % (name, name))
    env, env_path = ctx.flannel_env()
    c.evidence.append("node %s: podCIDR %s; InternalIP %s" % (name, ", ".join(cidrs) or "(none)",
                                                             ", ".join(internal) or "(none)"))
    if not cidrs:
        bad.append("node %s has no spec.podCIDR" % name)
        c.add_fix("let the controller manager allocate node CIDRs (kube-controller-manager "
                  "--allocate-node-cidrs=true --cluster-cidr=<the flannel Network>; kubeadm init "
                  "--pod-network-cidr): flanneld's kube subnet manager waits for it")
    elif env is None:
        c.evidence.append("no usable subnet.env to compare the podCIDR with (%s)"
                          % ", ".join(ctx.subnet_files()))
    else:
        have = {str(ipaddress.ip_network(s, strict=False)) for s in env.subnets()}
        want = {str(ipaddress.ip_network(x, strict=False)) for x in cidrs if _is_net(x)}
        c.evidence.append("%s: FLANNEL_SUBNET %s, FLANNEL_NETWORK %s" % (
            env_path, ", ".join(sorted(have)), ", ".join(env.all_networks())))
        if have != want:
            bad.append("spec.podCIDR %s but FLANNEL_SUBNET %s (%s)" % (", ".join(sorted(want)),
                                                                      ", ".join(sorted(have)), env_path))
            c.add_fix(restart)
            c.add_fix("then recreate the pods holding addresses of the old subnet (pycni whois lists them)")
        nets = [ipaddress.ip_network(n) for n in env.all_networks()]
        for x in sorted(want):
            n = ipaddress.ip_network(x)
            if not any(n.version == m.version and n.subnet_of(m) for m in nets):
                bad.append("podCIDR %s is outside FLANNEL_NETWORK %s" % (x, ", ".join(env.all_networks())))
                c.add_fix("make kube-controller-manager's --cluster-cidr and Network in the kube-flannel-cfg "
                          "ConfigMap (net-conf.json) the same range, then restart flanneld everywhere")
    btype = ann.get(ANNOTATION + "backend-type")
    devs = {link.name: (link, info) for link, info in ctx.vxlan_devs()}
    c.evidence.append("annotations: backend-type %s, public-ip %s%s" % (
        btype or "(none)", ann.get(ANNOTATION + "public-ip") or "(none)",
        ", public-ip-overwrite %s" % ann[ANNOTATION + "public-ip-overwrite"]
        if ann.get(ANNOTATION + "public-ip-overwrite") else ""))
    if btype == "vxlan":
        for dev_name, data_key, ip_key in (("flannel.1", "backend-data", "public-ip"),
                                           ("flannel-v6.1", "backend-v6-data", "public-ipv6")):
            bd = _backend_data(ann, data_key)
            if bd is None and dev_name != "flannel.1":
                continue
            if dev_name not in devs:
                bad.append("backend-type vxlan, but this node has no %s" % dev_name)
                c.add_fix(restart)
                continue
            link, info = devs[dev_name]
            mac = (bd or {}).get("VtepMAC")
            c.evidence.append("%s: annotated VtepMAC %s, device MAC %s, local %s" % (
                dev_name, mac or "(none)", (link.mac or "?").lower(), info.local or "(unset)"))
            if mac and link.mac and mac.lower() != link.mac.lower():
                bad.append("the cluster sends %s traffic for this node to VTEP MAC %s, but %s has %s"
                           % (dev_name, mac.lower(), dev_name, link.mac.lower()))
                c.add_fix(restart)
                c.add_fix("or, until flanneld restarts: kubectl annotate node %s --overwrite "
                          "%s%s='{\"VNI\":%s,\"VtepMAC\":\"%s\"}'"
                          % (name, ANNOTATION, data_key, (bd or {}).get("VNI", info.vni), link.mac.lower()))
            pub = ann.get(ANNOTATION + ip_key + "-overwrite") or ann.get(ANNOTATION + ip_key)
            if pub and info.local and str(info.local) != pub:
                bad.append("the node announces %s %s, but %s sends from %s"
                           % (ip_key, pub, dev_name, info.local))
                c.add_fix(restart)
    elif btype == "host-gw" and "flannel.1" in devs:
        c.evidence.append("backend-type host-gw, yet flannel.1 exists here (a leftover of vxlan?)")
    pub = ann.get(ANNOTATION + "public-ip-overwrite") or ann.get(ANNOTATION + "public-ip")
    if pub and pub not in ctx.local_ips():
        bad.append("the node announces public-ip %s, which no interface here holds" % pub)
        c.add_fix("flanneld --iface=<the cluster NIC> or --public-ip=<an address of this node> on %s, or "
                  "kubectl annotate node %s --overwrite %spublic-ip-overwrite=<its IP>; then restart "
                  "flanneld" % (name, name, ANNOTATION))
    if not (pub in ctx.local_ips() or any(ip in ctx.local_ips() for ip in internal)):
        c.evidence.append("none of the node's addresses (%s) is here: is this %s's dump?"
                          % (", ".join([x for x in [pub] + internal if x]) or "none", name))
    if bad:
        return c.set("FAIL", "the cluster's view of %s disagrees with this node: %s" % (name, "; ".join(bad)))
    c.set("PASS", "node %s: podCIDR, backend and VTEP annotations match this node" % name)


def _is_net(x):
    try:
        ipaddress.ip_network(x, strict=False)
        return True
    except ValueError:
        return False
