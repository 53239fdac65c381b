"""The bridge plugin's config and its pure rules (no kernel, no root).

``load_conf`` (the schema plus the rules that relate keys), ``container_mac``,
``veth_alias`` and ``calc_gateways``.  Kept apart from cnilib.bridge.links so that
a config error is reported without loading netlink, nftables or ipaddress.
"""

import os

from cnilib.base import errors
from cnilib.cni import args as _args
from cnilib.cni import validate
from cnilib.cni.types import ip_family
from cnilib.firewall import naming

# the keys of cnilib.cni.schema.bridge.BridgeConf: Go matches JSON keys without
# regard to case ("MTU", "isgateway"), so configs written that way keep working
KEYS = ("bridge", "isGateway", "isDefaultGateway", "forceAddress", "ipMasq", "ipMasqBackend",
        "mtu", "hairpinMode", "promiscMode", "vlan", "vlanTrunk", "preserveDefaultVlan",
        "enabledad", "macspoofchk", "disableContainerInterface", "portIsolation", "ipam", "dns")


# ------------------------------------------------------------ config

def load_conf(conf):
    """Validate a bridge network config; return it with defaults and derived keys:
    ``_l3`` (an IPAM type is set), ``_ipam`` (its type) and ``_trunk`` (sorted VLAN ids
    or None)."""
    c = validate.validate("bridge", _args.normalize_keys(conf, KEYS))
    name = c["bridge"]
    if not _bridge_name_ok(name):
        raise errors.InvalidConfig("bridge name %r is not a usable interface name" % name,
                                   "expected 1-15 of [A-Za-z0-9_.-], starting with a letter or digit")
    ipam = c.get("ipam") or {}
    c["_ipam"] = ipam.get("type") or ""
    c["_l3"] = bool(c["_ipam"])
    if c["_l3"]:
        from cnilib.cni import invoke
        invoke.check_type_name(c["_ipam"], "ipam.type")
    if c["isDefaultGateway"]:
        c["isGateway"] = True
    if c["hairpinMode"] and c["promiscMode"]:
        raise errors.InvalidConfig("cannot set hairpin mode and promiscuous mode at the same time",
                                   "hairpinMode and promiscMode are both true; choose one")
    if c["_l3"] and c["disableContainerInterface"]:
        raise errors.InvalidConfig("cannot use IPAM when DisableContainerInterface flag is set",
                                   "remove ipam.type (layer 2 only) or disableContainerInterface")
    if 0 < c["mtu"] < 68:
        raise errors.InvalidConfig("invalid mtu %d: expected 0 (kernel default) or 68-65535"
                                   % c["mtu"])
    c["_trunk"] = trunk_vlans(c["vlanTrunk"])
    if c["vlan"] and c["isGateway"] and c["_l3"]:
        name = "%s.%d" % (c["bridge"], c["vlan"])
        if len(name) > 15:
            raise errors.InvalidConfig(
                "bridge %r with vlan %d needs a gateway interface %r, longer than 15 bytes"
                % (c["bridge"], c["vlan"], name), "use a bridge name of at most %d characters"
                % (14 - len(str(c["vlan"]))))
    return c


def _bridge_name_ok(name):
    return bool(name) and name[0].isascii() and name[0].isalnum() and all(
        ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in name)


def teardown_conf(conf, log):
    """What bridge DEL needs from a config ADD refuses, since DEL of nothing
    must succeed whatever the config: every key that does not validate is
    left at its default (and logged), an unusable bridge name means the
    attachment's veth is looked for among all the node's veths (``bridge``
    None), an
    IPAM type that is not a plain plugin name means no IPAM to release,
    and the masquerade and macspoofchk teardowns always run (they find what
    is theirs by the attachment's key, and do nothing when nothing is)."""
    c, _ = validate.validate_for_del("bridge", _args.normalize_keys(conf, KEYS), log)
    if not _bridge_name_ok(c["bridge"]):
        log.warning("DEL: bridge name %r unusable, looking among all veths", c["bridge"])
        c["bridge"] = None
    ipam = c.get("ipam") or {}
    c["_ipam"] = ipam.get("type") or ""
    if c["_ipam"]:
        from cnilib.cni import invoke
        try:
            invoke.check_type_name(c["_ipam"], "ipam.type")
        except errors.InvalidConfig as exc:
            log.warning("DEL: no IPAM to release: %s", exc.msg)
            c["_ipam"] = ""
    c["_l3"] = bool(c["_ipam"])
    c["ipMasq"] = c["macspoofchk"] = True
    c["_trunk"] = None
    return c


def trunk_vlans(trunk):
    """vlanTrunk entries -> sorted unique VLAN ids (None when the key is absent)."""
    if trunk is None:
        return None
    vids = set()
    for i, t in enumerate(trunk):
        lo, hi, one = t.get("minID"), t.get("maxID"), t.get("id")
        if lo is not None and hi is None:
            raise errors.InvalidConfig("vlanTrunk[%d]: minID and maxID should be configured "
                                       "simultaneously, maxID is missing" % i)
        if hi is not None and lo is None:
            raise errors.InvalidConfig("vlanTrunk[%d]: minID and maxID should be configured "
                                       "simultaneously, minID is missing" % i)
        if lo is not None:
            if hi < lo:
                raise errors.InvalidConfig("vlanTrunk[%d]: minID is greater than maxID in trunk "
                                           "parameter (%d > %d)" % (i, lo, hi))
            vids.update(range(lo, hi + 1))
        if one is not None:
            vids.add(one)
    return sorted(vids)


def _mac_ok(mac):
    parts = mac.split(":")
    if len(parts) != 6 or any(len(p) != 2 for p in parts):
        return False
    try:
        first = int(parts[0], 16)
        [int(p, 16) for p in parts]
    except ValueError:
        return False
    return not first & 1 and mac != "00:00:00:00:00:00"


def container_mac(conf, cni_args):
    """The container interface's MAC: CNI_ARGS MAC < args.cni.mac < runtimeConfig.mac."""
    picked = None
    for source, value in (("CNI_ARGS MAC", cni_args.get("MAC")),
                          ("args.cni.mac", _args.cni_args_block(conf).get("mac")),
                          ("runtimeConfig.mac", _args.runtime_config(conf, "mac"))):
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not _mac_ok(value):
            err = errors.InvalidEnvironment if source == "CNI_ARGS MAC" else errors.InvalidConfig
            raise err("%s %r is not a valid MAC address" % (source, value),
                      "expected a unicast Ethernet address such as 0a:58:0a:f4:01:05")
        picked = value.lower()
    return picked


def veth_alias(network, container_id, ifname, cni_args):
    """IFLA_IFALIAS of a host veth: naming.veth_alias's
    'pycni net=<network> cid=<container id> if=<ifname>[ pod=<ns>/<name>]',
    the pod taken from K8S_POD_NAMESPACE/K8S_POD_NAME when the runtime sends
    them.  DEL without a netns, GC, flannel and ``pycni whois`` read it."""
    ns, pod = cni_args.get("K8S_POD_NAMESPACE"), cni_args.get("K8S_POD_NAME")
    return naming.veth_alias(network, container_id, ifname,
                             pod="%s/%s" % (ns or "-", pod or "-") if ns or pod else None)


def random_mac():
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02     # unicast, locally administered
    return ":".join("%02x" % x for x in b)


# ------------------------------------------------------------ gateways

def calc_gateways(result, conf):
    """The reference's calcGateways, on ``result`` in place.

    Every IP is indexed to the container interface (2); with isGateway an
    IP without a gateway gets the first address of its subnet; with
    isDefaultGateway a default route via that gateway is appended once per
    family unless the result already has one.  Unlike the reference, an
    IPAM default route *without* gw counts as present: the interface setup
    fills its gateway in, and a second identical route would fail the ADD.

    Returns {4: [(gw, prefixlen)], 6: [...]}: the addresses the bridge
    needs (empty without isGateway).
    """
    from cnilib.base import addr
    gws = {4: [], 6: []}
    default_found = {4: False, 6: False}
    for ip in result.ips:
        fam, n, prefix = addr.cidr(ip["address"])
        ip["interface"] = 2
        if not ip.get("gateway") and conf["isGateway"]:
            ip["gateway"] = addr.fmt(fam, (n & addr.mask(fam, prefix)) + 1)
        if conf["isDefaultGateway"] and not default_found[fam]:
            dflt = "0.0.0.0/0" if fam == 4 else "::/0"
            for r in result.routes:
                if ip_family(r["dst"]) == fam and _is_default(r["dst"]):
                    default_found[fam] = True
                    break
            if not default_found[fam]:
                route = {"dst": dflt}
                if ip.get("gateway"):
                    route["gw"] = ip["gateway"]
                result.routes.append(route)
                default_found[fam] = True
        if conf["isGateway"]:
            gw = addr.canonical(ip["gateway"])
            if gw is None:
                raise ValueError("invalid gateway address: %r" % (ip["gateway"],))
            g = (gw, prefix)
            if g not in gws[fam]:
                gws[fam].append(g)
    return gws


def _is_default(dst):
    addr, _, plen = dst.partition("/")
    return plen == "0"
