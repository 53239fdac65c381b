"""cnilib.netlink reads links from the raw RTM_NEWLINK bytes (pyroute2's
full decode costs ~0.2 ms a link); every field must equal what pyroute2's
decode of the same message says, on the kinds of links the suite meets."""

import os

import pytest

from cnilib import netlink

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
            got = netlink.links(nl)
            by_name = {l.name: l for l in got}
            assert {"lo", "br-t", "vh-t", "va-t", "vb-t", "vx-t"} <= set(by_name)
            for link in got:
                assert _raw_view(link) == _pyroute2_view(link.msg), link.name
                assert netlink.brport_flags(link) == _pyroute2_brport(link.msg), link.name
            assert netlink.brport_flags(by_name["vi-t"]) == {"hairpin": True, "isolated": True,
                                                             "state": netlink.brport_flags(by_name["vi-t"])["state"]}
            assert netlink.brport_flags(by_name["vh-t"])["hairpin"] is False
            assert netlink.brport_flags(by_name["br-t"]) is None
            one = netlink.link_get(nl, "vh-t")
            assert _raw_view(one) == _raw_view(by_name["vh-t"])
            assert one.alias.endswith("é") and one.kind == "veth" and one.mtu == 1450
            assert one.link_netnsid is not None and one.master == by_name["br-t"].index
            assert netlink.link_get(nl, index=by_name["lo"].index).name == "lo"
            assert netlink.link_get(nl, "no-such-t") is None
            # the whois/doctor brief and the bridge's port listing read the same bytes
            briefs = {b.name: b for b in netlink.link_index(nl)}
            assert briefs["vh-t"].alias == one.alias and briefs["vh-t"].peer_index == one.peer_index
            assert sorted(netlink.port_aliases(nl, by_name["br-t"].index)) == sorted(
                [(one.index, "vh-t", one.alias), (by_name["vi-t"].index, "vi-t", None)])
    finally:
        os.close(fd)
