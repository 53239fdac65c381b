"""firewall: accept a container's forwarded traffic (CNI-FORWARD), keyed by attachment.

ADD needs the previous result (its addresses) and returns it unchanged; DEL
finds the attachment's rules by key, with or without a previous result.
The work is in cnilib.fwd.
"""

from cnilib import errors, failpoint, fwd, skel


def cmd_add(a):
    cfg = fwd.parse(a, need_prev=True)
    if not cfg.ips:
        a.log.warning("prevResult has no address: no firewall rules installed")
        return cfg.prev
    backend = fwd.choose(cfg)
    if backend == "nftables":
        fwd.nft_add(cfg, a.log)
    else:
        fwd.ipt_add(cfg, a.log)
    try:
        failpoint.hit("firewall-after-rules")
    except BaseException:
        try:
            fwd.teardown(cfg, a.log)
        except errors.CniError as exc:
            a.log.warning("undoing the failed ADD: %s", exc)
        raise
    return cfg.prev


def cmd_del(a):
    try:
        cfg = fwd.parse(a, need_prev=False)
    except errors.InvalidConfig as exc:
        # the key alone is enough to clean up
        a.log.warning("DEL with an invalid config (%s): removing by key alone", exc.msg)
        cfg = fwd.bare(a)
    fwd.teardown(cfg, a.log)


def cmd_check(a):
    cfg = fwd.parse(a, need_prev=True)
    if not cfg.ips:
        return
    if fwd.choose(cfg) == "nftables":
        fwd.nft_check(cfg)
    else:
        fwd.ipt_check(cfg)


def cmd_gc(a):
    from cnilib.args import valid_attachments
    cfg = fwd.parse(a, need_prev=False)
    valid = valid_attachments(a.conf)
    if valid is None:
        a.log.warning("GC without cni.dev/valid-attachments: nothing removed")
        return
    fwd.gc(cfg.name, valid, a.log)


PLUGIN = skel.Plugin("firewall", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     uses_netns=False)
