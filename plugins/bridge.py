"""bridge: a veth pair from the container into a Linux bridge (cni0).

ADD   IPAM -> bridge -> gateway address -> veth -> port flags -> container
      addresses and routes -> masquerade -> announce -> result; a failure
      undoes, in reverse, what was done (IPAM through a delegated DEL).  The
      masquerade transaction is started right after IPAM and collected once
      the container is set up: nft runs while netlink works.
DEL   rules and container link -> IPAM, succeeding in every partial state,
      with or without a netns, and whatever the config: with one ADD
      refuses, what the attachment's key finds is removed.  The masquerade elements are found by the
      attachment's record and removed over netlink just before the link is
      deleted, so that the kernel frees both in one RCU grace period; IPAM
      is released only after both.
CHECK the container interface, its addresses and routes, its host veth on
      the bridge, and the masquerade rules, against prevResult.
STATUS and GC are forwarded to the IPAM delegate; GC also removes the rules
and any host veth left of attachments that are no longer valid.

The work lives in cnilib.bridge.netconf (config, pure rules), cnilib.bridge.links
(host side), cnilib.bridge.iface, cnilib.firewall.masquerade and cnilib.firewall.macspoof; this module
only orders it.  Heavy imports happen inside
the handlers, after the config has been validated.
"""

from cnilib.base import errors, failpoint
from cnilib.cni import skel


def _conf(a):
    from cnilib.bridge import netconf
    return netconf.load_conf(a.conf)


def _dns(conf, ipam_dns):
    mine = conf.get("dns") or {}
    if any(mine.get(k) for k in ("nameservers", "domain", "search", "options")):
        return {k: v for k, v in mine.items() if k in ("nameservers", "domain", "search", "options")}
    return ipam_dns


class _Undo:
    """What a failing ADD must take back, in reverse order; each step's own
    failure is logged, never raised over the ADD's error."""

    def __init__(self, log):
        self.log, self.steps = log, []

    def push(self, what, fn):
        self.steps.append((what, fn))

    def run(self):
        while self.steps:
            what, fn = self.steps.pop()
            try:
                fn()
                self.log.info("undo after failed ADD: %s", what)
            except Exception as exc:  # noqa: BLE001 - keep undoing
                self.log.warning("undo after failed ADD: %s failed: %s", what, exc)


def cmd_add(a):
    c = _conf(a)
    if not c["_l3"] and a.version in ("0.1.0", "0.2.0"):
        # refused before anything exists: the result of a layer-2 attachment
        # has no IP, which a 0.1.0/0.2.0 result cannot express
        raise errors.IncompatibleVersion(
            "bridge without IPAM cannot answer cniVersion %s" % a.version,
            "results of 0.1.0 and 0.2.0 need an IP address; use cniVersion 0.3.0 or later")
    from cnilib.bridge import netconf
    mac = netconf.container_mac(a.conf, a.cni_args)
    alias = netconf.veth_alias(a.name, a.container_id, a.ifname, a.cni_args)
    undo = _Undo(a.log)
    try:
        return _add(a, c, mac, alias, undo)
    except BaseException:
        undo.run()
        raise


def _add(a, c, mac, alias, undo):
    from cnilib.bridge import iface, links, netconf
    from cnilib.cni import invoke
    from cnilib.cni.types import Result
    from cnilib.kernel import netlink
    from cnilib.kernel.link import link_get, link_set
    result = Result()
    with netlink.Netlink() as hnl, netlink.Netlink.in_netns(a.netns_fd) as cnl:
        # before IPAM: undoing a repeated ADD must not release the live one's lease
        links.check_free(cnl, a.ifname, a.netns)
        if c["_l3"]:
            # IPAM before the bridge: a missing IPAM plugin or a config it
            # refuses leaves no bridge behind (delegate finds it first)
            ipam = invoke.delegate("ADD", c["_ipam"], a.stdin, a)
            a.log.debug("IPAM %s gave %s", c["_ipam"], ", ".join(i["address"] for i in ipam.ips))
            undo.push("release the IPAM allocation",
                      lambda: invoke.delegate("DEL", c["_ipam"], a.stdin, a))
            failpoint.hit("bridge.add.after_ipam")
            if not ipam.ips:
                raise errors.Internal("IPAM plugin returned missing IP config",
                                      "%s returned no IP address" % c["_ipam"])
        br = links.ensure_bridge(hnl, c, a.log)
        gw_link = br
        if c["_l3"]:
            result.ips, result.routes, result.dns = ipam.ips, ipam.routes, ipam.dns
            gws = netconf.calc_gateways(result, c)
            if c["ipMasq"]:
                # the backend is chosen now; the elements go in once the container is set up
                from cnilib.firewall import masquerade
                masq = masquerade.start_setup(c["ipMasqBackend"], a.name, a.container_id, a.ifname,
                                          [i["address"] for i in result.ips], a.netns)
                undo.push("remove masquerade rules", lambda: masquerade.abort_setup(masq, a.log))
            if c["isGateway"]:
                if c["vlan"]:
                    gw_link = links.ensure_vlan_iface(hnl, br, c, a.log)
                added = links.ensure_gateway_addrs(hnl, gw_link, gws, c, a.name,
                                                    [i["address"] for i in result.ips], a.log)
                if added and gw_link is br:
                    links.pin_mac(hnl, br, a.log)
        host = links.setup_veth(hnl, cnl, a.netns_fd, a.ifname, br, c, mac, alias)
        undo.push("delete veth %s" % host.name, lambda: _delete_link(host.index))
        a.log.debug("veth %s on %s", host.name, br.name)
        failpoint.hit("bridge.add.after_veth")
        links.setup_port(hnl, host, c)
        cont = link_get(cnl, a.ifname)
        if cont is None:
            raise errors.Internal("container interface %s vanished after creation" % a.ifname)
        if c["macspoofchk"]:
            from cnilib.firewall import macspoof
            macspoof.setup(a.name, a.container_id, a.ifname, host.name, cont.mac, a.log, a.netns)
            undo.push("remove macspoofchk rules",
                      lambda: macspoof.teardown(a.name, a.container_id, a.ifname, a.log))
        result.interfaces = [{"name": br.name, "mac": br.mac},
                             {"name": host.name, "mac": host.mac},
                             {"name": a.ifname, "mac": cont.mac, "sandbox": a.netns}]
        if gw_link is not br:
            result.interfaces.append({"name": gw_link.name, "mac": gw_link.mac})
        if c["_l3"]:
            iface.configure(cnl, a.netns_fd, cont, result, dad=c["enabledad"])
        elif not c["disableContainerInterface"]:
            link_set(cnl, cont.index, up=True, what="set %s up" % a.ifname)
        failpoint.hit("bridge.add.after_addrs")
        if c["_l3"] and c["ipMasq"]:
            a.log.debug("masquerade via %s", masquerade.finish_setup(masq, a.log))
            failpoint.hit("bridge.add.after_rules")
        if not c["disableContainerInterface"]:
            host = links.wait_port_up(hnl, host)
            a.log.debug("%s forwards", host.name)
            if c["_l3"]:
                iface.announce(cnl, cont)
        else:
            host = link_get(hnl, index=host.index) or host
        br = link_get(hnl, index=br.index) or br
        result.interfaces[0]["mac"] = br.mac
        result.interfaces[1]["mac"] = host.mac
    result.dns = _dns(c, result.dns)
    undo.steps.clear()
    return result


def _delete_link(index):
    """Undo step: its own socket, as ADD's sockets are closed by then."""
    from cnilib.kernel import netlink
    from cnilib.kernel.link import link_del
    with netlink.Netlink() as nl:
        link_del(nl, index=index)


def cmd_del(a):
    from cnilib.bridge import netconf
    try:
        c = netconf.load_conf(a.conf)
    except errors.InvalidConfig as exc:
        # DEL of nothing succeeds whatever the config: remove by the attachment's key
        a.log.warning("DEL with a config ADD refuses (%s): removing what the attachment's key finds",
                      exc.msg)
        c = netconf.teardown_conf(a.conf, a.log)
    from cnilib.kernel import netlink
    masq = None
    if c["_l3"] and c["ipMasq"]:
        # first, so that the kernel frees the elements while the veth goes
        from cnilib.firewall import masquerade
        masq = masquerade.start_teardown(a.name, a.container_id, a.ifname, a.log)
        a.log.debug("masquerade elements removed")
    try:
        from cnilib.bridge import links
        done = None
        if a.netns_fd is not None:
            with netlink.Netlink.in_netns(a.netns_fd) as cnl:
                done = links.delete_container_link(cnl, a.netns_fd, a.name, a.container_id, a.ifname,
                                                   a.netns, a.log)
            a.log.debug("%s in %s: %s", a.ifname, a.netns, done)
        if done in (None, "not ours"):
            # no netns, or the link there is another's: this attachment's host
            # veth may still be on the bridge (its netns held elsewhere)
            with netlink.Netlink() as hnl:
                links.remove_leftover_veths(hnl, c, a.name, a.container_id, a.ifname, a.log)
    finally:
        # the rules go even when the link could not: they are keyed, not addressed
        rules_error = _rules_teardown(a, c, masq)
    a.log.debug("rules removed")
    if c["_l3"]:
        from cnilib.cni import invoke
        invoke.delegate("DEL", c["_ipam"], a.stdin, a)
    if rules_error is not None:
        raise rules_error
    return None


def _rules_teardown(a, c, masq):
    """Remove masquerade and macspoofchk rules; return the first error
    instead of raising it, so that IPAM is still released."""
    first = None
    if masq is not None:
        from cnilib.firewall import masquerade
        try:
            masquerade.finish_teardown(masq, a.log)
        except errors.CniError as exc:
            first = exc
    if c["macspoofchk"]:
        from cnilib.firewall import macspoof
        try:
            macspoof.teardown(a.name, a.container_id, a.ifname, a.log)
        except errors.CniError as exc:
            first = first or exc
    return first


def cmd_check(a):
    c = _conf(a)
    from cnilib.cni import invoke
    if c["_l3"]:
        invoke.delegate("CHECK", c["_ipam"], a.stdin, a)
    prev = a.conf.get("prevResult")
    if not prev:
        raise errors.InvalidConfig("Required prevResult missing",
                                   "CHECK needs the ADD result in prevResult")
    from cnilib.bridge import links
    res = invoke.parse_result(prev, a.version, "prevResult")
    links.check_attachment(a, c, res)
    return None


def cmd_status(a):
    c = _conf(a)
    if c["_l3"]:
        from cnilib.cni import invoke
        try:
            invoke.delegate("STATUS", c["_ipam"], a.stdin, a)
        except errors.CniError as exc:
            if exc.code in (50, 51):
                raise
            raise errors.NotAvailable("IPAM plugin %s is not ready: %s" % (c["_ipam"], exc.msg),
                                      exc.details) from exc
    return None


def cmd_gc(a):
    c = _conf(a)
    from cnilib.cni.args import valid_attachments
    valid = valid_attachments(a.conf)
    problems = []
    if c["_l3"]:
        from cnilib.cni import invoke
        try:
            invoke.delegate("GC", c["_ipam"], a.stdin, a)
        except errors.CniError as exc:
            problems.append(exc)
    if valid is None:
        a.log.warning("GC without cni.dev/valid-attachments: masquerade state left alone")
    else:
        from cnilib.bridge import links
        from cnilib.firewall import macspoof, masquerade
        from cnilib.kernel import netlink
        for fn in (masquerade.gc, macspoof.gc):
            try:
                fn(a.name, valid, a.log)
            except errors.CniError as exc:
                problems.append(exc)
        with netlink.Netlink() as nl:
            links.gc_veths(nl, c, a.name, valid, a.log)
    if problems:
        first = problems[0]
        raise errors.from_code(first.code, "; ".join(p.msg for p in problems), first.details)
    return None


PLUGIN = skel.Plugin("bridge", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     status=cmd_status, cni_args=("MAC", "IP"), makes_ifname=True)
