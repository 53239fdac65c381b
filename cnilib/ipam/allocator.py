"""Which address each range set hands out, and in what order.

The order is the reference's round robin: start just after the address in
last_reserved_ip.<set index> (when it still lies in the set), walk to the
end of that range, on through the set's other ranges, wrap around, and stop
where the walk began.  A released address is therefore not handed out
again until the pool wraps (stale ARP entries on neighbours age out
meanwhile).  The gateway is skipped, and so are the network and IPv4
broadcast addresses when an explicit rangeStart/rangeEnd includes them.

``allocate`` runs one ADD against a store (cnilib.ipam.store) with its lock
held for the whole ADD, so a concurrent DEL or GC never sees half of it,
and undoes what it wrote when any range set fails.  The decisions here
need no disk: a store in a temp dir is all the tests need.

Failpoints (PYCNI_FAILPOINTS) on the ADD path, in order:
hostlocal-before-lease-link (temp file written, lease not yet there),
hostlocal-after-lease-write, hostlocal-after-last-reserved; and
hostlocal-mid-release after each lease a DEL, GC or undo removes.
"""

from cnilib.base import addr, errors, failpoint
from cnilib.ipam.store import TORN


def candidates(rs, last):
    """Addresses (ints) of range set ``rs`` in allocation order, one full cycle.

    ``last`` is last_reserved_ip.<index> as (family, int), or None.
    """
    ranges = rs.ranges
    k = None
    if last is not None and last[0] == rs.family:
        for i, r in enumerate(ranges):
            if r.contains(last[1]):
                k = i
                break
    if k is None:
        k, first = 0, ranges[0].start
    elif last[1] == ranges[k].end:
        k = (k + 1) % len(ranges)
        first = ranges[k].start
    else:
        first = last[1] + 1
    skip = rs.excluded()
    for step in range(len(ranges)):
        r = ranges[(k + step) % len(ranges)]
        for n in range(first if step == 0 else r.start, r.end + 1):
            if n not in skip:
                yield n
    for n in range(ranges[k].start, first):
        if n not in skip:
            yield n


def assign_requested(cfg):
    """Requested addresses -> {set index: (family, int)}.  Anything that cannot
    be granted is refused here, before a single file is written."""
    per_set = {}
    for fam, n in cfg.requested:
        ip = addr.fmt(fam, n)
        hits = [i for i, rs in enumerate(cfg.ranges) if rs.range_for(fam, n) is not None]
        if not hits:
            raise errors.InvalidConfig(
                "failed to allocate all requested IPs: %s is not in any range set (%s)"
                % (ip, "; ".join("%d: %s" % (i, rs) for i, rs in enumerate(cfg.ranges))),
                "request an address inside a range, or add a range that holds it")
        i = hits[0]
        if i in per_set:
            raise errors.InvalidConfig(
                "failed to allocate all requested IPs: %s and %s both fall in range set %d (%s)"
                % (addr.fmt(*per_set[i]), ip, i, cfg.ranges[i]),
                "a container gets one address per range set")
        r = cfg.ranges[i].range_for(fam, n)
        if r.gateway == (fam, n):
            raise errors.InvalidConfig(
                "failed to allocate for range %d: requested ip %s is subnet's gateway" % (i, ip),
                "the gateway %s of %s is never handed out" % (ip, r.cidr()))
        if n in cfg.ranges[i].excluded():
            raise errors.InvalidConfig(
                "failed to allocate for range %d: requested ip %s is a network, broadcast or "
                "gateway address of range set %s" % (i, ip, cfg.ranges[i]),
                "request a host address of the subnet %s" % r.cidr())
        per_set[i] = (fam, n)
    return per_set


def _taken(leases):
    """{(family, int)} of the addresses held by real leases."""
    out = set()
    for name, owner in leases.items():
        if owner is not TORN:
            out.add(addr.parse(name))
    return out


def _owner_text(owner):
    if owner is TORN or not isinstance(owner, tuple):
        return "an entry that is not a lease file"
    cid, ifname = owner
    return "container %s interface %s" % (cid, ifname) if ifname else "container %s (legacy lease)" % cid


def exhausted(idx, rs, taken, store):
    """The error for a full range set: which range, how full, and what to do."""
    used = _in_use(rs, taken)
    return errors.Internal(
        "failed to allocate for range %d: no IP addresses available in range set: %s "
        "(%d of %d addresses in use)" % (idx, rs, used, rs.capacity()),
        "each lease is a file in %s named after its address and holding the container ID "
        "and interface; leases of containers that no longer exist are freed by DEL or GC "
        "(pycni gc), or widen the range" % store.dir)


def _in_use(rs, taken):
    return sum(1 for fam, n in taken if rs.range_for(fam, n) is not None)


def _warn_if_nearly_full(idx, rs, taken, store):
    cap = rs.capacity()
    if len(taken) * 10 < cap * 9:       # cannot be 90% full: skip counting per range
        return
    used = _in_use(rs, taken)
    if used * 10 >= cap * 9:
        store.log.warning("range set %d (%s) is %d%% full: %d of %d addresses in use",
                          idx, rs, used * 100 // cap, used, cap)


def usage(cfg, leases):
    """[(set index, range set, addresses in use, capacity)] for STATUS."""
    taken = _taken(leases)
    return [(idx, rs, _in_use(rs, taken), rs.capacity()) for idx, rs in enumerate(cfg.ranges)]


def _allocate_set(idx, rs, want, store, cid, ifname, taken, mine):
    if want is not None:
        ip = addr.fmt(*want)
        got = store.reserve(ip, cid, ifname)
        if got is not True:
            raise errors.Internal(
                "failed to allocate for range %d: requested IP address %s is not available in "
                "range set %s (held by %s)" % (idx, ip, rs, _owner_text(got)),
                "release it with DEL for its container, or request another address")
        return ip, rs.range_for(*want)
    for name in mine:
        got = addr.parse(name)
        if rs.range_for(*got) is not None:
            raise errors.Internal(
                "failed to allocate for range %d: %s has been allocated to %s, duplicate "
                "allocation is not allowed" % (idx, name, cid),
                "ADD ran twice for container %s interface %s without a DEL in between"
                % (cid, ifname))
    last = addr.parse(store.last_reserved(idx) or "")
    fam = rs.family
    for full_read in (False, True):
        if full_read:
            # the listing counts a torn lease (a writer killed before writing
            # it) as taken: before giving up, read every lease, so that
            # reserve() reclaims the torn ones
            taken.clear()
            taken.update(_taken(store.scan()))
        for n in candidates(rs, last):
            if (fam, n) in taken:
                continue
            ip = addr.fmt(fam, n)
            if store.reserve(ip, cid, ifname) is True:
                return ip, rs.range_for(fam, n)
            taken.add((fam, n))
    raise exhausted(idx, rs, taken, store)


def allocate(cfg, store, cid, ifname):
    """One address per range set for (cid, ifname): result ``ips`` entries."""
    wanted = assign_requested(cfg)
    store.create()
    out, made = [], []
    with store.lock():
        # when the index accounts for every lease, the names in use come
        # from the listing and this attachment's leases from its index
        # entry: no lease is read.  Otherwise (the Go plugin or an older
        # pycni wrote there, a crash between lease and index, a torn file)
        # every lease is read, as the reference does (see ipam.store).
        taken = store.names()
        if store.index_accounts_for(len(taken), len(cfg.ranges)):
            mine = store.indexed(cid, ifname)
        else:
            leases = store.scan()
            taken = _taken(leases)
            # as in the reference, an id-only (legacy) lease of cid counts as this attachment's
            mine = [n for n, o in leases.items() if o == (cid, ifname) or o == (cid, None)]
        try:
            for idx, rs in enumerate(cfg.ranges):
                ip, r = _allocate_set(idx, rs, wanted.get(idx), store, cid, ifname, taken, mine)
                made.append(ip)
                taken.add(addr.parse(ip))
                failpoint.hit("hostlocal-after-lease-write")
                store.set_last_reserved(idx, ip)
                failpoint.hit("hostlocal-after-last-reserved")
                store.log.debug("reserved %s in range set %d (%s) for %s/%s", ip, idx, rs, cid, ifname)
                out.append({"address": "%s/%d" % (ip, r.prefix), "gateway": r.gateway_str()})
                _warn_if_nearly_full(idx, rs, taken, store)
            store.index(cid, ifname, made)
            store.stamp()
        except BaseException:
            try:
                store.release(made)
            except errors.CniError as exc:
                store.log.warning("could not undo the leases of this ADD: %s", exc)
            raise
    return out


def check_result(cfg, held, result, cid, ifname):
    """CHECK with a prevResult: the leases ``held`` by (cid, ifname) are exactly
    the result's addresses that fall in this config's range sets."""
    shown = {addr.canonical(ip["address"].split("/", 1)[0]) for ip in result.ips}
    for name in held:
        if name not in shown:
            raise errors.Internal(
                "host-local: lease %s of container %s is not in prevResult" % (name, cid),
                "prevResult has %s" % (", ".join(sorted(s for s in shown if s)) or "no addresses"))
    for ip in shown:
        got = addr.parse(ip) if ip else None
        if got is None or ip in held:
            continue
        for idx, rs in enumerate(cfg.ranges):
            if rs.range_for(*got) is not None:
                raise errors.Internal(
                    "host-local: prevResult address %s (range set %d) is not reserved for "
                    "container %s interface %s" % (ip, idx, cid, ifname),
                    "the container holds %s" % ", ".join(sorted(held)))
