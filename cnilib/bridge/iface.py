"""Apply an IPAM result to an interface in a container: the reference's
``ipam.ConfigureIface``, step by step, over one netlink socket.

1. sysctls first: the bridge's (arp_notify=1, accept_dad=0, or 1 with
   enhanced_dad=1 when ``dad``) and, when the result has IPv6,
   disable_ipv6=0 on lo and the interface plus keep_addr_on_down=1 and
   ndisc_notify=1.  arp_notify goes over netlink, accept_dad and
   disable_ipv6 are read from the link message and written only when they
   differ; the rest through /proc in one setns round trip (the first
   /proc open in a new netns costs ~1 ms on a host with a thousand);
2. every address whose ``interface`` index names this interface, added
   while the link is still down, so that bringing it up announces them
   (arp_notify makes the kernel send a gratuitous ARP on NETDEV_UP);
3. link up;
4. IPv6: wait, bounded, until no address is tentative (DAD), failing on
   DADFAILED;
5. routes; one without ``gw`` gets the gateway of the first IP of its
   family.  A route that is already there (EEXIST) is the state asked
   for, not an error: that is how the reference trips on a result that
   lists the same route twice (IPAM ``0.0.0.0/0`` without gw next to
   isDefaultGateway's own default route).

Errors name the interface, the object and the kernel's reason.
"""

import time

from cnilib.base import errors
from cnilib.cni.types import ip_family
from cnilib.kernel import netlink, netns, sysctl
from cnilib.kernel.link import link_get, link_set, link_set_arp_notify
from cnilib.kernel.route import addr_add, link_addrs, route_add

SETTLE_TIMEOUT = 5.0


def first_gateways(ips):
    """{4: gw, 6: gw}: the first gateway of each family among ``ips``."""
    out = {4: None, 6: None}
    for ip in ips:
        gw = ip.get("gateway")
        if gw and out[ip_family(gw)] is None:
            out[ip_family(gw)] = gw
    return out


def ips_for(result, ifname):
    """The result's IPs that its ``interface`` index assigns to ``ifname``."""
    out = []
    for ip in result.ips:
        idx = ip.get("interface")
        if idx is None:
            continue
        if not 0 <= idx < len(result.interfaces):
            raise errors.Internal(
                "failed to add IP addr %s to %r: invalid interface index %d"
                % (ip["address"], ifname, idx),
                "the result lists %d interfaces" % len(result.interfaces))
        if result.interfaces[idx].get("name") == ifname:
            out.append(ip)
    return out


def canonical_net(cidr):
    """'10.1.2.3/16' -> '10.1.0.0/16' (the kernel refuses host bits in a route dst)."""
    from cnilib.base import addr
    return addr.network(cidr)


def configure(nl, netns_fd, link, result, dad=False):
    """Configure ``link`` (a kernel.link.Link read through ``nl``, the socket in
    the container netns ``netns_fd``) from ``result``; see the module doc."""
    ifname = link.name
    mine = ips_for(result, ifname)
    has_v6 = any(ip_family(ip["address"]) == 6 for ip in mine)
    conf6 = "net/ipv6/conf/%s/" % ifname
    todo = []
    if link.devconf6(netlink.DEVCONF_ACCEPT_DAD) != (1 if dad else 0):
        todo.append((conf6 + "accept_dad", "1" if dad else "0"))
    if dad:
        todo.append((conf6 + "enhanced_dad", "1"))
    try:
        link_set_arp_notify(nl, link.index, True)
    except netlink.NetlinkError:
        todo.append(("net/ipv4/conf/%s/arp_notify" % ifname, "1"))
    if has_v6:
        todo.append(("net/ipv6/conf/lo/disable_ipv6", "0"))
        if link.devconf6(netlink.DEVCONF_DISABLE_IPV6) != 0:
            todo.append((conf6 + "disable_ipv6", "0"))
        todo += [(conf6 + "keep_addr_on_down", "1"), (conf6 + "ndisc_notify", "1")]
    if todo:
        with netns.Enter(netns_fd):
            for name, value in todo:
                _sysctl(name, value, required=name.endswith("disable_ipv6"))
    for ip in mine:
        addr, _, plen = ip["address"].partition("/")
        plen = int(plen)
        brd = None
        if ip_family(addr) == 4 and plen < 31:
            brd = broadcast(addr, plen)
        try:
            addr_add(nl, link.index, addr, plen, broadcast=brd)
        except netlink.NetlinkError as exc:
            raise errors.Internal("failed to add IP addr %s to %r: %s"
                                  % (ip["address"], ifname, exc.strerror)) from exc
    try:
        link_set(nl, link.index, up=True, what="set %s up" % ifname)
    except netlink.NetlinkError as exc:
        raise errors.Internal("failed to set %r UP: %s" % (ifname, exc.strerror)) from exc
    if has_v6:
        settle(nl, link, SETTLE_TIMEOUT)
    gws = first_gateways(result.ips)
    for r in result.routes:
        add_route(nl, link, r, gws)


def add_route(nl, link, r, gws):
    dst = canonical_net(r["dst"])
    gw = r.get("gw") or gws[ip_family(dst)]
    table = r.get("table")
    try:
        added = route_add(nl, dst, gateway=gw, oif=link.index,
                          table=table if table is not None else netlink.RT_TABLE_MAIN,
                          priority=r.get("priority") or 0, scope=r.get("scope"),
                          exist_ok=True)
    except netlink.NetlinkError as exc:
        raise errors.Internal(
            "failed to add route '%s via %s dev %s metric %d (Scope: %s, Table: %s)': %s"
            % (dst, gw or "-", link.name, r.get("priority") or 0, r.get("scope"),
               table, exc.strerror)) from exc
    return added


def settle(nl, link, timeout):
    """Wait until no IPv6 address of ``link`` is tentative; fail on DADFAILED.

    With accept_dad=0 (the bridge plugin's default) the first read is the
    last.  Polls every 5 ms at first, then every 50 ms."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        tentative = []
        for a in link_addrs(nl, link.index, netlink.AF_INET6):
            if a.flags & netlink.IFA_F_DADFAILED:
                raise errors.Internal(
                    "failed to settle addresses for %r: link %s has address %s in DADFAILED state"
                    % (link.name, link.name, a.cidr),
                    "another host on the segment uses %s (duplicate address detection failed)"
                    % a.address)
            if a.flags & netlink.IFA_F_TENTATIVE:
                tentative.append(a.cidr)
        if not tentative:
            return
        if time.monotonic() >= deadline:
            now = link_get(nl, index=link.index)
            if now is not None and now.operstate == "UP":
                raise errors.Internal(
                    "failed to settle addresses for %r: link %s still has tentative addresses "
                    "%s after %.0f s" % (link.name, link.name, ", ".join(tentative), timeout),
                    "IPv6 duplicate address detection did not finish; set enabledad false "
                    "to skip it in the container")
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def broadcast(addr, plen):
    """The IPv4 broadcast address of addr/plen (what ``ip addr add ... brd +`` sets)."""
    parts = [int(x) for x in addr.split(".")]
    n = (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]
    n |= (1 << (32 - plen)) - 1
    return "%d.%d.%d.%d" % (n >> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255)


def _sysctl(name, value, required=False):
    """Write a container sysctl.  Like the reference, only the IPv6 enable
    is fatal: the others are tuning that a kernel without IPv6 lacks (and
    are written without reading them first: one /proc open, not two)."""
    try:
        sysctl.write(name, value, only_if_different=required)
    except errors.CniError as exc:
        if required:
            raise errors.Internal("failed to enable IPv6 for interface (%s=%s): %s"
                                  % (name, value, exc.msg),
                                  "IPv6 may be disabled on this kernel (ipv6.disable=1)") from exc



def announce(nl, link):
    """Make the kernel announce ``link``'s addresses again: a gratuitous ARP
    per IPv4 address (arp_notify=1) and an unsolicited neighbour
    advertisement per IPv6 one (ndisc_notify=1).

    The kernel already announces when the link comes up, but on a fresh veth
    those frames reach the bridge before it has moved the new port to
    forwarding (the carrier change is processed later), so they are lost.
    Setting the link's MAC to the MAC it has is a no-op for the device that
    still raises NETDEV_CHANGEADDR, which repeats the announcement: one
    netlink request, where a packet socket would cost an RCU grace period
    (~13 ms) when it is closed."""
    link_set(nl, link.index, mac=link.mac, what="announce the addresses of %s" % link.name)
