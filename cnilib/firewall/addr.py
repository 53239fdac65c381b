"""IP addresses for rule text: parsed, checked and printed canonically.

Rules are text (nft scripts, iptables-restore lines), so every address that
goes into one is first parsed by the kernel's own parser (inet_pton) and
printed back by inet_ntop: nothing but a well-formed address can reach a
rule.  ``_socket`` costs 0.1 ms to import where ``ipaddress`` costs 3.5 ms
and ``socket`` 6 ms, which matters on the chained plugins' hot path.
"""

from _socket import AF_INET, AF_INET6, inet_ntop, inet_pton

_BITS = {4: 32, 6: 128}
_AF = {4: AF_INET, 6: AF_INET6}


def parse_ip(text):
    """(family, canonical text) of an address, or None when it is not one.

    IPv4-mapped IPv6 (::ffff:1.2.3.4) counts as IPv4, as Go's To4() does;
    zone ids (fe80::1%eth0) and prefixes are refused.
    """
    if not isinstance(text, str) or not text or len(text) > 45:
        return None
    try:
        return 4, inet_ntop(AF_INET, inet_pton(AF_INET, text))
    except (OSError, ValueError):
        pass
    try:
        raw = inet_pton(AF_INET6, text)
    except (OSError, ValueError):
        return None
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return 4, inet_ntop(AF_INET, raw[12:])
    return 6, inet_ntop(AF_INET6, raw)


def parse_cidr(text):
    """(family, address, prefixlen) of "addr/len", or None."""
    if not isinstance(text, str):
        return None
    host, sep, plen = text.partition("/")
    got = parse_ip(host)
    if got is None:
        return None
    fam, ip = got
    if not sep:
        return fam, ip, _BITS[fam]
    if not plen.isdigit() or len(plen) > 3:
        return None
    n = int(plen)
    if ":" in host and fam == 4:       # ::ffff:a.b.c.d/120 -> a.b.c.d/24
        n -= 96
    if not 0 <= n <= _BITS[fam]:
        return None
    return fam, ip, n


def network(fam, ip, prefixlen):
    """The network address of ip/prefixlen (10.1.2.3, 24 -> 10.1.2.0)."""
    bits = _BITS[fam]
    raw = inet_pton(_AF[fam], ip)
    value = int.from_bytes(raw, "big")
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)
    return inet_ntop(_AF[fam], (value & mask).to_bytes(bits // 8, "big"))


def is_unspecified(fam, ip):
    return ip == ("0.0.0.0" if fam == 4 else "::")


def host_prefix(fam):
    return _BITS[fam]
