"""firewall: accept a container's forwarded traffic (CNI-FORWARD), keyed by attachment.

ADD needs the previous result (its addresses) and returns it unchanged; DEL
finds the attachment's rules by key, with or without a previous result.
ADD and CHECK use the backend forward.choose picks from the config; DEL and
GC run both.  The work is in cnilib.firewall.forward.
"""

from cnilib.base import errors, failpoint
from cnilib.cni import skel


def cmd_add(a):
    from cnilib.firewall import forward
    cfg = forward.parse(a, need_prev=True)
    if not cfg.ips:
        a.log.warning("prevResult has no address: no firewall rules installed")
        return cfg.prev
    forward.choose(cfg).add(cfg, a.log)
    try:
        failpoint.hit("firewall-after-rules")
    except BaseException:
        try:
            forward.teardown(cfg, a.log)
        except errors.CniError as exc:
            a.log.warning("undoing the failed ADD: %s", exc)
        raise
    return cfg.prev


def cmd_del(a):
    from cnilib.firewall import forward
    try:
        cfg = forward.parse(a, need_prev=False)
    except errors.CONFIG_ERRORS as exc:      # prevResult included
        # the key alone is enough to clean up
        a.log.warning("DEL with an invalid config (%s): removing by key alone", exc.msg)
        cfg = forward.bare(a)
    forward.teardown(cfg, a.log)


def cmd_check(a):
    from cnilib.firewall import forward
    cfg = forward.parse(a, need_prev=True)
    if not cfg.ips:
        return
    forward.choose(cfg).check(cfg)


def cmd_gc(a):
    from cnilib.cni.args import valid_attachments
    from cnilib.firewall import forward
    cfg = forward.parse(a, need_prev=False)
    valid = valid_attachments(a.conf)
    if valid is None:
        a.log.warning("GC without cni.dev/valid-attachments: nothing removed")
        return
    forward.gc(cfg.name, valid, a.log)


PLUGIN = skel.Plugin("firewall", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     uses_netns=False)
