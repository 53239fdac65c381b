"""loopback: bring ``lo`` up in the container (ADD), down (DEL), verify (CHECK).

CNI_IFNAME is ignored, as in the reference: the plugin only ever touches
``lo``.  The skel has already refused a CNI_NETNS that is the plugin's own
netns, so a DEL can never take the host's ``lo`` down.
"""

from cnilib.base import errors
from cnilib.cni import skel, validate
from cnilib.cni.types import Result


def _loopback_addrs(nl, lo):
    """(first v4, first v6) of lo as CIDRs; refuse non-loopback addresses."""
    from cnilib.kernel import netlink
    from cnilib.kernel.route import addrs
    first = {4: None, 6: None}
    for a in addrs(nl, lo.index):
        fam = 6 if a.family == netlink.AF_INET6 else 4
        loop = a.address.startswith("127.") if fam == 4 else a.address == "::1"
        if not loop:
            raise errors.Internal(
                "loopback interface has a non-loopback address %s" % a.cidr,
                "expected only 127.0.0.0/8 and ::1 on lo; remove it with "
                "'ip addr del %s dev lo' in the container netns" % a.cidr)
        if first[fam] is None:
            first[fam] = a.cidr
    return first[4], first[6]


def cmd_add(a):
    validate.validate("loopback", a.conf)
    from cnilib.kernel import netlink
    from cnilib.kernel.link import link_get, link_set
    nl = netlink.Netlink.in_netns(a.netns_fd)
    with nl:
        lo = link_get(nl, "lo")
        if lo is None:
            raise errors.Internal("container netns %s has no lo interface" % a.netns)
        link_set(nl, lo.index, up=True, what="set lo up")
        v4, v6 = _loopback_addrs(nl, lo)
    prev = a.conf.get("prevResult")
    if prev:
        from cnilib.cni import invoke
        return invoke.parse_result(prev, a.version, "prevResult")
    ips = [{"address": c, "interface": 0} for c in (v4, v6) if c]
    return Result(interfaces=[{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": a.netns}],
                  ips=ips)


def cmd_del(a):
    # no config key changes what DEL does: it is not validated, so DEL of
    # nothing succeeds whatever the config
    if a.netns_fd is None:  # no CNI_NETNS, or the netns is gone: nothing to undo
        return None
    from cnilib.kernel import netlink
    from cnilib.kernel.link import link_get, link_set
    with netlink.Netlink.in_netns(a.netns_fd) as nl:
        lo = link_get(nl, "lo")
        if lo is not None:
            link_set(nl, lo.index, up=False, what="set lo down")
    return None


def cmd_check(a):
    validate.validate("loopback", a.conf)
    from cnilib.kernel import netlink
    from cnilib.kernel.link import link_get
    with netlink.Netlink.in_netns(a.netns_fd) as nl:
        lo = link_get(nl, "lo")
        if lo is None or not lo.up:
            raise errors.Internal("loopback interface is down in %s" % a.netns,
                                  "expected lo UP after ADD; found it %s"
                                  % ("missing" if lo is None else "down"))
    return None


PLUGIN = skel.Plugin("loopback", add=cmd_add, delete=cmd_del, check=cmd_check)
