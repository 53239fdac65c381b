"""The bridge plugin's kernel work on the host side (its config and pure
rules are in cnilib.bridge.netconf).

``ensure_bridge``, ``setup_veth``, ``setup_port``, ``ensure_gateway_addrs``
(with the stale-address repair), ``ensure_vlan_iface``, ``wait_port_up``,
``remove_leftover_veths``, ``gc_veths``, ``check_attachment``.

Every "ensure" step is idempotent under EEXIST so that parallel ADDs on a
fresh node all succeed with one bridge and one gateway address.
"""

import os
import time

from cnilib.base import errors
from cnilib.bridge.netconf import random_mac
from cnilib.firewall import naming
from cnilib.kernel import netlink, sysctl
from cnilib.kernel.brport import (
    bridge_add,
    bridge_vlan_add,
    bridge_vlan_del,
    bridge_vlans,
    brport_flags,
    brport_set,
    port_aliases,
    veth_add,
)
from cnilib.kernel.link import forwarding, link_del, link_get, link_set, links, veth_peer
from cnilib.kernel.route import addr_add, addr_del, link_addrs, routes

PORT_WAIT = (0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 1.0)


# ------------------------------------------------------------ bridge

def ensure_bridge(nl, conf, log):
    """Create or reuse the bridge; promisc on if asked, accept_ra off, up."""
    name = conf["bridge"]
    br = link_get(nl, name)
    if br is None:
        vlan_filtering = bool(conf["vlan"]) or conf["_trunk"] is not None
        try:
            created = bridge_add(nl, name, conf["mtu"], random_mac(), vlan_filtering)
        except netlink.NetlinkError as exc:
            if vlan_filtering and exc.errno == 95:  # EOPNOTSUPP
                raise errors.Internal(
                    "failed to create bridge %r: this kernel has no bridge VLAN filtering" % name,
                    "vlan/vlanTrunk need CONFIG_BRIDGE_VLAN_FILTERING; remove them or use a "
                    "kernel built with it") from exc
            raise errors.Internal("failed to create bridge %r: %s" % (name, exc.strerror)) from exc
        br = link_get(nl, name)
        if br is None:
            raise errors.Internal("failed to create bridge %r: it vanished right after creation"
                                  % name, "another process deleted it; retry the ADD")
        if created:
            log.info("created bridge %s (mtu %s, mac %s)", name, br.mtu, br.mac)
    if br.kind != "bridge":
        raise errors.Internal("failed to create bridge %r: %r already exists but is not a bridge"
                              % (name, name), "found a link of kind %s; choose another bridge "
                              "name or remove that link" % (br.kind or "unknown"))
    if conf["mtu"] and br.mtu != conf["mtu"]:
        log.warning("bridge %s has mtu %s, the config asks for %d; the veths get %d",
                    name, br.mtu, conf["mtu"], conf["mtu"])
    if conf["promiscMode"] and not br.promisc:
        link_set(nl, br.index, promisc=True, what="set %s promisc on" % name)
    if br.devconf6(netlink.DEVCONF_ACCEPT_RA) != 0:        # read from the link, not /proc
        _sysctl_quiet("net/ipv6/conf/%s/accept_ra" % name, "0")
    if not br.up:
        link_set(nl, br.index, up=True, what="set %s up" % name)
    return br


def check_free(cnl, ifname, netns_path):
    """Refuse an ADD whose container interface exists already (the spec's MUST)."""
    if link_get(cnl, ifname) is not None:
        raise errors.Internal(
            "container interface %r already exists in %s" % (ifname, netns_path),
            "an earlier ADD for this container was not followed by DEL, or another plugin "
            "created %s; run DEL first" % ifname)


def setup_veth(nl, cnl, netns_fd, ifname, br, conf, mac, alias=None):
    """Create the pair: 'veth<8 hex>' on the bridge here, ``ifname`` in the
    container, and tag the host end with ``alias`` at once: GC and DEL
    without a netns find a veth by its alias, so a crash must not find one
    untagged (the kernel ignores an alias in the creating request, so a
    window of two requests remains).  Returns the host end's Link, up.

    The host end is created down and set up after its alias.  The kernel
    queues a carrier-off event for each new veth end; read back (or
    tagged) while it is up, that event is a state change of a bridge port:
    the port is disabled (its FDB entries flushed, every port's state
    reselected) and, the link not being ready, IPv6 walks every route of
    the host netns (rt6_sync_down_dev), each costing time in proportion
    to the pods on the node (issue 20: 1.9 ms of an ADD at 1,000 pods).
    Down, the event and the alias change nothing."""
    for _ in range(10):
        host = "veth" + os.urandom(4).hex()
        try:
            veth_add(nl, host, ifname, netns_fd, conf["mtu"], mac, br.index, up=False)
        except netlink.NetlinkError as exc:
            if exc.errno != 17:  # EEXIST
                raise errors.Internal("failed to make veth pair: %s" % exc.strerror) from exc
            check_free(cnl, ifname, "the container")   # lost a race with another ADD
            continue
        link = link_get(nl, host)
        if link is None:
            raise errors.Internal("veth %s vanished right after creation" % host)
        try:
            if alias:
                link_set(nl, link.index, alias=alias, what="set alias of %s" % host)
            link_set(nl, link.index, up=True, what="set %s up" % host)
        except netlink.NetlinkError as exc:
            try:
                link_del(nl, index=link.index)
            except netlink.NetlinkError:
                pass        # tagged or not, DEL and GC find it by its container end
            raise errors.Internal("failed to set up veth %s: %s" % (host, exc.strerror)) from exc
        return link
    raise errors.Internal("failed to find a unique veth name", "10 random names were all taken")


def setup_port(nl, port, conf):
    """accept_ra off, hairpin/isolated and VLANs of a new bridge port."""
    if port.devconf6(netlink.DEVCONF_ACCEPT_RA) != 0:      # a new link: the default, 1
        _sysctl_quiet("net/ipv6/conf/%s/accept_ra" % port.name, "0", only_if_different=False)
    if conf["hairpinMode"] or conf["portIsolation"]:
        try:
            brport_set(nl, port.index, hairpin=conf["hairpinMode"], isolated=conf["portIsolation"])
        except netlink.NetlinkError as exc:
            raise errors.Internal("failed to set hairpin/isolated on %s: %s"
                                  % (port.name, exc.strerror)) from exc
    set_port_vlans(nl, port, conf)


def set_port_vlans(nl, port, conf):
    vlan, trunk = conf["vlan"], conf["_trunk"]
    if not vlan and trunk is None:
        return
    try:
        if not conf["preserveDefaultVlan"]:
            bridge_vlan_del(nl, port.index, [v for v, _ in bridge_vlans(nl, port.index)])
        if vlan:
            bridge_vlan_add(nl, port.index, vlan, pvid=True, untagged=True)
        for v in trunk or ():
            bridge_vlan_add(nl, port.index, v)
        if not vlan and trunk is not None:
            bridge_vlan_add(nl, port.index, 1, pvid=True, untagged=True)
    except netlink.NetlinkError as exc:
        raise errors.Internal("failed to set vlans on bridge port %s: %s"
                              % (port.name, exc.strerror)) from exc


def ensure_vlan_iface(nl, br, conf, log):
    """The '<bridge>.<vlan>' veth end that holds the gateway address in VLAN
    mode; its random peer is an access port of that VLAN on the bridge."""
    name = "%s.%d" % (conf["bridge"], conf["vlan"])
    link = link_get(nl, name)
    if link is None:
        peer = "veth" + os.urandom(4).hex()
        try:
            veth_add(nl, peer, name, None, conf["mtu"], None, br.index)
            created = True
        except netlink.NetlinkError as exc:
            if exc.errno != 17:
                raise errors.Internal("failed to set vlan interface for bridge with addr: %s"
                                      % exc.strerror) from exc
            created = False
        if created:
            port = link_get(nl, peer)
            setup_port(nl, port, dict(conf, hairpinMode=False, portIsolation=False, _trunk=None))
            log.info("created vlan gateway interface %s (peer %s)", name, peer)
        link = link_get(nl, name)
        if link is None:
            raise errors.Internal("vlan gateway interface %s vanished after creation" % name)
    if not link.up:
        link_set(nl, link.index, up=True, what="set %s up" % name)
    return link


def ensure_gateway_addrs(nl, link, gws, conf, network, own_ips, log):
    """Put the gateway addresses ``gws`` ({4: [(ip, plen)], 6: [...]}) on
    ``link`` (the bridge or its vlan interface) and turn forwarding on.

    An address of another subnet already there (the bridge outlived the
    cluster that configured it) is replaced when forceAddress is set, or
    when nothing can still be using it: no port attached and no live
    lease in its subnet.  Otherwise the ADD fails naming both addresses
    and the fix.  Returns True when an address was added.
    """
    from cnilib.base import addr
    from cnilib.bridge import iface
    added = False
    for fam in (4, 6):
        want = [(addr.canonical(ip), plen) for ip, plen in gws[fam]]
        if not want:
            continue
        af = netlink.AF_INET if fam == 4 else netlink.AF_INET6
        have = [(addr.canonical(a.address), a.prefixlen) for a in link_addrs(nl, link.index, af)]
        stale = [h for h in have if h not in want and _conflicts(h, want)]
        if stale:
            import ipaddress  # only here: a bridge that kept an old address
            _repair_stale(nl, link, [(ipaddress.ip_address(i), p) for i, p in stale],
                          [(ipaddress.ip_address(i), p) for i, p in want], conf, network, own_ips, log)
        for ip, plen in want:
            if (ip, plen) in have:
                continue
            brd = iface.broadcast(str(ip), plen) if fam == 4 and plen < 31 else None
            try:
                added |= addr_add(nl, link.index, str(ip), plen, brd, nodad=fam == 6)
            except netlink.NetlinkError as exc:
                raise errors.Internal("failed to set bridge addr: could not add IP address %s/%d "
                                      "to %r: %s" % (ip, plen, link.name, exc.strerror)) from exc
        enable_forwarding(nl, fam)
    return added


def _conflicts(have, want):
    """IPv4: any other address conflicts.  IPv6: only one whose subnet
    overlaps a wanted one (link-local addresses are fine).  Addresses are
    canonical strings, as ensure_gateway_addrs builds them."""
    from cnilib.base import addr
    fam, n = addr.parse(have[0])
    if fam == 4:
        return True
    for w, wplen in want:
        m = addr.mask(6, min(have[1], wplen))
        if n & m == addr.parse(w)[1] & m:
            return True
    return False


def _repair_stale(nl, link, stale, want, conf, network, own_ips, log):
    """Remove the stale addresses if that is safe (see ensure_gateway_addrs);
    serialised per bridge so that parallel ADDs agree on one answer."""
    from cnilib.base import fsutil, paths
    fsutil.ensure_root(paths.run_dir())
    lock = os.path.join(paths.run_dir(), "bridge-%s.lock" % conf["bridge"])
    with fsutil.Flock(lock, what="bridge address lock"):
        af = netlink.AF_INET if want[0][0].version == 4 else netlink.AF_INET6
        import ipaddress
        now = [(ipaddress.ip_address(a.address), a.prefixlen) for a in link_addrs(nl, link.index, af)]
        stale = [s for s in stale if s in now]
        for ip, plen in stale:
            old = "%s/%d" % (ip, plen)
            if conf["forceAddress"]:
                why = "forceAddress is set"
            else:
                blockers = _stale_blockers(nl, link, ip, plen, conf, network, own_ips)
                if blockers:
                    new = ", ".join("%s/%d" % w for w in want)
                    raise errors.Internal(
                        "failed to set bridge addr: %r already has an IP address different from "
                        "%s: found %s" % (link.name, new, old),
                        "%s, so it is left alone. If those pods are gone, run "
                        "'ip addr del %s dev %s' (or 'ip link del %s') and retry, or set "
                        "forceAddress: true" % ("; ".join(blockers), old, link.name, link.name))
                why = "no port attached, no lease in its subnet"
            addr_del(nl, link.index, str(ip), plen)
            log.warning("replaced stale address %s on %s with %s (%s)", old, link.name,
                        ", ".join("%s/%d" % w for w in want), why)


def _stale_blockers(nl, link, ip, plen, conf, network, own_ips):
    """Why the old address ip/plen may still be in use ([] = it is not)."""
    import ipaddress
    out = []
    ports = port_aliases(nl, link.index) if link.kind == "bridge" else []
    if ports:
        out.append("%d port(s) are attached to %s (%s)" % (
            len(ports), link.name, ", ".join(name for _, name, _ in ports[:5])))
    old_net = ipaddress.ip_network("%s/%d" % (ip, plen), strict=False)
    if conf["_ipam"] != "host-local":
        out.append("the IPAM plugin %r keeps no leases this plugin can read, so addresses in %s "
                   "may still be in use" % (conf["_ipam"], old_net))
        return out
    from cnilib.base import fsutil, paths
    data_dir = (conf.get("ipam") or {}).get("dataDir") or paths.HOST_LOCAL_DIR
    d = os.path.join(data_dir, network)
    try:
        held = fsutil.open_dirs(data_dir, [network], what="ipam.dataDir")    # never through a link
        if held is None:
            return out
        with held:
            names = held.names()
    except errors.CniError as exc:
        out.append("cannot read the leases in %s (%s)" % (d, exc.msg))
        return out
    except OSError as exc:
        out.append("cannot read the leases in %s (%s)" % (d, exc.strerror))
        return out
    own = {ipaddress.ip_interface(i).ip for i in own_ips}
    live = []
    for n in names:
        try:
            a = ipaddress.ip_address(n)
        except ValueError:
            continue
        if a in old_net and a not in own:
            live.append(n)
    if live:
        out.append("%d lease(s) in %s are live in %s (%s)" % (
            len(live), old_net, d, ", ".join(sorted(live)[:5])))
    return out


def enable_forwarding(nl, fam):
    """ip_forward (or IPv6 all.forwarding) on; read over netlink first, as
    a /proc open costs ~1 ms in a netns with a thousand links."""
    if forwarding(nl, netlink.AF_INET if fam == 4 else netlink.AF_INET6) == 1:
        return
    name = "net/ipv4/ip_forward" if fam == 4 else "net/ipv6/conf/all/forwarding"
    try:
        sysctl.write(name, "1")
    except errors.CniError as exc:
        raise errors.Internal("failed to enable forwarding: %s" % exc.msg, exc.details) from exc


def pin_mac(nl, br, log):
    """Pin a pre-existing bridge's MAC to its current value (the reference
    does this after adding the gateway address), so it stops following the
    lowest port MAC.  Bridges this plugin creates are pinned from birth."""
    try:
        link_set(nl, br.index, mac=br.mac, what="pin MAC of %s" % br.name)
    except netlink.NetlinkError as exc:
        log.warning("could not pin the MAC of %s: %s", br.name, exc.strerror)


def wait_port_up(nl, port):
    """Wait (bounded, ~3 s) for the host veth to reach oper state UP and
    its bridge port to forward; return it refreshed."""
    state = None
    for delay in PORT_WAIT:
        if delay:
            time.sleep(delay)
        link = link_get(nl, index=port.index)
        if link is None:
            raise errors.Internal("bridge port %s vanished" % port.name)
        state = link.operstate
        brport = brport_flags(link)
        if state == "UP" and (brport is None or brport["state"] == netlink.BR_STATE_FORWARDING):
            return link
    raise errors.Internal("bridge port in error state: %s" % (state or "unknown").lower(),
                          "host veth %s did not come up" % port.name)


def delete_container_link(cnl, netns_fd, network, container_id, ifname, netns_path, log):
    """DEL in the netns: delete the attachment's veth by its container end.
    Returns "deleted", "absent", or "not ours": left alone, with a warning,
    a link of that name that is no veth (bridge never made it), and a veth
    whose host end is tagged for another attachment: the sandbox's netns
    path was deleted and made again for a new pod (libcni's GC, or a late
    DEL, passes the stale attachment's cached path), and its eth0 is the
    new pod's."""
    link = link_get(cnl, ifname)
    if link is None:
        return "absent"
    if link.kind != "veth":
        log.warning("%s in %s is a %s link, not a veth bridge made: left alone", ifname, netns_path,
                    link.kind or "plain")
        return "not ours"
    with netlink.Netlink() as hnl:
        peer = veth_peer(hnl, link, netns_fd)
    if peer is not None and naming.veth_alias_other(peer.alias, network, container_id, ifname):
        log.warning("%s in %s belongs to another attachment (its host veth %s is tagged %r): left "
                    "alone; the netns path was reused by a new sandbox", ifname, netns_path, peer.name,
                    peer.alias)
        return "not ours"
    return "deleted" if link_del(cnl, index=link.index) else "absent"


def remove_leftover_veths(nl, conf, network, container_id, ifname, log):
    """DEL without a netns: delete host veths on the bridge whose alias names
    this attachment (the pair outlives a netns something still holds); on
    any bridge when the config names none it can use (``bridge`` None)."""
    if conf["bridge"] is None:
        ports = [(link.index, link.name, link.alias) for link in links(nl) if link.kind == "veth"]
    else:
        br = link_get(nl, conf["bridge"])
        if br is None:
            return 0
        ports = port_aliases(nl, br.index)
    n = 0
    for index, name, alias in ports:
        if naming.veth_alias_names(alias, network, container_id, ifname):
            if link_del(nl, index=index):
                log.info("deleted leftover veth %s (%s)", name, alias)
                n += 1
    return n


def gc_veths(nl, conf, network, valid, log):
    """GC: delete host veths on the bridge whose alias names an attachment of
    ``network`` that is not in ``valid`` ({(container ID, ifname)}).  They
    outlive their pod only when something still holds its netns."""
    br = link_get(nl, conf["bridge"])
    if br is None:
        return []
    gone = []
    for index, name, alias in port_aliases(nl, br.index):
        f = naming.parse_veth_alias(alias)
        # the short 'att=<hash>' form does not say its network: left alone
        if f is None or f.get("net") != network or (f.get("cid"), f.get("if")) in valid:
            continue
        if link_del(nl, index=index):
            log.info("gc: deleted veth %s (%s)", name, alias)
            gone.append(name)
    return gone


def _sysctl_quiet(name, value, only_if_different=True):
    try:
        sysctl.write(name, value, only_if_different)
    except errors.CniError:
        pass


# ------------------------------------------------------------ CHECK

def check_attachment(a, conf, res):
    """CHECK: the attachment in ``res`` (prevResult) still exists as ADD made it."""
    from cnilib.bridge import iface
    ifaces = res.interfaces
    idx = next((i for i, x in enumerate(ifaces) if x.get("name") == a.ifname and x.get("sandbox")),
               None)
    if idx is None:
        raise errors.Internal("prevResult has no interface %r in a sandbox" % a.ifname,
                              "found interfaces %s" % [x.get("name") for x in ifaces])
    want = ifaces[idx]
    if want["sandbox"] != a.netns:
        raise errors.Internal("Sandbox in prevResult %s doesn't match configured netns: %s"
                              % (want["sandbox"], a.netns))
    with netlink.Netlink() as hnl, netlink.Netlink.in_netns(a.netns_fd) as cnl:
        br = link_get(hnl, conf["bridge"])
        if br is None or br.kind != "bridge":
            raise errors.Internal("bridge %r not found" % conf["bridge"],
                                  "found %s" % ("nothing" if br is None else "a %s link" % br.kind))
        if br.promisc != conf["promiscMode"]:
            raise errors.Internal("bridge %s promiscuous mode is %s, the config says %s"
                                  % (br.name, br.promisc, conf["promiscMode"]))
        cont = link_get(cnl, a.ifname)
        if cont is None:
            raise errors.Internal("container interface %s not found in %s" % (a.ifname, a.netns))
        if cont.kind != "veth":
            raise errors.Internal("container interface %s is a %s, expected a veth"
                                  % (a.ifname, cont.kind))
        if want.get("mac") and want["mac"].lower() != (cont.mac or "").lower():
            raise errors.Internal("container interface %s has MAC %s, prevResult says %s"
                                  % (a.ifname, cont.mac, want["mac"]))
        peer = link_get(hnl, index=cont.peer_index) if cont.peer_index else None
        if peer is None or peer.master != br.index:
            raise errors.Internal("the host veth of %s is not on bridge %s"
                                  % (a.ifname, br.name),
                                  "found %s" % ("no peer in this netns" if peer is None else
                                                "%s with master index %d" % (peer.name, peer.master)))
        names = {x.get("name") for x in ifaces if not x.get("sandbox")}
        if peer.name not in names:
            raise errors.Internal("host veth %s of %s is not in prevResult" % (peer.name, a.ifname),
                                  "prevResult lists %s" % sorted(n for n in names if n))
        have = {_norm(x.cidr) for x in link_addrs(cnl, cont.index)}
        for ip in res.ips:
            if ip.get("interface") == idx and _norm(ip["address"]) not in have:
                raise errors.Internal(
                    "address %s from prevResult is missing on %s in %s"
                    % (ip["address"], a.ifname, a.netns),
                    "found %s" % (", ".join(sorted(have)) or "no address"))
        have_routes = [(r.cidr, r.gateway) for r in routes(cnl, table=None)]
        for r in res.routes:
            dst = iface.canonical_net(r["dst"])
            if not any(d == dst and (not r.get("gw") or _norm(r["gw"]) == _norm(g or ""))
                       for d, g in have_routes):
                raise errors.Internal("route %s%s from prevResult is missing in %s"
                                      % (dst, " via %s" % r["gw"] if r.get("gw") else "", a.netns))
    if conf["_l3"] and conf["ipMasq"]:
        from cnilib.firewall import masquerade
        missing = masquerade.present(a.name, a.container_id, a.ifname)
        if missing:
            raise errors.Internal("masquerade rules of %s/%s are missing" % (a.container_id, a.ifname),
                                  missing)


def _norm(addr):
    """Canonical text of an address with or without a prefix."""
    import ipaddress
    if not addr:
        return addr
    if "/" in addr:
        return str(ipaddress.ip_interface(addr))
    return str(ipaddress.ip_address(addr))
