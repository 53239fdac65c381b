"""The CNI result, held in the 1.1 model and converted at the edge.

Plugins build a ``Result`` and return it; skel converts it to the config's
cniVersion on output.  ``Result.parse`` reads a result of any version
(prevResult, a delegate's output, libcni's cache) into the 1.1 model.

Conversion follows libcni's converters (types/020, 040, 100):
  0.1/0.2 -> 1.x   ip4/ip6 become ips, their routes are concatenated
  0.3/0.4 -> 1.x   "version" dropped, interface indexes kept
  1.x -> 0.3/0.4   "version" recomputed from the address family,
                   interface mtu/socketPath/pciID dropped
  1.x -> 0.1/0.2   first IPv4 and first IPv6 only, routes sorted by the
                   family of their dst; no IP at all is an error
"""

from cnilib.base import errors
from cnilib.cni import version

_IFACE_KEYS_1X = ("name", "mac", "mtu", "sandbox", "socketPath", "pciID")
_IFACE_KEYS_04X = ("name", "mac", "sandbox")
_ROUTE_KEYS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
_DNS_KEYS = ("nameservers", "domain", "search", "options")


def ip_family(addr):
    """4 or 6 for an address with or without a prefix ('10.0.0.2/24')."""
    host = addr.split("/", 1)[0]
    if ":" not in host:
        return 4
    # IPv4-mapped IPv6 counts as IPv4, as Go's To4() does
    if host.lower().startswith("::ffff:") and "." in host:
        return 4
    return 6


def _pick(d, keys):
    out = {}
    for k in keys:
        v = d.get(k)
        if v is None or v == "" or v == [] or v == {}:
            continue
        out[k] = v
    return out


class Result:
    """A CNI result in the 1.1 model: lists of plain dicts.

    interfaces: {name, mac?, mtu?, sandbox?, socketPath?, pciID?}
    ips:        {address: "ip/prefix", gateway?, interface?}
    routes:     {dst, gw?, mtu?, advmss?, priority?, table?, scope?}
    dns:        {nameservers?, domain?, search?, options?}
    """

    __slots__ = ("interfaces", "ips", "routes", "dns")

    def __init__(self, interfaces=None, ips=None, routes=None, dns=None):
        self.interfaces = interfaces if interfaces is not None else []
        self.ips = ips if ips is not None else []
        self.routes = routes if routes is not None else []
        self.dns = dns if dns is not None else {}

    def copy(self):
        return Result([dict(i) for i in self.interfaces],
                      [dict(i) for i in self.ips],
                      [dict(r) for r in self.routes],
                      dict(self.dns))

    # -- reading ---------------------------------------------------------
    @classmethod
    def parse(cls, data, default_version="0.1.0"):
        """Read a result dict of any supported version.

        ``data`` must already have passed schema validation for its family
        (cnilib.cni.validate.result), so only the shape changes here.
        """
        ver = data.get("cniVersion") or default_version
        fam = version.family(ver)
        if fam == "02x":
            ips, routes = [], []
            for key in ("ip4", "ip6"):
                blk = data.get(key)
                if not blk:
                    continue
                ip = {"address": blk["ip"]}
                if blk.get("gateway"):
                    ip["gateway"] = blk["gateway"]
                ips.append(ip)
                for r in blk.get("routes") or ():
                    routes.append(_pick(r, ("dst", "gw")))
            return cls([], ips, routes, _pick(data.get("dns") or {}, _DNS_KEYS))
        ifaces = [_pick(i, _IFACE_KEYS_1X) for i in data.get("interfaces") or ()]
        ips = []
        for i in data.get("ips") or ():
            ip = {"address": i["address"]}
            if i.get("gateway"):
                ip["gateway"] = i["gateway"]
            idx = i.get("interface")
            if idx is not None and idx >= 0:
                ip["interface"] = idx
            ips.append(ip)
        routes = [_pick(r, _ROUTE_KEYS) | _explicit_zero(r) for r in data.get("routes") or ()]
        return cls(ifaces, ips, routes, _pick(data.get("dns") or {}, _DNS_KEYS))

    # -- writing ---------------------------------------------------------
    def to_dict(self, cni_version):
        fam = version.family(cni_version)
        out = {"cniVersion": cni_version}
        if fam == "02x":
            v4 = next((i for i in self.ips if ip_family(i["address"]) == 4), None)
            v6 = next((i for i in self.ips if ip_family(i["address"]) == 6), None)
            if v4 is None and v6 is None:
                raise errors.IncompatibleVersion(
                    "cannot convert the result to CNI version %s: it has no IP address"
                    % cni_version,
                    "results of 0.1.0/0.2.0 hold one ip4 and/or one ip6")
            for key, ip, fam_n in (("ip4", v4, 4), ("ip6", v6, 6)):
                if ip is None:
                    continue
                blk = {"ip": ip["address"]}
                if ip.get("gateway"):
                    blk["gateway"] = ip["gateway"]
                rts = [_pick(r, ("dst", "gw")) for r in self.routes
                       if ip_family(r["dst"]) == fam_n]
                if rts:
                    blk["routes"] = rts
                out[key] = blk
            dns = _pick(self.dns, _DNS_KEYS)
            if dns:
                out["dns"] = dns
            return out
        keys = _IFACE_KEYS_1X if fam == "1x" else _IFACE_KEYS_04X
        if self.interfaces:
            out["interfaces"] = [_pick(i, keys) for i in self.interfaces]
        if self.ips:
            ips = []
            for i in self.ips:
                ip = {}
                if fam == "04x":
                    ip["version"] = str(ip_family(i["address"]))
                ip["address"] = i["address"]
                if i.get("gateway"):
                    ip["gateway"] = i["gateway"]
                if i.get("interface") is not None:
                    ip["interface"] = i["interface"]
                ips.append(ip)
            out["ips"] = ips
        if self.routes:
            out["routes"] = [_pick(r, _ROUTE_KEYS) | _explicit_zero(r) for r in self.routes]
        dns = _pick(self.dns, _DNS_KEYS)
        if dns:
            out["dns"] = dns
        return out


def _explicit_zero(r):
    """table and scope are pointers in Go: an explicit 0 survives."""
    out = {}
    for k in ("table", "scope"):
        if r.get(k) == 0:
            out[k] = 0
    return out
