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


def _is_hex(s):
    return bool(s) and all(c in "0123456789abcdef" for c in s)


# ---- reference (Go) names: pkg/utils/utils.go
def go_chain(name, container_id, prefix="CNI-"):
    """FormatChainName / MustFormatChainNameWithPrefix: prefix + sha512(name+id), 28 chars."""
    return (prefix + sha512_hex(name + container_id))[:28]


def go_comment(name, container_id):
    """FormatComment: name: "<name>" id: "<id>" (Go %q of validated names)."""
    return 'name: "%s" id: "%s"' % (name, container_id)


GO_CHAIN_PREFIXES = ("CNI-DN-", "CNI-SN-", "CNI-")     # portmap's DNAT and SNAT, ipmasq's


def go_chain_prefix(chain):
    """Which of GO_CHAIN_PREFIXES a chain go_chain named has, or None."""
    for prefix in GO_CHAIN_PREFIXES:
        if len(chain) == 28 and chain.startswith(prefix) and _is_hex(chain[len(prefix):]):
            return prefix
    return None


def parse_go_comment(comment):
    """(name, container ID) of a comment go_comment wrote, also in portmap's
    ``dnat name: ...`` form (portmap_rules.entry_comment); else None."""
    if comment and comment.startswith("dnat "):
        comment = comment[5:]
    if not comment or not comment.startswith('name: "') or not comment.endswith('"'):
        return None
    name, sep, cid = comment[7:-1].partition('" id: "')
    if not sep or any(c in name + cid for c in '"\\'):
        return None
    return name, cid


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


def parse_attachment_table(name):
    """(kind, net hash, attachment hash) of a table attachment_table named, else None."""
    parts = name.split("-") if isinstance(name, str) else ()
    if (len(parts) == 4 and parts[0] == "pycni" and parts[1].isascii() and parts[1].isalpha()
            and parts[1].islower() and len(parts[2]) == 12 and len(parts[3]) == 16
            and _is_hex(parts[2] + parts[3])):
        return parts[1], parts[2], parts[3]
    return None


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


def comment_names(comment):
    """{net, id, if} as far as a comment element_comment wrote (or the
    previous design's table comment, ``pycni <kind> net=.. id=.. if=..``)
    still holds them after the cut to nft's length; {} for other text."""
    out = {}
    if not comment or not comment.startswith("pycni "):
        return out
    for tok in comment.split()[2:]:
        k, sep, v = tok.partition("=")
        if sep:
            out[k] = v
    return out


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
# IFALIASZ is 256 bytes and the attribute goes with its NUL (as pyroute2
# sends it): an alias of 255 bytes is refused with ERANGE, 254 is the most
IFALIAS_MAX = 254


def veth_alias(network, container_id, ifname, pod=None):
    """``pycni net=<network> cid=<container id> if=<ifname>[ pod=<ns>/<name>]``.

    ``pod`` comes from K8S_POD_NAMESPACE/K8S_POD_NAME and is sanitised here;
    the other fields are names skel already validated.  The kernel's limit
    is in *bytes* (IFALIAS_MAX): everything is measured in UTF-8 bytes, and
    the pod is cut on a character boundary to fit (a pod name in another
    script takes two to four bytes a character).
    """
    base = "pycni net=%s cid=%s if=%s" % (network, container_id, ifname)
    if _nbytes(base) > IFALIAS_MAX:
        return "pycni att=%s if=%s" % (attachment_hash(network, container_id, ifname), ifname)
    if pod:
        clean = "".join(c if (c.isalnum() or c in "-_./") else "_" for c in pod)[:100]
        room = IFALIAS_MAX - _nbytes(base) - len(" pod=")
        if room > 0:
            cut = clean.encode("utf-8")[:room].decode("utf-8", "ignore")
            if cut:
                base += " pod=" + cut
    return base


def _nbytes(text):
    return len(text.encode("utf-8", "surrogateescape"))


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


def veth_alias_other(alias, network, container_id, ifname):
    """True when ``alias`` is one of the suite's and names another attachment
    than this one: the host veth (and its container end) are not this
    attachment's to delete or change.  False for this attachment's alias
    and for no alias at all (the Go plugin's veths, an ADD killed before it
    tagged the veth), which keep the reference's behaviour."""
    return parse_veth_alias(alias) is not None and not veth_alias_names(alias, network, container_id, ifname)
