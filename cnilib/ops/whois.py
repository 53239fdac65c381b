"""``pycni whois [veth | ip | netns | container id | pod]``: who is on this node.

The seed article maps a pod to its host veth by hand: ``ip link`` in the pod
shows ``eth0@if496``, ``ethtool -S eth0`` gives ``peer_ifindex``, and
interface 496 on the host is the veth.  whois does that for every veth at
once, from live state only (cnilib.ops.nodestate reads it), and joins the rest
of what the node holds for each attachment into one row:

    pod netns <-> container ID <-> ifname <-> host veth <-> IP <-> hostPorts

keyed by (network, container ID, ifname) as every layer is.  A host veth
names its attachment in its ifalias (``pycni net=<n> cid=<c> if=<i>
[pod=<ns>/<name>]``); a veth the Go bridge made carries none and is matched
through the result cache (the result names the host veth) or through its
pod's addresses against the leases.

An attachment is *live* when a host veth of it exists (a veth pair dies with
its netns) or its cached netns still opens.  Whatever a layer holds for an
attachment that is not live is an orphan, marked in the row:

    lease    a host-local reservation with no veth and no netns
    veth     a host veth whose attachment holds no lease (host-local networks),
             or a veth on a CNI bridge that no layer explains
    rules    nft tables / iptables chains of an attachment that is gone
    cache    a result cache entry whose netns is gone
    saved    a flannel saved delegate config of an attachment that is gone
    tuning   the tuning plugin's saved originals of an attachment that is gone

With no argument the whole node is printed as a table; with one, the rows it
names (a host veth name, an IP, a netns name or path, a container ID or a
unique prefix of one, a pod ``namespace/name``), each as a block.  Exit
status: 0 found, 1 nothing matched, 2 could not run.

``--json``::

    {"schema": "pycni-whois/1", "query": <string or null>,
     "locations": {confDir, binDirs, dataDirs, flannelDirs, cacheDir, subnetFiles, tuningDirs},
     "attachments": [{"network", "containerID", "ifname", "pod",
                      "netns": {"path", "nsid", "alive"} or null,
                      "hostVeth": {"name", "index", "master", "mtu", "operstate", "peerIndex"} or null,
                      "podIf": {"name", "index", "mtu", "mac"} or null,
                      "ips": [cidr or ip], "leases": [{"ip", "path"}],
                      "hostPorts": [{"protocol", "hostIP", "hostPort", "podIP", "podPort", "source"}],
                      "cache": path or null, "flannelSaved": path or null, "tuning": path or null,
                      "rules": [{"kind", "where"}], "live": bool,
                      "orphan": [layer names above], "notes": [text]}],
     "problems": [text: a layer that could not be read]}
"""

import os
import sys

from cnilib.base import paths
from cnilib.base.text import printable
from cnilib.firewall import naming
from cnilib.ops import nodestate, resultcache

ORPHAN_HELP = {
    "lease": "IPAM lease with no veth and no netns",
    "veth": "host veth that no lease or record explains",
    "rules": "firewall/portmap rules of an attachment that is gone",
    "cache": "result cache entry whose netns is gone",
    "saved": "flannel saved config of an attachment that is gone",
    "tuning": "tuning saved originals of an attachment that is gone",
}


class Row:
    """One attachment as every layer sees it."""

    __slots__ = ("network", "cid", "ifname", "pod", "veth", "peer", "netns", "leases", "cache",
                 "saved", "tuning", "rules", "orphan", "notes", "live", "alias_att")

    def __init__(self, network, cid, ifname):
        self.network, self.cid, self.ifname = network, cid, ifname
        self.pod = self.veth = self.peer = self.netns = self.cache = self.saved = self.tuning = None
        self.alias_att = None
        self.leases, self.rules, self.orphan, self.notes = [], [], [], []
        self.live = False

    @property
    def key(self):
        return (self.network, self.cid, self.ifname)

    def ips(self):
        out = list(self.peer.ips) if self.peer is not None else []
        have = {a.split("/")[0] for a in out}
        for ip in (self.cache.ips() if self.cache else []) + [lease.ip for lease in self.leases]:
            if ip.split("/")[0] not in have:
                have.add(ip.split("/")[0])
                out.append(ip)
        return out

    def host_ports(self):
        """[(proto, hostIP, hostPort, podIP, podPort, source)]: from live rules,
        else what the cache says the runtime asked for."""
        out = []
        for g in self.rules:
            for p in g.ports:
                out.append(tuple(p) + (g.where,))
        if not out and self.cache is not None:
            for m in self.cache.cap_args.get("portMappings") or ():
                if isinstance(m, dict) and isinstance(m.get("hostPort"), int):
                    out.append((m.get("protocol") or "tcp", m.get("hostIP"), m["hostPort"], None,
                                m.get("containerPort"), "cache only: no rule found"))
        return out

    def netns_path(self):
        if self.netns is not None:
            return self.netns.path if isinstance(self.netns, nodestate.NetnsRef) else self.netns
        return None


class Node:
    """Every attachment of the node (``rows``) and the layers they came from."""

    def __init__(self, loc):
        self.loc = loc
        self.rows = []
        self.problems = []
        self.links = []
        self.cache = []
        self.leases = []
        self.lease_nets = set()
        self.saved = []
        self.tuning = []
        self.groups = []
        self.netns_refs = []
        self.nft_chains = {}
        self.ipt = {}
        self.raw_rules = {}
        self.bridges = set()


# ====================================================================== building the index

def cni_bridges(loc, links):
    """Names of bridges CNI configs use (the bridge plugin's ``bridge``,
    default cni0; flannel's delegate) plus any bridge holding a pycni veth."""
    out = set()
    for net in loc.networks():
        for p in net.plugins:
            if p.get("type") == "bridge":
                out.add(p.get("bridge") or "cni0")
            elif p.get("type") == "flannel":
                d = p.get("delegate") if isinstance(p.get("delegate"), dict) else {}
                if (d.get("type") or "bridge") == "bridge":
                    out.add(d.get("bridge") or "cni0")
    by_index = {link.index: link for link in links}
    for link in links:
        if link.kind == "veth" and naming.parse_veth_alias(link.alias) and link.master in by_index:
            out.add(by_index[link.master].name)
    return out


def build(loc, nl=None, kernel=True, rules=None):
    """The Node index of the current netns.  ``kernel`` False reads files
    only; ``rules`` is (nft items, {family: save text}) to reuse, or None."""
    node = Node(loc)
    pr = node.problems
    from cnilib import flannel, tuning
    from cnilib.ipam import store
    node.cache = resultcache.read_cache(loc.cache_dir, pr)
    node.leases, node.lease_nets = store.read_leases(loc.data_dirs, pr)
    node.saved = flannel.read_all_saved(loc.flannel_dirs, pr)
    node.tuning = tuning.read_backups(loc.tuning_dirs, pr)
    own_nl = None
    if kernel:
        from cnilib.kernel import netlink
        from cnilib.kernel.link import link_index
        if nl is None:
            nl = own_nl = netlink.Netlink()
        try:
            node.links = link_index(nl)
            node.nft_chains, node.ipt, node.raw_rules = nodestate.read_rules(
                pr, *(rules or (None, None)))
            node.groups = nodestate.nft_rule_groups(node.nft_chains)
            node.groups += nodestate.nft_shared_groups(node.raw_rules.get("nft_items"), node.nft_chains)
            for fam in sorted(node.ipt):
                node.groups += nodestate.ipt_rule_groups(fam, node.ipt[fam])
            _join(node, nl)
        finally:
            if own_nl is not None:
                own_nl.close()
    else:
        _join(node, None)
    return node


def _join(node, nl):
    rows = {}

    def row(net, cid, ifn):
        r = rows.get((net, cid, ifn))
        if r is None:
            r = rows[(net, cid, ifn)] = Row(net, cid, ifn)
        return r

    def rows_of(net, cid):
        return [r for r in rows.values() if r.cid == cid and (net is None or r.network == net)]

    # records that name their full key
    for e in node.cache:
        if e.problem is None:
            row(e.network, e.container_id, e.ifname).cache = e
    for lease in node.leases:
        if not lease.torn and lease.ifname is not None:
            row(lease.network, lease.cid, lease.ifname).leases.append(lease)
    for t in node.tuning:
        if t.network and t.ifname:
            row(t.network, t.cid, t.ifname).tuning = t

    # host veths: by alias, then by what the cache recorded as the host side
    node.bridges = cni_bridges(node.loc, node.links)
    by_index = {link.index: link for link in node.links}
    unexplained = []
    hashed = []
    for link in node.links:
        if link.kind != "veth":
            continue
        f = naming.parse_veth_alias(link.alias)
        if f is not None and "cid" in f:
            r = row(f.get("net"), f.get("cid"), f.get("if"))
            r.veth, r.pod = link, f.get("pod")
        elif f is not None:
            hashed.append((link, f))
        elif link.master in by_index and by_index[link.master].name in node.bridges:
            unexplained.append(link)
    for link, f in hashed:
        match = [r for r in rows.values() if r.network and r.cid and r.ifname == f.get("if")
                 and naming.attachment_hash(r.network, r.cid, r.ifname) == f.get("att")]
        r = match[0] if match else row(None, None, f.get("if"))
        r.veth, r.pod, r.alias_att = link, f.get("pod"), f.get("att")
    for link in list(unexplained):
        for r in rows.values():
            if r.veth is None and r.cache is not None and link.name in r.cache.host_ifnames():
                r.veth = link
                unexplained.remove(link)
                break

    # where each veth's peer lives, and what it holds there
    if nl is not None:
        veths = [link for link in node.links if link.kind == "veth"]
        wanted = {link.link_netnsid for link in veths if link.link_netnsid is not None}
        by_id, node.netns_refs = nodestate.map_netns(nl, wanted, node.problems)
        for r in rows.values():
            if r.veth is not None:
                ref = by_id.get(r.veth.link_netnsid)
                if ref is not None:
                    r.netns = ref
                    r.peer = nodestate.peer_if(ref.path, r.veth.peer_index)
                elif r.veth.link_netnsid is None:
                    r.notes.append("the veth's peer is in this netns, not in a pod")
                else:
                    r.notes.append("peer netns (nsid %d) has no name and no process" % r.veth.link_netnsid)
        lease_by_ip = {}
        for lease in node.leases:
            if not lease.torn:
                lease_by_ip.setdefault(lease.ip, lease)
        for link in unexplained:
            ref = by_id.get(link.link_netnsid)
            peer = nodestate.peer_if(ref.path, link.peer_index) if ref is not None else None
            owner = None
            for ip in (peer.ips if peer else ()):
                held = lease_by_ip.get(ip.split("/")[0])
                if held is not None and held.ifname is not None:
                    owner = row(held.network, held.cid, held.ifname)
                    break
            if owner is None or owner.veth is not None:
                owner = row(None, None, peer.name if peer else None)
                owner.notes.append("veth on %s with no pycni alias and no lease or cache entry naming it"
                                   % by_index[link.master].name)
            owner.veth, owner.netns, owner.peer = link, ref, peer

    # legacy id-only leases and flannel saved files: keyed by container ID
    for lease in node.leases:
        if not lease.torn and lease.ifname is None:
            owners = rows_of(lease.network, lease.cid) or [row(lease.network, lease.cid, None)]
            owners[0].leases.append(lease)
    for s in node.saved:
        if s.state != "ok":
            continue
        (rows_of(s.network, s.cid) or [row(s.network, s.cid, None)])[0].saved = s
    for t in node.tuning:
        if not (t.network and t.ifname):
            (rows_of(t.network, t.cid) or [row(t.network, t.cid, t.ifname)])[0].tuning = t

    # rules: by the hash of each key known so far, else by what they say
    by_att = {naming.attachment_hash(*r.key): r for r in rows.values() if all(r.key)}
    by_go = {}
    for r in rows.values():
        if r.network and r.cid:
            for prefix in ("CNI-", "CNI-DN-"):
                by_go.setdefault(naming.go_chain(r.network, r.cid, prefix), r)
    for g in node.groups:
        r = by_att.get(g.att_hash) if g.att_hash else by_go.get(g.go_chain)
        if r is None:
            if g.att_hash and g.table and not g.cid:
                said = nodestate.parse_table_comment(nodestate.nft_table_text(*g.table))
                g.network, g.cid, g.ifname = said.get("net"), said.get("id"), said.get("if")
            r = row(g.network, g.cid, g.ifname)
        r.rules.append(g)

    # the netns the cache recorded, for rows no veth placed
    ref_by_path = {x.path: x for x in node.netns_refs}
    for r in rows.values():
        if r.netns is None and r.cache is not None and r.cache.netns:
            r.netns = ref_by_path.get(r.cache.netns, r.cache.netns)
    node.rows = sorted(rows.values(), key=_sort_key)
    for r in node.rows:
        _mark(node, r)


def _sort_key(r):
    return (r.network or "~", r.pod or "~", r.cid or "~", r.ifname or "")


def _mark(node, r):
    cache_alive = None
    if r.cache is not None and r.cache.netns:
        cache_alive = nodestate.netns_alive(r.cache.netns)
    r.live = r.veth is not None or bool(cache_alive) or r.peer is not None
    if r.live:
        if r.veth is not None and not r.leases and r.network in node.lease_nets and r.cid:
            r.orphan.append("veth")
        elif r.veth is not None and not (r.cid or r.leases or r.cache or r.saved):
            r.orphan.append("veth")
        return
    if r.leases:
        r.orphan.append("lease")
    if r.rules:
        r.orphan.append("rules")
    if r.cache is not None and (cache_alive is False or not r.cache.netns):
        r.orphan.append("cache")
    if r.saved is not None:
        r.orphan.append("saved")
    if r.tuning is not None:
        r.orphan.append("tuning")


# ====================================================================== gc --dry-run

def gc_preview(node, network, valid):
    """What this node holds for ``network`` outside ``valid`` [(cid, ifname)]:
    the leases, host veths, rules and flannel saved files the plugins' GC
    frees, as [(layer, text)]."""
    keep = set(valid)
    cids = {c for c, _ in keep}
    keep_att = {naming.attachment_hash(network, c, i) for c, i in keep}
    live = {}
    for r in node.rows:
        for obj in r.leases + r.rules + [r.veth]:
            live[id(obj)] = r.live
    warn = " LIVE: its pod's netns still exists"
    out = []
    for lease in node.leases:
        if lease.network != network:
            continue
        if lease.torn or (lease.ifname is None and lease.cid not in cids) or (
                lease.ifname is not None and (lease.cid, lease.ifname) not in keep):
            out.append(("lease", "%s (%s) %s%s"
                        % (lease.ip, "no owner" if lease.torn else "%s/%s" % (lease.cid, lease.ifname),
                                                   lease.path, warn if live.get(id(lease)) else "")))
    for r in node.rows:
        if r.veth is not None and r.network == network and r.cid and (r.cid, r.ifname) not in keep:
            out.append(("veth", "%s (%s/%s)%s" % (r.veth.name, r.cid, r.ifname, warn)))
    for g in node.groups:
        if g.net_hash is not None:
            mine = g.net_hash == naming.net_hash(network) and g.att_hash not in keep_att
        else:
            mine = g.network == network and g.cid not in cids
        if mine:
            out.append(("rules", "%s (%s)%s" % (g.where, g.what, warn if live.get(id(g)) else "")))
    for s in node.saved:
        if s.cid not in cids and (s.network == network or s.state != "ok"):
            out.append(("flannel", "saved config %s%s"
                        % (s.path, "" if s.state == "ok" else " (%s)" % s.state)))
    return out


# ====================================================================== queries

def find(node, query):
    """Rows ``query`` names: a host veth, an IP, a netns (name or path), a
    container ID (or a prefix of one), a pod (namespace/name or name)."""
    q = query.strip()
    hits = []

    def add(r):
        if r not in hits:
            hits.append(r)
    ip = q.split("/")[0] if "/" in q and q.split("/")[-1].isdigit() else q
    from cnilib.base import addr
    ino = None
    if "/" in q and q.startswith("/"):
        ino = nodestate._ns_ino(q)
    elif os.path.exists(os.path.join(paths.NETNS_DIR, q)) and "/" not in q:
        ino = nodestate._ns_ino(os.path.join(paths.NETNS_DIR, q))
    for r in node.rows:
        if r.veth is not None and r.veth.name == q:
            add(r)
        if addr.parse(ip) is not None and any(a.split("/")[0] == ip for a in r.ips()):
            add(r)
        if r.cid and (r.cid == q or (len(q) >= 3 and r.cid.startswith(q))):
            add(r)
        if r.pod and (r.pod == q or r.pod.split("/")[-1] == q):
            add(r)
        path = r.netns_path()
        if path and (path == q or (ino is not None and nodestate._ns_ino(path) == ino)):
            add(r)
    return hits


# ====================================================================== output

def row_dict(r):
    ns = None
    if r.netns is not None:
        ref = r.netns if isinstance(r.netns, nodestate.NetnsRef) else None
        ns = {"path": r.netns_path(), "nsid": ref.nsid if ref else None,
              "alive": True if r.veth is not None else nodestate.netns_alive(r.netns_path())}
    v = r.veth
    return {
        "network": r.network, "containerID": r.cid, "ifname": r.ifname, "pod": r.pod,
        "netns": ns,
        "hostVeth": None if v is None else {"name": v.name, "index": v.index, "master": v.master,
                                            "mtu": v.mtu, "operstate": v.operstate,
                                            "peerIndex": v.peer_index},
        "podIf": None if r.peer is None else {"name": r.peer.name, "index": r.peer.index,
                                               "mtu": r.peer.mtu, "mac": r.peer.mac},
        "ips": r.ips(),
        "leases": [{"ip": lease.ip, "path": lease.path} for lease in r.leases],
        "hostPorts": [{"protocol": p[0], "hostIP": p[1], "hostPort": p[2], "podIP": p[3],
                       "podPort": p[4], "source": p[5]} for p in r.host_ports()],
        "cache": r.cache.path if r.cache else None,
        "flannelSaved": r.saved.path if r.saved else None,
        "tuning": r.tuning.path if r.tuning else None,
        "rules": [{"kind": g.kind, "where": g.where} for g in r.rules],
        "live": r.live, "orphan": list(r.orphan), "notes": list(r.notes),
    }


def to_json(node, rows, query=None):
    return {"schema": "pycni-whois/1", "query": query, "locations": node.loc.as_dict(),
            "attachments": [row_dict(r) for r in rows], "problems": list(node.problems)}


def _short(cid, n=16):
    if not cid:
        return "-"
    return cid if len(cid) <= n else cid[:n - 1] + "~"


def _ports_text(r):
    out = []
    for proto, hip, hport, _pip, pport, _src in r.host_ports():
        out.append("%s/%s%d->%s" % (proto or "?", (hip + ":") if hip else "", hport, pport))
    return ",".join(out) or "-"


def _netns_text(r):
    p = r.netns_path()
    if p is None:
        return "-"
    if p.startswith(paths.NETNS_DIR + "/"):
        return p[len(paths.NETNS_DIR) + 1:]
    return p


def _state_text(r):
    if r.orphan:
        return "ORPHAN " + ",".join(r.orphan)
    return "ok" if r.live else "?"


def render_table(rows):
    head = ("NETWORK", "CONTAINER", "IF", "POD", "NETNS", "HOST VETH", "IP", "HOSTPORTS", "STATE")
    lines = [head]
    for r in rows:
        # names a pod controls (its interface name, its process names) are
        # escaped: an ESC from there would drive the operator's terminal
        lines.append(tuple(printable(str(c)) for c in (
            r.network or "?", _short(r.cid), r.ifname or "?", r.pod or "-", _netns_text(r),
            r.veth.name if r.veth else "-", ",".join(r.ips()) or "-", _ports_text(r),
            _state_text(r))))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in lines) + "\n"


def render_block(r):
    out = []

    def kv(k, v):
        out.append("  %-12s %s" % (k, printable(v)))      # one line, escaped, whatever the pod named
    kv("network", r.network or "? (no layer names it)")
    kv("container", r.cid or "?")
    if r.pod:
        kv("pod", r.pod)
    p = r.netns_path()
    if p:
        extra = ""
        if isinstance(r.netns, nodestate.NetnsRef) and r.netns.nsid is not None:
            extra = " (nsid %d%s)" % (r.netns.nsid, ", pid %d %s" % (r.netns.pid, r.netns.comm or "")
                                      if r.netns.pid else "")
        kv("netns", r.netns.label() + extra if isinstance(r.netns, nodestate.NetnsRef) else p
           + ("" if nodestate.netns_alive(p) else " (gone)"))
    if r.peer is not None:
        kv("pod if", "%s (ifindex %d, mtu %s, mac %s)" % (r.peer.name, r.peer.index, r.peer.mtu, r.peer.mac))
    elif r.ifname:
        kv("ifname", r.ifname)
    if r.veth is not None:
        v = r.veth
        kv("host veth", "%s (ifindex %d, peer ifindex %d, mtu %s, %s)"
           % (v.name, v.index, v.peer_index, v.mtu, v.operstate))
    kv("IP", ", ".join(r.ips()) or "-")
    for lease in r.leases:
        kv("lease", lease.path)
    for proto, hip, hport, pip, pport, src in r.host_ports():
        kv("hostPort", "%s %s%d -> %s:%s  [%s]" % (proto, (hip + ":") if hip else "", hport,
                                                    pip or "?", pport, src))
    for g in r.rules:
        kv("rules", "%s (%s)" % (g.where, g.what))
    if r.cache is not None:
        kv("cache", r.cache.path)
    if r.saved is not None:
        kv("flannel", r.saved.path)
    if r.tuning is not None:
        kv("tuning", r.tuning.path)
    for n in r.notes:
        kv("note", n)
    if r.orphan:
        kv("ORPHAN", "; ".join(ORPHAN_HELP[o] for o in r.orphan))
        kv("see", "pycni doctor (its orphan checks print the commands that clean this up)")
    elif p and r.live:
        kv("enter", "nsenter --net=%s    (ip netns exec %s ...)" % (p, _netns_text(r)))
    return "\n".join(out) + "\n"


def _parser():
    import argparse
    p = argparse.ArgumentParser(
        prog="pycni whois",
        description="Map a host veth, IP, netns, container ID or pod to its attachment "
                    "(pod netns, container ID, ifname, host veth, IP, hostPorts), from live "
                    "state only; with no argument, every attachment of the node, orphans marked.",
        epilog="Run it in the node's network namespace (ip netns exec NODE pycni whois ...).")
    p.add_argument("query", nargs="?", help="veth name, IP, netns name or path, container ID "
                                            "(or prefix), pod namespace/name")
    p.add_argument("--json", action="store_true", help="print JSON (schema pycni-whois/1)")
    p.add_argument("--orphans", action="store_true", help="list only the rows with an orphan")
    nodestate.add_location_options(p)
    return p


def main(argv):
    args = _parser().parse_args(argv)
    try:
        loc = nodestate.locations_from_args(args)
        node = build(loc)
    except OSError as exc:
        sys.stderr.write("pycni whois: cannot read this node's state: %s\n" % exc)
        return 2
    rows = node.rows
    if args.query:
        rows = find(node, args.query)
    if args.orphans:
        rows = [r for r in rows if r.orphan]
    if args.json:
        import json
        sys.stdout.write(json.dumps(to_json(node, rows, args.query), indent=2) + "\n")
    elif args.query:
        if not rows:
            sys.stderr.write("pycni whois: nothing on this node matches %r\n" % args.query)
        for i, r in enumerate(rows):
            sys.stdout.write(("\n" if i else "") + render_block(r))
    else:
        sys.stdout.write(render_table(rows))
        orphans = sum(1 for r in node.rows if r.orphan)
        sys.stdout.write("%d attachment(s), %d with an orphan%s\n" % (
            len(node.rows), orphans, " (pycni doctor prints the fixes)" if orphans else ""))
    for p in node.problems:
        sys.stderr.write("pycni whois: %s\n" % printable(p))
    return 1 if args.query and not rows else 0
