"""The VXLAN device of the flannel fabric, over cnilib.kernel.netlink.

What flanneld's vxlan backend asks of the kernel first: a VXLAN device
bound to the underlay (then, per peer, a neighbour, an fdb entry and a
route: cnilib.kernel.route and .brport).  The device is made and read
with pyroute2's ifinfmsg: once per node, never on a pod's path.
"""

from cnilib.kernel import netlink


class VxlanInfo:
    """The IFLA_INFO_DATA of a vxlan link: what decides if it can be reused."""

    __slots__ = ("vni", "local", "link", "port", "learning")

    def __init__(self, data):
        self.vni = data.get_attr("IFLA_VXLAN_ID")
        self.local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
        self.link = data.get_attr("IFLA_VXLAN_LINK") or 0
        self.port = data.get_attr("IFLA_VXLAN_PORT")
        self.learning = bool(data.get_attr("IFLA_VXLAN_LEARNING"))

    def __repr__(self):
        return "<vxlan id %s local %s dev %d dstport %s%s>" % (
            self.vni, self.local, self.link, self.port, "" if self.learning else " nolearning")


def vxlan_info(link):
    """VxlanInfo of ``link`` (a cnilib.kernel.link.Link), or None when it is
    not a vxlan device."""
    if link is None or link.kind != "vxlan":
        return None
    info = link.msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return VxlanInfo(data) if data is not None else None


def vxlan_add(nl, name, vni, local, underlay_index, port, mtu, mac, learning=False):
    """Create a vxlan device (down): ``ip link add NAME type vxlan id VNI local
    LOCAL dev UNDERLAY dstport PORT [no]learning`` with MTU and MAC set."""
    data = [("IFLA_VXLAN_ID", vni),
            ("IFLA_VXLAN_LOCAL6" if ":" in local else "IFLA_VXLAN_LOCAL", local),
            ("IFLA_VXLAN_LINK", underlay_index),
            ("IFLA_VXLAN_PORT", port),
            ("IFLA_VXLAN_LEARNING", 1 if learning else 0)]
    m = netlink.msgclass("ifinfmsg")()
    m["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", mac),
                  ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"),
                                               ("IFLA_INFO_DATA", {"attrs": data})]})]
    nl.request(m, netlink.RTM_NEWLINK, netlink.NLM_F_CREATE | netlink.NLM_F_EXCL,
               what="add vxlan link %s (id %d local %s dev %d)" % (name, vni, local, underlay_index))
