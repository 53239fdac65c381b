"""cnilib.kernel.netlink parses links, addresses, routes and neighbours from the
raw reply bytes (pyroute2's full decode costs ~0.2 ms a message, and
importing it ~25 ms); every field must equal what pyroute2's decode of the
same message says, on the kinds of objects the suite meets."""

import os
import struct

import pytest

from cnilib.kernel import netlink
from cnilib.kernel.brport import brport_flags, port_aliases
from cnilib.kernel.link import forwarding, link_get, link_index, link_set_arp_notify, link_txqlen, links
from cnilib.kernel.route import addrs, link_addrs, neighs, route_get, routes
from cnilib.kernel.vxlan import vxlan_info

pytestmark = pytest.mark.root


def _pyroute2_view(m):
    info = m.get_attr("IFLA_LINKINFO")
    return {
        "index": m["index"], "flags": m["flags"],
        "name": m.get_attr("IFLA_IFNAME"), "mac": m.get_attr("IFLA_ADDRESS"),
        "mtu": m.get_attr("IFLA_MTU"), "operstate": m.get_attr("IFLA_OPERSTATE"),
        "master": m.get_attr("IFLA_MASTER") or 0, "peer_index": m.get_attr("IFLA_LINK") or 0,
        "link_netnsid": m.get_attr("IFLA_LINK_NETNSID"), "alias": m.get_attr("IFLA_IFALIAS"),
        "kind": info.get_attr("IFLA_INFO_KIND") if info is not None else None,
    }


def _raw_view(link):
    return {k: getattr(link, k) for k in ("index", "flags", "name", "mac", "mtu", "operstate",
                                           "master", "peer_index", "link_netnsid", "alias", "kind")}


def _pyroute2_brport(m):
    info = m.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
    if data is None or info.get_attr("IFLA_INFO_SLAVE_KIND") != "bridge":
        return None
    return {"hairpin": bool(data.get_attr("IFLA_BRPORT_MODE")),
            "isolated": bool(data.get_attr("IFLA_BRPORT_ISOLATED")),
            "state": data.get_attr("IFLA_BRPORT_STATE")}


def test_raw_link_fields_equal_pyroute2_decode(host, ctr):
    h = host.run
    h("ip", "link", "add", "br-t", "type", "bridge")
    h("ip", "link", "set", "br-t", "up")
    h("ip", "link", "add", "vh-t", "type", "veth", "peer", "name", "eth0", "netns", ctr.name)
    h("ip", "link", "set", "vh-t", "master", "br-t", "mtu", "1450", "up")
    h("ip", "link", "set", "vh-t", "alias", "pycni net=n cid=c if=eth0 pod=ns/p é")
    h("ip", "link", "add", "vi-t", "type", "veth", "peer", "name", "vj-t")
    h("ip", "link", "set", "vi-t", "master", "br-t")
    h("ip", "link", "set", "vi-t", "type", "bridge_slave", "hairpin", "on", "isolated", "on")
    h("ip", "link", "add", "va-t", "type", "veth", "peer", "name", "vb-t")    # both ends here, down
    h("ip", "link", "add", "vx-t", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning")
    fd = os.open(host.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netlink.Netlink.in_netns(fd) as nl:
            got = links(nl)
            by_name = {link.name: link for link in got}
            assert {"lo", "br-t", "vh-t", "va-t", "vb-t", "vx-t"} <= set(by_name)
            for link in got:
                assert _raw_view(link) == _pyroute2_view(link.msg), link.name
                assert brport_flags(link) == _pyroute2_brport(link.msg), link.name
            vi = brport_flags(by_name["vi-t"])
            assert vi == {"hairpin": True, "isolated": True, "state": vi["state"]}
            assert brport_flags(by_name["vh-t"])["hairpin"] is False
            assert brport_flags(by_name["br-t"]) is None
            one = link_get(nl, "vh-t")
            assert _raw_view(one) == _raw_view(by_name["vh-t"])
            assert one.alias.endswith("é") and one.kind == "veth" and one.mtu == 1450
            assert one.link_netnsid is not None and one.master == by_name["br-t"].index
            assert link_get(nl, index=by_name["lo"].index).name == "lo"
            assert link_get(nl, "no-such-t") is None
            # the whois/doctor brief and the bridge's port listing read the same bytes
            briefs = {b.name: b for b in link_index(nl)}
            assert briefs["vh-t"].alias == one.alias and briefs["vh-t"].peer_index == one.peer_index
            assert sorted(port_aliases(nl, by_name["br-t"].index)) == sorted(
                [(one.index, "vh-t", one.alias), (by_name["vi-t"].index, "vi-t", None)])
    finally:
        os.close(fd)


def _decoded(nl, body, msg_type):
    """The same dump, decoded by pyroute2."""
    return nl.request(body, msg_type, netlink.NLM_F_DUMP, raw=False)


def test_raw_addresses_routes_neighbours_equal_pyroute2_decode(host):
    h = host.run
    h("ip", "link", "add", "br-a", "type", "bridge")
    h("ip", "link", "set", "br-a", "up")
    h("ip", "addr", "add", "10.77.0.1/24", "brd", "10.77.0.255", "dev", "br-a")
    h("ip", "addr", "add", "fd77::1/64", "dev", "br-a", "nodad")
    h("ip", "route", "add", "10.78.0.0/16", "via", "10.77.0.9", "dev", "br-a", "metric", "7")
    h("ip", "route", "add", "10.79.0.0/24", "dev", "br-a", "src", "10.77.0.1", "table", "1000")
    h("ip", "route", "add", "fd78::/48", "via", "fd77::9", "dev", "br-a")
    h("ip", "neigh", "replace", "10.77.0.9", "lladdr", "aa:bb:cc:00:00:09", "dev", "br-a", "nud", "permanent")
    h("ip", "link", "add", "vx-a", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning")
    h("bridge", "fdb", "append", "aa:bb:cc:00:00:0a", "dev", "vx-a", "dst", "192.0.2.10", "self", "permanent")
    fd = os.open(host.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netlink.Netlink.in_netns(fd) as nl:
            ours = addrs(nl)
            theirs = _decoded(nl, b"\0" * 8, netlink.RTM_GETADDR)
            assert len(ours) == len(theirs) >= 4
            for a, m in zip(ours, theirs):
                assert (a.family, a.prefixlen, a.index, a.scope, a.flags, a.address, a.label) == (
                    m["family"], m["prefixlen"], m["index"], m["scope"],
                    m.get_attr("IFA_FLAGS") or m["flags"],
                    m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS"), m.get_attr("IFA_LABEL"))
            br = link_get(nl, "br-a").index
            assert sorted(a.cidr for a in link_addrs(nl, br) if a.scope == 0) == \
                ["10.77.0.1/24", "fd77::1/64"]
            ours = routes(nl, table=None)
            theirs = _decoded(nl, b"\0" * 12, netlink.RTM_GETROUTE)
            assert len(ours) == len(theirs) >= 5
            for r, m in zip(ours, theirs):
                assert (r.family, r.dst_len, r.dst, r.gateway, r.oif, r.table, r.priority, r.scope,
                        r.proto, r.type, r.flags, r.prefsrc) == (
                    m["family"], m["dst_len"], m.get_attr("RTA_DST"), m.get_attr("RTA_GATEWAY"),
                    m.get_attr("RTA_OIF") or 0, m.get_attr("RTA_TABLE") or m["table"],
                    m.get_attr("RTA_PRIORITY") or 0, m["scope"], m["proto"], m["type"], m["flags"],
                    m.get_attr("RTA_PREFSRC"))
            got = {r.cidr: r for r in routes(nl, table=1000)}
            assert got["10.79.0.0/24"].prefsrc == "10.77.0.1"
            assert route_get(nl, "10.78.1.1").gateway == "10.77.0.9"
            for fam in (netlink.AF_UNSPEC, netlink.AF_BRIDGE):
                ours = neighs(nl, family=fam)
                theirs = _decoded(nl, struct.pack("=B11x", fam), netlink.RTM_GETNEIGH)
                assert len(ours) == len(theirs) >= 1
                for n, m in zip(ours, theirs):
                    assert (n.family, n.index, n.state, n.flags, n.dst, n.lladdr) == (
                        m["family"], m["ifindex"], m["state"], m["flags"], m.get_attr("NDA_DST"),
                        m.get_attr("NDA_LLADDR"))
            assert any(n.lladdr == "aa:bb:cc:00:00:0a" and n.dst == "192.0.2.10"
                       for n in neighs(nl, family=netlink.AF_BRIDGE))
            # sysctls read from the link message and RTM_GETNETCONF, as /proc says
            h("sysctl", "-qw", "net.ipv6.conf.br-a.accept_ra=2", "net.ipv6.conf.br-a.accept_dad=0",
              "net.ipv4.ip_forward=1")
            br_link = link_get(nl, "br-a")
            for key, idx in (("accept_ra", netlink.DEVCONF_ACCEPT_RA),
                             ("disable_ipv6", netlink.DEVCONF_DISABLE_IPV6),
                             ("accept_dad", netlink.DEVCONF_ACCEPT_DAD)):
                want = h("sysctl", "-n", "net.ipv6.conf.br-a." + key).stdout.strip()
                assert br_link.devconf6(idx) == int(want), key
            assert forwarding(nl, netlink.AF_INET) == 1
            assert forwarding(nl, netlink.AF_INET6) == int(
                h("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip())
            link_set_arp_notify(nl, br, True)
            assert h("sysctl", "-n", "net.ipv4.conf.br-a.arp_notify").stdout.strip() == "1"
            link_set_arp_notify(nl, br, False)
            assert h("sysctl", "-n", "net.ipv4.conf.br-a.arp_notify").stdout.strip() == "0"
            vx = link_get(nl, "vx-a")
            assert vxlan_info(vx).vni == 1
            assert link_txqlen(vx) == vx.msg.get_attr("IFLA_TXQLEN")
    finally:
        os.close(fd)
