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
    """The previous design's nftables table of one attachment,
    pycni-<kind>-<net hash>-<attachment hash>: DEL and GC still remove it.

    The network hash lets GC pick a network's tables out of ``nft list
    tables`` without reading any state.
    """
    return "pycni-%s-%s-%s" % (kind, net_hash(network), attachment_hash(network, container_id, ifname))


def network_table_prefix(kind, network):
    return "pycni-%s-%s-" % (kind, net_hash(network))


# ---- the shared tables' per-attachment objects (cnilib.firewall.shared)
ELEMENT_COMMENT_MAX = 127   # nft's limit is 128 bytes with the terminating NUL


def element_key(network, container_id, ifname):
    """'<net hash>-<attachment hash>': what an element comment or a chain
    name carries, so GC can tell a network's objects and whose they are."""
    return "%s-%s" % (net_hash(network), attachment_hash(network, container_id, ifname))


def element_comment(network, container_id, ifname):
    """``pycni <key> net=<network> id=<container id> if=<ifname>``, cut to
    nft's 127 bytes: the key always fits, the names as far as they do."""
    text = "pycni %s net=%s id=%s if=%s" % (element_key(network, container_id, ifname),
                                           network, container_id, ifname)
    clean = "".join(c for c in text if c.isprintable() and c not in '"\\')
    return clean.encode()[:ELEMENT_COMMENT_MAX].decode("utf-8", "ignore")


def comment_key(comment):
    """The '<net hash>-<attachment hash>' an element comment carries, or None."""
    if not comment or not comment.startswith("pycni "):
        return None
    key = comment[6:].split(" ", 1)[0]
    nh, sep, ah = key.partition("-")
    if sep and len(nh) == 12 and len(ah) == 16 and all(c in "0123456789abcdef" for c in nh + ah):
        return key
    return None


def attachment_chain(prefix, network, container_id, ifname):
    """A per-attachment chain in a shared table: <prefix>-<net hash>-<attachment hash>."""
    return "%s-%s" % (prefix, element_key(network, container_id, ifname))


def chain_key(prefix, chain):
    """The key of a chain attachment_chain named, or None."""
    if not chain.startswith(prefix + "-"):
        return None
    return comment_key("pycni " + chain[len(prefix) + 1:])


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
