"""Names of everything the suite puts in nftables and iptables.

Names come from hashes of the attachment key (network name, container ID,
ifname), never from the raw strings, so no input can inject into a rule or
collide with another attachment.  The reference plugins' iptables names are
reproduced exactly (their test vectors are in tests/unit/test_naming.py), so
rules the Go plugins made are found and removed.
"""

try:                    # the builtin module: 0.03 ms to import; hashlib loads OpenSSL (2.4 ms)
    from _sha512 import sha512
except ImportError:     # pragma: no cover - interpreters built without it
    from hashlib import sha512


def sha512_hex(s):
    return sha512(s.encode("utf-8")).hexdigest()


# ---- reference (Go) names: pkg/utils/utils.go
def go_chain(name, container_id, prefix="CNI-"):
    """FormatChainName / MustFormatChainNameWithPrefix: prefix + sha512(name+id), 28 chars."""
    return (prefix + sha512_hex(name + container_id))[:28]


def go_comment(name, container_id):
    """FormatComment: name: "<name>" id: "<id>" (Go %q of validated names)."""
    return 'name: "%s" id: "%s"' % (name, container_id)


def go_nft_masq_key(name, container_id, ifname):
    """The reference nftables ipmasq key: H16(net) + "-" + H16(ifname:cid)."""
    return sha512_hex(name)[:16] + "-" + sha512_hex(ifname + ":" + container_id)[:16]


# ---- the suite's own names
def net_hash(network):
    return sha512_hex("pycni-net\0" + network)[:12]


def attachment_hash(network, container_id, ifname):
    return sha512_hex("pycni-att\0%s\0%s\0%s" % (network, container_id, ifname))[:16]


def attachment_table(kind, network, container_id, ifname):
    """nftables table of one attachment: pycni-<kind>-<net hash>-<attachment hash>.

    The network hash lets GC pick a network's tables out of ``nft list
    tables`` without reading any state.
    """
    return "pycni-%s-%s-%s" % (kind, net_hash(network), attachment_hash(network, container_id, ifname))


def network_table_prefix(kind, network):
    return "pycni-%s-%s-" % (kind, net_hash(network))


def attachment_comment(kind, network, container_id, ifname):
    """Human-readable tag put on tables and rules (inputs are validated names)."""
    return "pycni %s net=%s id=%s if=%s" % (kind, network, container_id, ifname)


# ---- host veth ifalias: how an operator (and pycni whois/doctor, flannel's
# DEL fallback) maps a veth on the node to its attachment
IFALIAS_MAX = 255


def veth_alias(network, container_id, ifname, pod=None):
    """``pycni net=<network> cid=<container id> if=<ifname>[ pod=<ns>/<name>]``.

    ``pod`` comes from K8S_POD_NAMESPACE/K8S_POD_NAME and is sanitised here;
    the other fields are names skel already validated.
    """
    base = "pycni net=%s cid=%s if=%s" % (network, container_id, ifname)
    if pod:
        clean = "".join(c if (c.isalnum() or c in "-_./") else "_" for c in pod)[:100]
        if len(base) + len(clean) + 5 <= IFALIAS_MAX:
            base += " pod=" + clean
    if len(base) > IFALIAS_MAX:
        base = "pycni att=%s if=%s" % (attachment_hash(network, container_id, ifname), ifname)
    return base


def parse_veth_alias(alias):
    """{net, cid, if, pod?} from an alias veth_alias made, else None."""
    if not alias or not alias.startswith("pycni "):
        return None
    out = {}
    for tok in alias.split()[1:]:
        k, sep, v = tok.partition("=")
        if sep:
            out[k] = v
    return out if ("cid" in out or "att" in out) else None


def veth_alias_names(alias, network, container_id, ifname):
    """True when ``alias`` (either form veth_alias writes) names this attachment."""
    f = parse_veth_alias(alias)
    if f is None or f.get("if") != ifname:
        return False
    if "att" in f:
        return f["att"] == attachment_hash(network, container_id, ifname)
    return f.get("cid") == container_id and f.get("net") == network
