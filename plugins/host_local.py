"""host-local: IPAM from files on this node, drop-in for the reference plugin.

ADD    one address per range set, round robin, leases in <dataDir>/<network>/
DEL    releases the leases of (container ID, ifname); succeeds when there are
       none, when the directory is gone, and when the ranges changed or no
       longer validate (it only needs dataDir and the network name)
CHECK  a lease of (container ID, ifname) exists, and with prevResult, its
       addresses are the ones reserved
GC     (1.1) releases every lease whose attachment is not in
       cni.dev/valid-attachments (or the older cni.dev/attachments)
STATUS (1.1) code 50 when the data dir cannot be written or a range set is full
The work lives in cnilib.ipam; this module only wires it to the verbs.  It
never touches a network namespace (uses_netns=False) and needs no netlink.
"""

from cnilib.base import errors
from cnilib.cni import skel
from cnilib.cni.types import Result


def _store(a, data_dir):
    from cnilib.ipam.store import Store
    return Store(data_dir, a.conf["name"], a.log)


def _load(a, cni_args=True):
    from cnilib.ipam import config
    return config.load(a.conf, a.cni_args if cni_args else None, a.version)


def cmd_add(a):
    from cnilib.ipam import allocator, config
    cfg = _load(a)
    dns = config.read_resolv_conf(cfg.resolv_conf) if cfg.resolv_conf else {}
    ips = allocator.allocate(cfg, _store(a, cfg.data_dir), a.container_id, a.ifname)
    return Result(ips=ips, routes=cfg.routes, dns=dns)


def _located_store(a, verb):
    """The store for DEL/GC, or None when the config names no usable dataDir
    (then nothing of ours can be there), or when a link was planted as the
    network's directory: no lease of ours can be behind a link the plugin
    never made, so nothing is released through it, and the log says why."""
    from cnilib.base import fsutil
    from cnilib.ipam import config
    try:
        data_dir, _ = config.locate(a.conf)
    except errors.InvalidConfig as exc:
        a.log.warning("%s: nothing to do, %s", verb, exc.msg)
        return None
    st = _store(a, data_dir)
    try:
        exists = st.exists()
    except fsutil.NotFollowed as exc:
        a.log.warning("%s: nothing released: %s", verb, exc.msg)
        return None
    if not exists:
        a.log.debug("%s: %s does not exist, nothing to release", verb, st.dir)
        return None
    return st


def cmd_del(a):
    st = _located_store(a, "DEL")
    if st is None:
        return None
    with st.lock():
        released = st.release_by_id(a.container_id, a.ifname)
    a.log.info("released %s", ", ".join(released) if released else "nothing (no lease held)")
    return None


def cmd_check(a):
    cfg = _load(a)
    st = _store(a, cfg.data_dir)
    held = []
    if st.exists():
        with st.lock():
            held = st.held_by(a.container_id, a.ifname)
    if not held:
        raise errors.Internal(
            "host-local: Failed to find address added by container %s" % a.container_id,
            "no lease in %s holds container %s interface %s" % (st.dir, a.container_id, a.ifname))
    prev = a.conf.get("prevResult")
    if prev:
        from cnilib.cni import invoke
        from cnilib.ipam import allocator
        result = invoke.parse_result(prev, a.version, "prevResult")
        allocator.check_result(cfg, held, result, a.container_id, a.ifname)
    return None


def cmd_gc(a):
    from cnilib.cni.args import valid_attachments
    valid = valid_attachments(a.conf)
    if valid is None:
        a.log.info("GC without cni.dev/valid-attachments: nothing released")
        return None
    st = _located_store(a, "GC")
    if st is None:
        return None
    with st.lock():
        released = st.gc(valid)
    a.log.info("gc: kept the leases of %d attachments, released %d", len(valid), len(released))
    return None


def cmd_status(a):
    from cnilib.ipam import allocator
    cfg = _load(a, cni_args=False)
    st = _store(a, cfg.data_dir)
    why = st.unwritable()
    if why:
        raise errors.NotAvailable("host-local cannot write leases: %s" % why,
                                  "ipam.dataDir is %s" % cfg.data_dir)
    from cnilib.base import fsutil
    try:
        leases = st.scan(sweep=False)
    except fsutil.NotFollowed as exc:
        raise errors.NotAvailable("host-local cannot write leases: %s" % exc.msg, exc.details) from exc
    for idx, rs, used, cap in allocator.usage(cfg, leases):
        if used >= cap:
            raise errors.NotAvailable(
                "host-local range set %d (%s) is full: %d of %d addresses in use"
                % (idx, rs, used, cap),
                "leases in %s; release those of gone containers with DEL or GC" % st.dir)
    return None


PLUGIN = skel.Plugin("host-local", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     status=cmd_status, cni_args=("IP",), uses_netns=False)
