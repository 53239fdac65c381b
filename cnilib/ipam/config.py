"""host-local's config: range sets, requested addresses, routes, where leases live.

``load`` follows the reference's LoadIPAMConfig step for step, so a config
the Go plugin accepts means the same thing here and one it refuses is
refused with the same words (code 7), plus a hint in ``details``:

  * the range sets, in this order (their index names last_reserved_ip.<N>):
    runtimeConfig.ipRanges..., the legacy ipam.subnet range, ipam.ranges...;
  * each range: subnet a network address of at most /30 (/126), rangeStart
    and rangeEnd inside it (defaults: subnet+1 and the broadcast-1 for IPv4
    or the subnet's last address for IPv6), gateway default subnet+1 and, unlike
    the reference since plugins#236, refused outside the subnet;
  * ranges in a set are one family and do not overlap; sets do not overlap;
    more than one set per family needs cniVersion >= 0.3.0;
  * requested addresses: CNI_ARGS IP=, then args.cni.ips, then
    runtimeConfig.ips, each "10.1.1.5" or "10.1.1.5/24" (the prefix is
    dropped), duplicates merged.
Keys inside ``ipam``, its ranges and ``runtimeConfig`` match in any case,
as Go's JSON decoder matches them.  Nothing here touches the disk except
``read_resolv_conf``.
"""

import os

from cnilib.base import addr, errors, paths
from cnilib.cni import validate, version
from cnilib.cni.args import normalize_keys

IPAM_KEYS = ("type", "subnet", "rangeStart", "rangeEnd", "gateway", "ranges", "routes",
             "dataDir", "resolvConf")
RANGE_KEYS = ("subnet", "rangeStart", "rangeEnd", "gateway")
RUNTIME_KEYS = ("ips", "ipRanges")
IP_HINT = "expected an IPv4 or IPv6 address, optionally with a prefix length (10.1.1.5 or 10.1.1.5/24)"


class Range:
    """One range of a range set; addresses are ints of ``family``."""

    __slots__ = ("family", "subnet", "prefix", "last", "start", "end", "gateway")

    def __init__(self, family, subnet, prefix, start, end, gateway):
        self.family, self.subnet, self.prefix = family, subnet, prefix
        self.last = subnet | ((1 << (addr.BITS[family] - prefix)) - 1)
        self.start, self.end = start, end
        self.gateway = gateway          # (family, int), inside the subnet

    def contains(self, n):
        return self.start <= n <= self.end

    def cidr(self):
        return "%s/%d" % (addr.fmt(self.family, self.subnet), self.prefix)

    def gateway_str(self):
        return addr.fmt(*self.gateway)

    def __str__(self):
        return "%s-%s" % (addr.fmt(self.family, self.start), addr.fmt(self.family, self.end))


class RangeSet:
    """Ranges of one family forming one pool; one address per set per ADD."""

    __slots__ = ("ranges", "family")

    def __init__(self, ranges):
        self.ranges = ranges
        self.family = ranges[0].family

    def range_for(self, family, n):
        if family != self.family:
            return None
        for r in self.ranges:
            if r.contains(n):
                return r
        return None

    def excluded(self):
        """Addresses of the set never handed out: every range's gateway, and the
        network and (IPv4) broadcast addresses when rangeStart/rangeEnd include them."""
        out = set()
        for r in self.ranges:
            out.add(r.subnet)
            if r.family == 4:
                out.add(r.last)
            if r.gateway[0] == r.family:
                out.add(r.gateway[1])
        return {n for n in out if self.range_for(self.family, n) is not None}

    def capacity(self):
        """How many addresses the set can hand out."""
        return sum(r.end - r.start + 1 for r in self.ranges) - len(self.excluded())

    def overlaps(self, other):
        return self.family == other.family and any(
            a.start <= b.end and b.start <= a.end for a in self.ranges for b in other.ranges)

    def __str__(self):
        return ",".join(str(r) for r in self.ranges)


class IPAMConfig:
    __slots__ = ("name", "version", "data_dir", "ranges", "routes", "resolv_conf", "requested")

    def __init__(self, name, cni_version, data_dir, ranges, routes, resolv_conf, requested):
        self.name, self.version, self.data_dir = name, cni_version, data_dir
        self.ranges = ranges            # [RangeSet], index = last_reserved_ip.<index>
        self.routes = routes            # [dict] for the result
        self.resolv_conf = resolv_conf  # path or None
        self.requested = requested      # [(family, int)] in the reference's order


class _Bad(Exception):
    """A range problem; becomes 'invalid range set <i>: <msg>' with ``hint`` in details."""

    def __init__(self, msg, hint=""):
        super().__init__(msg)
        self.hint = hint


def _canonical_keys(conf):
    """Shallow copy of ``conf`` with the keys host-local reads spelled canonically."""
    out = dict(conf)
    ipam = out.get("ipam")
    if isinstance(ipam, dict):
        ipam = normalize_keys(ipam, IPAM_KEYS)
        if isinstance(ipam.get("ranges"), list):
            ipam["ranges"] = _canonical_sets(ipam["ranges"])
        out["ipam"] = ipam
    rc = out.get("runtimeConfig")
    if isinstance(rc, dict):
        rc = normalize_keys(rc, RUNTIME_KEYS)
        if isinstance(rc.get("ipRanges"), list):
            rc["ipRanges"] = _canonical_sets(rc["ipRanges"])
        out["runtimeConfig"] = rc
    return out


def _canonical_sets(sets):
    return [[normalize_keys(r, RANGE_KEYS) if isinstance(r, dict) else r for r in s]
            if isinstance(s, list) else s for s in sets]


def _ip(s, what):
    got = addr.parse(s)
    if got is None:
        raise _Bad("%s: invalid IP address: %s" % (what, s), "expected an IPv4 or IPv6 address")
    return got


def parse_range(d):
    """A validated Range from its config dict (Go's Range.Canonicalize)."""
    subnet = d["subnet"]
    got = addr.parse_cidr(subnet)
    if got is None:
        raise _Bad("invalid CIDR address: %s" % subnet, "expected a subnet such as 10.22.0.0/16")
    fam, ip, prefix, mismatch = got
    if prefix > (128 if mismatch else addr.BITS[fam]) - 2:
        raise _Bad("Network %s/%d too small to allocate from" % (addr.fmt(fam, ip), prefix),
                   "expected /30 or shorter for IPv4, /126 or shorter for IPv6")
    if mismatch:
        raise _Bad("IPNet IP and Mask version mismatch",
                   "%s is an IPv4 address in IPv6 notation; write the subnet in IPv4 notation"
                   % subnet)
    net = ip & addr.mask(fam, prefix)
    if net != ip:
        raise _Bad("Network has host bits set. For a subnet mask of length %d the network "
                   "address is %s" % (prefix, addr.fmt(fam, net)),
                   "write the subnet as %s/%d" % (addr.fmt(fam, net), prefix))
    r = Range(fam, net, prefix, net + 1, 0, (fam, net + 1))
    r.end = r.last - 1 if fam == 4 else r.last
    gw, start, end = d.get("gateway"), d.get("rangeStart"), d.get("rangeEnd")
    if gw is not None:
        r.gateway = _ip(gw, "gateway")
        if r.gateway[0] != fam or not net <= r.gateway[1] <= r.last:
            # the reference dropped this check (plugins#236) for plugins whose
            # own IPAM hands out /32s; host-local hands out the subnet's
            # prefix, so such a gateway is never on-link and the default
            # route via it fails in the container after everything was made
            raise _Bad("gateway %s not in network %s" % (addr.fmt(*r.gateway), r.cidr()),
                       "the addresses handed out are /%d, so the gateway must be one of "
                       "them to be reachable; leave \"gateway\" out for %s"
                       % (prefix, addr.fmt(fam, net + 1)))
    start = _ip(start, "rangeStart") if start is not None else None
    end = _ip(end, "rangeEnd") if end is not None else None
    # as in Go, each bound is checked against the subnet and the other bound
    if start is not None:
        if start[0] != fam or not net <= start[1] <= r.last or (
                end is not None and end[0] == fam and start[1] > end[1]):
            raise _Bad("RangeStart %s not in network %s" % (addr.fmt(*start), r.cidr()),
                       "rangeStart must lie in the subnet and not after rangeEnd")
        r.start = start[1]
    if end is not None:
        if end[0] != fam or not r.start <= end[1] <= r.last:
            raise _Bad("RangeEnd %s not in network %s" % (addr.fmt(*end), r.cidr()),
                       "rangeEnd must lie in the subnet and not before rangeStart")
        r.end = end[1]
    return r


def parse_range_set(items):
    """A validated RangeSet (Go's RangeSet.Canonicalize)."""
    if not items:
        raise _Bad("empty range set", "a range set is a list of at least one {\"subnet\": ...}")
    ranges = [parse_range(d) for d in items]
    if any(r.family != ranges[0].family for r in ranges):
        raise _Bad("mixed address families",
                   "put IPv4 and IPv6 ranges in separate range sets (one address each)")
    for i, r1 in enumerate(ranges):
        for r2 in ranges[i + 1:]:
            if r1.start <= r2.end and r2.start <= r1.end:
                raise _Bad("subnets %s and %s overlap" % (r1, r2),
                           "the ranges of a set must not share addresses")
    return RangeSet(ranges)


def _range_sets(ipam, rc):
    raw = list((rc or {}).get("ipRanges") or ())
    if ipam.get("subnet") is not None:
        raw.append([{k: ipam.get(k) for k in RANGE_KEYS}])
    raw.extend(ipam.get("ranges") or ())
    if not raw:
        raise errors.InvalidConfig(
            "no IP ranges specified",
            "expected ipam.ranges (e.g. [[{\"subnet\": \"10.22.0.0/16\"}]]), ipam.subnet, "
            "or the ipRanges capability")
    sets = []
    for i, items in enumerate(raw):
        try:
            sets.append(parse_range_set(items))
        except _Bad as exc:
            raise errors.InvalidConfig(
                "invalid range set %d: %s" % (i, exc),
                "%s (range sets count runtimeConfig.ipRanges first, then the legacy "
                "ipam.subnet range, then ipam.ranges)" % exc.hint) from None
    return sets


def _check_sets(sets, cni_version):
    count = {4: 0, 6: 0}
    for s in sets:
        count[s.family] += 1
    if (count[4] > 1 or count[6] > 1) and version.family(cni_version) == "02x":
        raise errors.InvalidConfig(
            "CNI version %s does not support more than 1 address per family" % cni_version,
            "use one range set per family, or cniVersion 0.3.0 or later")
    for i, p1 in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if p1.overlaps(sets[j]):
                raise errors.InvalidConfig(
                    "range set %d overlaps with %d" % (i, j),
                    "range set %d is %s, range set %d is %s" % (i, p1, j, sets[j]))


def _requested(conf, cni_args):
    """Requested addresses in the reference's order, merged: [(family, int)]."""
    found = []
    ip = (cni_args or {}).get("IP")
    if ip:
        found.append(("CNI_ARGS IP", ip))
    block = conf.get("args")
    cni = block.get("cni") if isinstance(block, dict) else None
    for i, s in enumerate((cni or {}).get("ips") or ()):
        found.append(("args.cni.ips[%d]" % i, s))
    for i, s in enumerate((conf.get("runtimeConfig") or {}).get("ips") or ()):
        found.append(("runtimeConfig.ips[%d]" % i, s))
    out = []
    for where, s in found:
        got = addr.parse_cidr(s) if "/" in s else addr.parse(s)
        if got is None:
            raise errors.InvalidConfig("cannot understand ip: invalid IP address %s in %s" % (s, where),
                                       IP_HINT)
        ipn = (got[0], got[1])
        if ipn not in out:
            out.append(ipn)
    return out


def _routes(routes):
    out = []
    for i, r in enumerate(routes or ()):
        r = dict(r)
        got = addr.parse_cidr(r["dst"])
        if got is None:
            raise errors.InvalidConfig("ipam.routes[%d].dst: invalid CIDR address: %s" % (i, r["dst"]),
                                       "expected a destination such as 0.0.0.0/0 or 10.10.0.0/16")
        if not got[3]:
            r["dst"] = "%s/%d" % (addr.fmt(got[0], got[1]), got[2])
        if r.get("gw") is not None:
            gw = addr.canonical(r["gw"])
            if gw is None:
                raise errors.InvalidConfig("ipam.routes[%d].gw: invalid IP address: %s" % (i, r["gw"]),
                                           "expected the next hop's address, or no gw")
            r["gw"] = gw
        else:
            r.pop("gw", None)
        out.append({k: v for k, v in r.items() if v is not None})
    return out


def data_dir_of(ipam):
    """ipam.dataDir (default paths.HOST_LOCAL_DIR); refuse what could land anywhere."""
    d = ipam.get("dataDir") if isinstance(ipam, dict) else None
    if d is None or d == "":
        return paths.HOST_LOCAL_DIR
    if not isinstance(d, str) or not d.startswith("/") or "\x00" in d:
        raise errors.InvalidConfig(
            "ipam.dataDir %r is not an absolute path" % (d if isinstance(d, str) else type(d).__name__),
            "expected an absolute directory such as %s; a relative one would depend on the "
            "runtime's working directory" % paths.HOST_LOCAL_DIR)
    return d


def load(conf, cni_args=None, cni_version=None):
    """The whole validated config (ADD, CHECK, STATUS); InvalidConfig (7) on any problem."""
    conf = validate.validate("host-local", _canonical_keys(conf))
    ipam = conf.get("ipam")
    if ipam is None:
        raise errors.InvalidConfig("IPAM config missing 'ipam' key",
                                   "expected \"ipam\": {\"type\": \"host-local\", \"ranges\": [...]}")
    cni_version = cni_version or conf.get("cniVersion") or "0.1.0"
    requested = _requested(conf, cni_args)
    sets = _range_sets(ipam, conf.get("runtimeConfig"))
    _check_sets(sets, cni_version)
    routes = _routes(ipam.get("routes"))
    rc = ipam.get("resolvConf")
    if rc is not None and "\x00" in rc:
        raise errors.InvalidConfig("ipam.resolvConf contains a NUL byte", "expected a file path")
    return IPAMConfig(conf["name"], cni_version, data_dir_of(ipam), sets, routes, rc or None, requested)


def locate(conf):
    """(data dir, network name) for DEL and GC, which must work with a config
    whose ranges no longer validate: they only need to find the leases."""
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise errors.InvalidConfig("IPAM config missing 'ipam' key",
                                   "expected \"ipam\": {\"type\": \"host-local\", ...}")
    return data_dir_of(normalize_keys(ipam, IPAM_KEYS)), conf.get("name")


def read_resolv_conf(path):
    """ipam.resolvConf as a result's dns block (nameserver, domain, search, options)."""
    import stat
    try:
        # without blocking, and only a regular file: a FIFO there hung every ADD
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise errors.IOFailure("ipam.resolvConf %s is not a regular file" % path,
                                       "expected a resolv.conf-style file readable by root")
            data = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
    except OSError as exc:
        raise errors.IOFailure("cannot read ipam.resolvConf %s: %s" % (path, exc.strerror),
                               "expected a resolv.conf-style file readable by root") from exc
    dns = {}
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        key = fields[0]
        if key == "nameserver":
            dns.setdefault("nameservers", []).append(fields[1])
        elif key == "domain":
            dns["domain"] = fields[1]
        elif key in ("search", "options"):
            dns.setdefault(key, []).extend(fields[1:])
    return dns



