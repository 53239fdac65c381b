"""portmap: hostPort -> containerPort forwarding for a chained attachment.

ADD installs the mappings of runtimeConfig.portMappings for the first IPv4
and first IPv6 address of the previous result, then turns on
route_localnet where localhost hostPorts need it and drops stale UDP
conntrack entries; the result is the previous one, unchanged.  No mappings:
nothing is touched and nothing is exec'd.  ADD and CHECK use the backend
portmap.choose picks from the config; DEL and GC run both.  The work is in
cnilib.firewall.portmap.
"""

from cnilib.base import errors, failpoint
from cnilib.cni import skel


def cmd_add(a):
    from cnilib.firewall import portmap
    cfg = portmap.parse(a, need_prev=True)
    if not cfg.mappings:
        return cfg.prev
    if not cfg.ctrs:
        a.log.warning("prevResult has no address on %s: no port mappings installed", a.ifname)
        return cfg.prev
    mapper = portmap.choose(cfg)
    iface = portmap.guard_iface(cfg)
    mapper.add(cfg, iface, a.log)
    try:
        failpoint.hit("portmap-after-rules")
        if iface:
            portmap.enable_route_localnet(iface)
    except BaseException:
        try:
            portmap.teardown(cfg.name, cfg.cid, cfg.ifname, cfg.mappings, a.log)
        except errors.CniError as exc:
            a.log.warning("undoing the failed ADD: %s", exc)
        raise
    portmap.flush_conntrack(list(cfg.ctrs), cfg.udp_ports(), a.log)
    return cfg.prev


def cmd_del(a):
    from cnilib.firewall import portmap
    try:
        mappings = portmap.parse(a, need_prev=False).mappings
    except errors.CONFIG_ERRORS as exc:      # prevResult included
        # the key alone is enough to clean up: a config that ADD would have
        # refused must not wedge the container's teardown
        a.log.warning("DEL with an invalid config (%s): removing by key alone", exc.msg)
        mappings = []
    portmap.teardown(a.name, a.container_id, a.ifname, mappings, a.log)


def cmd_check(a):
    from cnilib.firewall import portmap
    cfg = portmap.parse(a, need_prev=True)
    if not cfg.mappings or not cfg.ctrs:
        return
    portmap.choose(cfg).check(cfg)


def cmd_gc(a):
    from cnilib.firewall import portmap
    cfg = portmap.parse(a, need_prev=False)
    from cnilib.cni.args import valid_attachments
    valid = valid_attachments(a.conf)
    if valid is None:
        a.log.warning("GC without cni.dev/valid-attachments: nothing removed")
        return
    portmap.gc(cfg.name, valid, a.log)


PLUGIN = skel.Plugin("portmap", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     uses_netns=False)
