"""``pycni fabric``: set up on one node what flanneld would, from a static node list.

For labs, demos and tests (the seed article's "flannel by hand"); flanneld
remains the production answer.  Run it inside the node's network namespace
(or pass ``--netns``).  The nodes file is a JSON list of
``{"name", "publicIP", "subnet", "subnetV6"?, "publicIPv6"?}``; every node
computes every other node's VTEP MAC from its public IP, so no lease store
is needed.

``up`` follows flanneld's order (flannel-fabric.md section 1): the device,
its address, the iptables rules, subnet.env, then the per-peer state:

  vxlan    ``flannel.1`` (VNI 1, UDP 8472, nolearning, local = public IP,
           bound to the underlay, MTU = underlay - 50) with the lease's
           network address as a /32; per peer a permanent neighbour
           (peer X.Y.Z.0 -> peer VTEP MAC), an fdb entry (that MAC -> peer
           public IP) and the onlink route X.Y.Z.0/24 via X.Y.Z.0, in that
           order; ``flannel-v6.1`` likewise for IPv6 subnets, over the IPv6
           underlay (MTU = underlay - 70: flanneld asks for - 50, which
           the kernel clamps); FLANNEL_MTU is flannel.1's;
  host-gw  per peer a route to its subnet via its public IP on the underlay.

With ipMasq, FLANNEL-POSTRTG in nat/POSTROUTING; FLANNEL-FWD in
filter/FORWARD unless --no-forward-rules (flanneld's default keeps it).  A
re-run converges: devices are reused when compatible, peers no longer listed
are removed, chains are rewritten.  ``down`` removes all of it;
``forward-rules`` makes only FLANNEL-FWD what flanneld keeps for --network
(the fix ``pycni doctor --fix`` applies for a FORWARD policy of DROP).
"""

import os
import sys

from cnilib.base import paths
from cnilib.kernel import netlink
from cnilib.kernel.brport import fdb_del, fdb_replace
from cnilib.kernel.link import link_del, link_get, link_set
from cnilib.kernel.route import (
    addr_add,
    addr_del,
    addrs,
    neigh_del,
    neigh_replace,
    neighs,
    route_add,
    route_del,
    routes,
)
from cnilib.kernel.vxlan import vxlan_add, vxlan_info

VNI = 1
VXLAN_PORT = 8472
ENCAP_OVERHEAD = 50     # flanneld's encapOverhead: outer IPv4 + UDP + VXLAN + inner Ethernet
ENCAP_OVERHEAD6 = 70    # the same over IPv6; the kernel refuses a larger flannel-v6.1 MTU
DEV4, DEV6 = "flannel.%d" % VNI, "flannel-v6.%d" % VNI
DEFAULT_NETWORK = "10.244.0.0/16"
KUBE_PROXY_MARK = "0x4000/0x4000"
MASQ_COMMENT, FWD_COMMENT = "flanneld masq", "flanneld forward"
POSTRTG, FWD = "FLANNEL-POSTRTG", "FLANNEL-FWD"


class FabricError(Exception):
    """A problem the operator has to fix; the message says what and where."""


# ------------------------------------------------------------ the description


class Node:
    __slots__ = ("name", "public_ip", "subnet", "public_ip6", "subnet6")

    def __init__(self, name, public_ip, subnet, public_ip6=None, subnet6=None):
        self.name, self.public_ip, self.subnet = name, public_ip, subnet
        self.public_ip6, self.subnet6 = public_ip6, subnet6

    def __repr__(self):
        return "<Node %s %s %s>" % (self.name, self.public_ip, self.subnet)


def _addr(value, version, where):
    import ipaddress
    try:
        a = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise FabricError("%s: %r is not an IP address" % (where, value)) from None
    if a.version != version:
        raise FabricError("%s: %s is not an IPv%d address" % (where, a, version))
    return a


def _net(value, version, where):
    import ipaddress
    if not isinstance(value, str) or "/" not in value:
        raise FabricError("%s: %r is not a CIDR such as 10.244.1.0/24" % (where, value))
    try:
        n = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise FabricError("%s: %r is not a CIDR such as 10.244.1.0/24" % (where, value)) from None
    if n.version != version:
        raise FabricError("%s: %s is not an IPv%d network" % (where, n, version))
    return n


def parse_nodes(data, source="nodes file"):
    """Validate the decoded nodes JSON (a list, or {"nodes": [...]})."""
    if isinstance(data, dict) and "nodes" in data:
        data = data["nodes"]
    if not isinstance(data, list) or not data:
        raise FabricError("%s: expected a non-empty JSON list of nodes" % source)
    nodes, seen = [], {}
    for i, item in enumerate(data):
        where = "%s: node %d" % (source, i)
        if not isinstance(item, dict):
            raise FabricError("%s is not an object" % where)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise FabricError("%s has no \"name\"" % where)
        where = "%s: node %r" % (source, name)
        for k in ("publicIP", "subnet"):
            if k not in item:
                raise FabricError("%s has no %r" % (where, k))
        node = Node(name, _addr(item["publicIP"], 4, where + " publicIP"),
                    _net(item["subnet"], 4, where + " subnet"))
        if item.get("subnetV6") is not None:
            node.subnet6 = _net(item["subnetV6"], 6, where + " subnetV6")
            if item.get("publicIPv6") is None:
                raise FabricError("%s has a subnetV6 but no publicIPv6 (the underlay address "
                                  "flannel-v6.1 sends from)" % where)
        if item.get("publicIPv6") is not None:
            node.public_ip6 = _addr(item["publicIPv6"], 6, where + " publicIPv6")
        for key, val in (("name", name), ("publicIP", node.public_ip), ("publicIPv6", node.public_ip6),
                         ("VTEP MAC", vtep_mac(node.public_ip)),
                         ("IPv6 VTEP MAC", node.public_ip6 and vtep_mac(node.public_ip6))):
            if val is None:
                continue
            other = seen.get((key, str(val)))
            if other is not None:
                raise FabricError("%s: nodes %r and %r have the same %s %s" % (source, other, name, key, val))
            seen[(key, str(val))] = name
        nodes.append(node)
    for attr in ("subnet", "subnet6"):
        have = [n for n in nodes if getattr(n, attr) is not None]
        for i, a in enumerate(have):
            for b in have[i + 1:]:
                if getattr(a, attr).overlaps(getattr(b, attr)):
                    raise FabricError("%s: the subnets of %r (%s) and %r (%s) overlap" % (
                        source, a.name, getattr(a, attr), b.name, getattr(b, attr)))
    return nodes


def vtep_mac(ip):
    """The VTEP MAC of a node, computed from its public IP by every node.

    ``0e:fe`` + the four IPv4 bytes (``0e:f6`` + the last four bytes of an
    IPv6 address): 0x0e is unicast (bit 0 clear) and locally administered
    (bit 1 set), and the IP stays readable in a capture.
    """
    import ipaddress
    ip = ipaddress.ip_address(ip)
    head = b"\x0e\xfe" if ip.version == 4 else b"\x0e\xf6"
    return ":".join("%02x" % b for b in head + ip.packed[-4:])


class Plan:
    """What ``up`` wants on this node, computed before touching anything."""

    def __init__(self, nodes, me, network, network6=None, backend="vxlan", ipmasq=True,
                 forward_rules=True, subnet_file=paths.FLANNEL_SUBNET_FILE, iface=None):
        if backend not in ("vxlan", "host-gw"):
            raise FabricError("backend %r is not supported: expected vxlan or host-gw" % backend)
        self.network = _net(network, 4, "--network")
        self.network6 = _net(network6, 6, "--network-v6") if network6 else None
        by_name = {n.name: n for n in nodes}
        if me not in by_name:
            raise FabricError("node %r is not in the nodes file (it has %s)"
                              % (me, ", ".join(sorted(by_name))))
        self.me = by_name[me]
        self.peers = [n for n in nodes if n.name != me]
        for n in nodes:
            if not n.subnet.subnet_of(self.network):
                raise FabricError("node %r: subnet %s is outside the network %s"
                                  % (n.name, n.subnet, self.network))
            if self.network6 is None and n.subnet6 is not None:
                raise FabricError("node %r has a subnetV6 but no --network-v6 was given" % n.name)
            if self.network6 is not None:
                if n.subnet6 is None:
                    raise FabricError("node %r has no subnetV6 but --network-v6 %s was given"
                                      % (n.name, self.network6))
                if not n.subnet6.subnet_of(self.network6):
                    raise FabricError("node %r: subnetV6 %s is outside the network %s"
                                      % (n.name, n.subnet6, self.network6))
        self.backend = backend
        self.ipmasq = ipmasq
        self.forward_rules = forward_rules
        self.subnet_file = subnet_file
        self.iface = iface

    @property
    def dual(self):
        return self.network6 is not None

    def families(self):
        """(family, device, network, my subnet, attr names) per enabled family."""
        out = [(4, DEV4, self.network, self.me.subnet, "subnet", "public_ip")]
        if self.dual:
            out.append((6, DEV6, self.network6, self.me.subnet6, "subnet6", "public_ip6"))
        return out


def subnet_env_text(plan, mtu):
    """subnet.env as flanneld writes it (section 4): lease + 1 as FLANNEL_SUBNET."""
    lines = ["FLANNEL_NETWORK=%s" % plan.network,
             "FLANNEL_SUBNET=%s/%d" % (plan.me.subnet.network_address + 1, plan.me.subnet.prefixlen)]
    if plan.dual:
        lines += ["FLANNEL_IPV6_NETWORK=%s" % plan.network6,
                  "FLANNEL_IPV6_SUBNET=%s/%d" % (plan.me.subnet6.network_address + 1,
                                                 plan.me.subnet6.prefixlen)]
    lines += ["FLANNEL_MTU=%d" % mtu, "FLANNEL_IPMASQ=%s" % ("true" if plan.ipmasq else "false")]
    return "\n".join(lines) + "\n"


def masq_rules(cluster, pod, family=4):
    """FLANNEL-POSTRTG's rules (flanneld trafficmngr/iptables masqRules),
    written the way iptables-save prints them."""
    c = '-m comment --comment "%s"' % MASQ_COMMENT
    mcast = "224.0.0.0/4" if family == 4 else "ff00::/8"
    return ["-m mark --mark %s %s -j RETURN" % (KUBE_PROXY_MARK, c),
            "-s %s -d %s %s -j RETURN" % (pod, cluster, c),
            "-s %s -d %s %s -j RETURN" % (cluster, pod, c),
            "! -s %s -d %s %s -j RETURN" % (cluster, pod, c),
            "-s %s ! -d %s %s -j MASQUERADE --random-fully" % (cluster, mcast, c),
            "! -s %s -d %s %s -j MASQUERADE --random-fully" % (cluster, cluster, c)]


def forward_rules(cluster):
    c = '-m comment --comment "%s"' % FWD_COMMENT
    return ["-s %s %s -j ACCEPT" % (cluster, c), "-d %s %s -j ACCEPT" % (cluster, c)]


# table, parent chain, our chain, comment of the jump
CHAINS = (("nat", "POSTROUTING", POSTRTG, MASQ_COMMENT), ("filter", "FORWARD", FWD, FWD_COMMENT))


def chain_batch(saved, parent, chain, comment, rules):
    """iptables-restore lines that make ``chain`` hold exactly ``rules`` with
    one jump to it from ``parent``; [] when that is already so.  ``rules``
    None removes the chain and its jumps."""
    from cnilib.firewall import iptables
    have = iptables.rules(saved, chain)
    jumps = [r for r in iptables.rules(saved, parent) if r.split()[-1] == chain]
    exists = chain in iptables.chains(saved)
    if rules is None:
        if not exists:
            return []
        return ["-D" + j[2:] for j in jumps] + ["-F " + chain, "-X " + chain]
    want_jump = '-A %s -m comment --comment "%s" -j %s' % (parent, comment, chain)
    if exists and jumps == [want_jump] and have == ["-A %s %s" % (chain, r) for r in rules]:
        return []
    lines = ["-F " + chain] if exists else [":%s - [0:0]" % chain]
    lines += ["-D" + j[2:] for j in jumps]
    lines.append(want_jump)
    lines += ["-A %s %s" % (chain, r) for r in rules]
    return lines


def ensure_forward_rules(network, out=None):
    """FLANNEL-FWD as flanneld keeps it for ``network`` (an ip_network), and
    only that: the chain holds the two ACCEPT rules, FORWARD jumps to it
    once.  Re-running changes nothing (``pycni fabric forward-rules``, the
    fix doctor's forward-policy check marks safe)."""
    from cnilib.firewall import iptables
    fam = network.version
    lines = iptables.edit(fam, "filter", lambda saved: chain_batch(saved, "FORWARD", FWD, FWD_COMMENT,
                                                                   forward_rules(str(network))),
                          what="flannel forward rules")
    if out is not None:
        out("ip%stables: %s %s" % ("" if fam == 4 else "6", FWD,
                                   "accepts %s" % network if lines else "already accepts %s" % network))
    return lines


# ------------------------------------------------------------ applying it


class Fabric:
    """Applies a Plan (``up``) or removes everything (``down``) in the current netns."""

    def __init__(self, out=None):
        self.nl = netlink.Netlink()
        self.out = out or (lambda line: None)

    def close(self):
        self.nl.close()

    # -- the underlay ----------------------------------------------------
    def underlay(self, plan):
        nl = self.nl
        mine = str(plan.me.public_ip)
        if plan.iface:
            link = link_get(nl, plan.iface)
            if link is None:
                raise FabricError("underlay interface %s does not exist in this network namespace"
                                  % plan.iface)
        else:
            owner = [a.index for a in addrs(nl, family=netlink.AF_INET) if a.address == mine]
            if not owner:
                raise FabricError("no interface holds this node's publicIP %s; add it or pass --iface" % mine)
            link = link_get(nl, index=owner[0])
        on_link = {a.address for a in addrs(nl, link.index)}
        if plan.backend == "host-gw" and mine not in on_link:
            raise FabricError("host-gw needs the publicIP %s on %s (flanneld refuses NAT'd nodes too)"
                              % (mine, link.name))
        if plan.dual and str(plan.me.public_ip6) not in on_link:
            raise FabricError("publicIPv6 %s is not an address of %s" % (plan.me.public_ip6, link.name))
        return link

    # -- vxlan devices ---------------------------------------------------
    def ensure_vxlan(self, name, local, underlay, mtu, mac, address, network):
        nl = self.nl
        link = link_get(nl, name)
        info = vxlan_info(link)
        if link is not None and (info is None or info.vni != VNI or info.local != local
                                 or info.link != underlay.index or info.port != VXLAN_PORT
                                 or info.learning):
            self.out("%s: replacing an incompatible device (%s)" % (name, info or link.kind))
            link_del(nl, link.index)
            link = None
        if link is None:
            vxlan_add(nl, name, VNI, local, underlay.index, VXLAN_PORT, mtu, mac)
            link = link_get(nl, name)
        elif link.mtu != mtu or (link.mac or "").lower() != mac:
            link_set(nl, link.index, mtu=mtu, mac=mac, what="set mtu/mac of %s" % name)
        self._no_ra(name)
        # flanneld's EnsureV4AddressOnLink: only the lease address inside the network
        fam = netlink.AF_INET6 if ":" in address else netlink.AF_INET
        plen = 128 if fam == netlink.AF_INET6 else 32
        for a in addrs(nl, link.index, fam):
            if a.cidr != "%s/%d" % (address, plen) and _inside(a.address, network):
                addr_del(nl, link.index, a.address, a.prefixlen)
        addr_add(nl, link.index, address, plen)
        link_set(nl, link.index, up=True, what="set %s up" % name)
        return link

    def _no_ra(self, name):
        from cnilib.base import errors
        from cnilib.kernel import sysctl
        try:
            sysctl.write("net/ipv6/conf/%s/accept_ra" % name, 0)
        except errors.CniError:
            pass  # IPv6 disabled in this netns

    def vxlan_peers(self, dev, peers, subnet_attr, public_attr):
        """neighbour, fdb entry, onlink route per peer (flanneld's order); stale ones go."""
        nl = self.nl
        want_routes, want_neigh, want_fdb = set(), set(), set()
        for p in peers:
            subnet, public = getattr(p, subnet_attr), str(getattr(p, public_attr))
            gw, mac = str(subnet.network_address), vtep_mac(getattr(p, public_attr))
            neigh_replace(nl, dev.index, gw, mac)
            fdb_replace(nl, dev.index, mac, public)
            route_add(nl, str(subnet), gateway=gw, oif=dev.index, onlink=True, replace=True)
            want_routes.add(str(subnet))
            want_neigh.add(gw)
            want_fdb.add((mac, public))
            self.out("  peer %s: %s via %s dev %s onlink; neigh %s lladdr %s; fdb %s dst %s"
                     % (p.name, subnet, gw, dev.name, gw, mac, mac, public))
        fam = netlink.AF_INET6 if subnet_attr == "subnet6" else netlink.AF_INET
        for r in routes(nl, fam):
            if r.oif == dev.index and r.gateway and r.cidr not in want_routes:
                route_del(nl, r.cidr, r.gateway, r.oif)
                self.out("  removed stale route %s via %s" % (r.cidr, r.gateway))
        for n in neighs(nl, dev.index, fam):
            if n.state & netlink.NUD_PERMANENT and n.dst not in want_neigh:
                neigh_del(nl, dev.index, n.dst)
                self.out("  removed stale neigh %s" % n.dst)
        for n in neighs(nl, dev.index, netlink.AF_BRIDGE):
            if n.dst and (n.lladdr, n.dst) not in want_fdb:
                fdb_del(nl, dev.index, n.lladdr, n.dst)
                self.out("  removed stale fdb %s dst %s" % (n.lladdr, n.dst))

    # -- host-gw ---------------------------------------------------------
    def hostgw_routes(self, underlay, peers, network, subnet_attr, public_attr):
        nl = self.nl
        want = {}
        for p in peers:
            subnet, gw = getattr(p, subnet_attr), str(getattr(p, public_attr))
            route_add(nl, str(subnet), gateway=gw, oif=underlay.index, replace=True)
            want[str(subnet)] = gw
            self.out("  peer %s: %s via %s dev %s" % (p.name, subnet, gw, underlay.name))
        self.remove_gateway_routes(network, keep=want)

    def remove_gateway_routes(self, network, keep=None, dev=None):
        """Routes into ``network`` through a gateway (host-gw's), except ``keep``
        and those through the vxlan device ``dev``."""
        nl = self.nl
        fam = netlink.AF_INET6 if network.version == 6 else netlink.AF_INET
        for r in routes(nl, fam):
            if not r.gateway or r.dst is None or not _within(r.cidr, network):
                continue
            if dev is not None and r.oif == dev.index:
                continue
            if keep is not None and keep.get(r.cidr) == r.gateway:
                continue
            route_del(nl, r.cidr, r.gateway, r.oif)
            self.out("  removed route %s via %s" % (r.cidr, r.gateway))

    # -- iptables --------------------------------------------------------
    def iptables(self, plan):
        from cnilib.firewall import iptables
        for fam, _dev, network, subnet, _s, _p in plan.families():
            if fam == 6 and not iptables.available(6):
                self.out("ip6tables is not available: no IPv6 rules")
                continue
            want = {POSTRTG: masq_rules(str(network), str(subnet), fam) if plan.ipmasq else None,
                    FWD: forward_rules(str(network)) if plan.forward_rules else None}
            self._apply_chains(iptables, fam, want)
            kept = [c for c in (POSTRTG, FWD) if want[c] is not None]
            self.out("ip%stables: %s" % ("" if fam == 4 else "6", ", ".join(kept) or "no flannel chains"))
        if not plan.dual and iptables.available(6):
            self._apply_chains(iptables, 6, {POSTRTG: None, FWD: None})

    def _apply_chains(self, iptables, fam, want):
        for table, parent, chain, comment in CHAINS:
            def lines(saved, parent=parent, chain=chain, comment=comment):
                return chain_batch(saved, parent, chain, comment, want[chain])
            iptables.edit(fam, table, lines, what="%s flannel rules" % table)

    # -- the whole node --------------------------------------------------
    def up(self, plan):
        from cnilib.base import fsutil
        underlay = self.underlay(plan)
        mtu = underlay.mtu - (ENCAP_OVERHEAD if plan.backend == "vxlan" else 0)
        self.out("%s: %s over %s (%s, mtu %d)" % (plan.me.name, plan.backend, underlay.name,
                                                  plan.me.public_ip, underlay.mtu))
        devs = {}
        for fam, name, network, subnet, _s, public_attr in plan.families():
            if plan.backend == "vxlan":
                local = getattr(plan.me, public_attr)
                mac = vtep_mac(local)
                dev_mtu = mtu if fam == 4 else underlay.mtu - ENCAP_OVERHEAD6
                devs[fam] = self.ensure_vxlan(name, str(local), underlay, dev_mtu, mac,
                                              str(subnet.network_address), network)
                self.out("%s: vxlan id %d local %s dev %s dstport %d nolearning mtu %d mac %s, %s/%d"
                         % (name, VNI, local, underlay.name, VXLAN_PORT, dev_mtu, mac,
                            subnet.network_address, 32 if fam == 4 else 128))
                self.remove_gateway_routes(network, dev=devs[fam])
            else:
                link = link_get(self.nl, name)
                if link is not None:
                    link_del(self.nl, link.index)
                    self.out("%s: removed (backend is host-gw)" % name)
        if not plan.dual:
            link = link_get(self.nl, DEV6)
            if link is not None:
                link_del(self.nl, link.index)
        self.iptables(plan)
        for network in previous_networks(plan):
            self.remove_gateway_routes(network)
        text = subnet_env_text(plan, mtu)
        parent = os.path.dirname(os.path.abspath(plan.subnet_file))
        os.makedirs(parent, 0o755, exist_ok=True)
        fsutil.write_atomic(plan.subnet_file, text, 0o644)
        os.chmod(plan.subnet_file, 0o644)
        self.out("%s: %s" % (plan.subnet_file, " ".join(text.split())))
        for fam, _name, network, _subnet, subnet_attr, public_attr in plan.families():
            if plan.backend == "vxlan":
                self.vxlan_peers(devs[fam], plan.peers, subnet_attr, public_attr)
            else:
                self.hostgw_routes(underlay, plan.peers, network, subnet_attr, public_attr)

    def down(self, networks, subnet_file):
        from cnilib.base import fsutil
        from cnilib.firewall import iptables
        for name in (DEV4, DEV6):
            link = link_get(self.nl, name)
            if link is not None:
                link_del(self.nl, link.index)
                self.out("%s: removed" % name)
        for network in networks:
            self.remove_gateway_routes(network)
        for fam in (4, 6):
            if not iptables.available(fam):
                continue
            self._apply_chains(iptables, fam, {POSTRTG: None, FWD: None})
        if subnet_file and fsutil.remove(subnet_file):
            self.out("%s: removed" % subnet_file)


def previous_networks(plan):
    """Networks of the subnet.env an earlier ``up`` wrote that this plan no
    longer uses (flanneld reads the old file back for the same reason)."""
    import ipaddress

    from cnilib import flannel
    try:
        env = flannel.load_subnet_env(plan.subnet_file)
    except flannel.SubnetEnvError:
        return []
    now = {str(plan.network), str(plan.network6)}
    return [ipaddress.ip_network(n) for n in env.all_networks() if n not in now]


def _within(cidr, network):
    import ipaddress
    try:
        return ipaddress.ip_network(cidr, strict=False).subnet_of(network)
    except (ValueError, TypeError):
        return False


def _inside(address, network):
    import ipaddress
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


# ------------------------------------------------------------ command line


def _parser():
    import argparse
    p = argparse.ArgumentParser(
        prog="pycni fabric",
        description="Set up (or tear down) on this node what flanneld would: the flannel.1 VXLAN "
                    "device or host-gw routes, the iptables rules and subnet.env, from a static "
                    "list of nodes.  Runs in the current network namespace unless --netns is given.")
    p.add_argument("action", nargs="?", choices=("up", "down", "forward-rules"), default="up",
                   help="up (default), down, or forward-rules: only FLANNEL-FWD for --network "
                        "and --network-v6, as flanneld keeps it")
    p.add_argument("--nodes", help="JSON file: [{name, publicIP, subnet, subnetV6?, publicIPv6?}, ...]")
    p.add_argument("--node", help="which entry of --nodes this node is")
    p.add_argument("--network", help="the cluster network (FLANNEL_NETWORK), default %s" % DEFAULT_NETWORK)
    p.add_argument("--network-v6", help="the IPv6 cluster network (FLANNEL_IPV6_NETWORK)")
    p.add_argument("--backend", choices=("vxlan", "host-gw"), default="vxlan")
    p.add_argument("--ipmasq", dest="ipmasq", action="store_true", default=True,
                   help="install FLANNEL-POSTRTG masquerading (default; FLANNEL_IPMASQ=true)")
    p.add_argument("--no-ipmasq", dest="ipmasq", action="store_false",
                   help="no flanneld masquerading; the bridge plugin then masquerades")
    p.add_argument("--no-forward-rules", dest="forward_rules", action="store_false", default=True,
                   help="skip FLANNEL-FWD (flanneld --iptables-forward-rules=false)")
    p.add_argument("--subnet-file", default=paths.FLANNEL_SUBNET_FILE,
                   help="where to write subnet.env (default %s)" % paths.FLANNEL_SUBNET_FILE)
    p.add_argument("--iface", help="underlay interface (default: the one holding the node's publicIP)")
    p.add_argument("--netns",
                   help="network namespace to work in (a name under %s or a path)" % paths.NETNS_DIR)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def _enter_netns(spec):
    from cnilib.base import errors
    from cnilib.kernel import netns
    path = spec if "/" in spec else os.path.join(paths.NETNS_DIR, spec)
    try:
        fd = netns.open_netns(path)
    except netns.NetNSGone:
        raise FabricError("network namespace %s does not exist" % path) from None
    except errors.CniError as exc:
        raise FabricError(exc.msg) from None
    netns.setns(fd)  # for good: the iptables children must inherit it
    os.close(fd)


def _flag_networks(args):
    """The networks --network and --network-v6 name."""
    nets = []
    if args.network:
        nets.append(_net(args.network, 4, "--network"))
    if args.network_v6:
        nets.append(_net(args.network_v6, 6, "--network-v6"))
    return nets


def _down_networks(args):
    """Networks whose gateway routes ``down`` removes: the flags, else subnet.env's."""
    nets = []
    if args.network:
        nets.append(_net(args.network, 4, "--network"))
    if args.network_v6:
        nets.append(_net(args.network_v6, 6, "--network-v6"))
    if nets or not args.subnet_file:
        return nets
    from cnilib import flannel
    try:
        env = flannel.load_subnet_env(args.subnet_file)
    except flannel.SubnetEnvError:
        return []
    import ipaddress
    return [ipaddress.ip_network(n) for n in env.all_networks()]


def load_plan(args):
    """The Plan for ``up`` from the command line; nothing is touched yet."""
    if not args.nodes or not args.node:
        raise FabricError("up needs --nodes FILE and --node NAME")
    from cnilib.base import jsonio
    try:
        with open(args.nodes, "rb") as f:
            data = jsonio.loads(f.read())
    except OSError as exc:
        raise FabricError("cannot read %s: %s" % (args.nodes, exc.strerror)) from None
    except ValueError as exc:
        raise FabricError("%s is not valid JSON: %s" % (args.nodes, exc)) from None
    return Plan(parse_nodes(data, args.nodes), args.node, args.network or DEFAULT_NETWORK,
                args.network_v6, args.backend, args.ipmasq, args.forward_rules,
                args.subnet_file, args.iface)


def run(args, out):
    if args.action == "forward-rules":
        nets = _flag_networks(args)
        if not nets:
            raise FabricError("forward-rules needs --network (and/or --network-v6)")
        if args.netns:
            _enter_netns(args.netns)
        for n in nets:
            ensure_forward_rules(n, out)
        return
    plan = load_plan(args) if args.action == "up" else None
    if args.netns:
        _enter_netns(args.netns)
    fabric = Fabric(out)
    try:
        if plan is None:
            fabric.down(_down_networks(args), args.subnet_file)
        else:
            fabric.up(plan)
    finally:
        fabric.close()


def main(argv=None):
    """``pycni fabric [up|down] ...``; returns the exit code."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    from cnilib.base import errors
    try:
        run(args, out)
    except FabricError as exc:
        sys.stderr.write("pycni fabric: %s\n" % exc)
        return 1
    except errors.CniError as exc:
        sys.stderr.write("pycni fabric: %s\n" % exc)
        return 1
    except OSError as exc:
        sys.stderr.write("pycni fabric: %s\n" % exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
