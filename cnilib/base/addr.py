"""IP addresses: one set of parsers, two spellings.

Every address is read into a (family, int) pair by ``parse`` (the kernel's
own inet_pton underneath), and printed in one of two ways:

  Go's      ``fmt``: how Go's net package prints it (net.IP.String()).  Lease
            files are named that way, so the names must match Go's byte for
            byte or the two host-local plugins would not see each other's
            leases.  IPv6 in RFC 5952 form, an IPv4-mapped IPv6 address
            (``::ffff:10.0.0.1``) as IPv4, as Go's To4() reads it.
  the rules' ``ntop``: inet_ntop's text, which is what nft and iptables print
            back; ``rule_ip``, ``rule_cidr`` and ``rule_network`` give rule text
            (nft scripts, iptables-restore lines) only addresses that parse.
            It differs from Go's for the deprecated IPv4-compatible form
            (``::1.2.3.4``, Go ``::102:304``).

This module exists instead of ``ipaddress`` because it costs ~0.1 ms to
import where ``ipaddress`` costs 3-4 ms, a quarter of host-local's whole
start-up budget (tests/unit/test_addr.py holds it to ``ipaddress``).
"""

from _socket import AF_INET, AF_INET6, inet_ntop, inet_pton

BITS = {4: 32, 6: 128}


def parse(s):
    """(4 or 6, int) for an address string, or None if it is not one."""
    if not isinstance(s, str) or not s or "%" in s or not s.isascii():
        return None
    try:
        if ":" in s:
            n = int.from_bytes(inet_pton(AF_INET6, s), "big")
            if n >> 32 == 0xFFFF:
                return 4, n & 0xFFFFFFFF
            return 6, n
        return 4, int.from_bytes(inet_pton(AF_INET, s), "big")
    except (OSError, ValueError):
        return None


def parse_cidr(s):
    """(family, int, prefix, mismatch) for ``ip/len``, or None if malformed.

    ``mismatch`` is True for an IPv4-mapped address written in IPv6 form:
    Go reads its IP as IPv4 but its mask as IPv6 and refuses the pair.
    """
    if not isinstance(s, str):
        return None
    ip, sep, plen = s.partition("/")
    if not sep or not plen.isascii() or not plen.isdigit():
        return None
    got = parse(ip)
    if got is None:
        return None
    written6 = ":" in ip
    prefix = int(plen)
    if prefix > (128 if written6 else 32):
        return None
    return got[0], got[1], prefix, written6 and got[0] == 4


def cidr(s):
    """(family, int, prefix) of 'ip/len' as Go reads it (an IPv4-mapped
    address is IPv4, its prefix counted in IPv4 bits); ValueError when it is
    not one.  What the bridge path uses instead of ``ipaddress``."""
    got = parse_cidr(s)
    if got is None or (got[3] and got[2] < 96):
        raise ValueError("invalid CIDR address: %r" % (s,))
    fam, n, prefix, mapped = got
    return fam, n, prefix - 96 if mapped else prefix


def network(s):
    """'10.1.2.3/16' -> '10.1.0.0/16'; ValueError when ``s`` is no CIDR."""
    fam, n, prefix = cidr(s)
    return "%s/%d" % (fmt(fam, n & mask(fam, prefix)), prefix)


def fmt(family, n):
    """The address as Go prints it."""
    if family == 4 or n >> 32 == 0xFFFF:
        n &= 0xFFFFFFFF
        return "%d.%d.%d.%d" % (n >> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255)
    groups = [(n >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    best, best_len, i = -1, 0, 0
    while i < 8:
        if groups[i] == 0:
            j = i
            while j < 8 and groups[j] == 0:
                j += 1
            if j - i > best_len:
                best, best_len = i, j - i
            i = j
        else:
            i += 1
    if best_len < 2:
        return ":".join("%x" % g for g in groups)
    head = ":".join("%x" % g for g in groups[:best])
    tail = ":".join("%x" % g for g in groups[best + best_len:])
    return head + "::" + tail


def canonical(s):
    """Go's spelling of an address string, or None."""
    got = parse(s)
    return None if got is None else fmt(*got)


def mask(family, prefix):
    bits = BITS[family]
    return ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)


# ---- rule text: inet_ntop's spelling

_AF = {4: AF_INET, 6: AF_INET6}


def ntop(family, n):
    """The address as inet_ntop prints it (and nft and iptables print it back)."""
    return inet_ntop(_AF[family], n.to_bytes(BITS[family] // 8, "big"))


def rule_ip(text):
    """(family, inet_ntop text) of an address, or None when it is not one.

    IPv4-mapped IPv6 (::ffff:1.2.3.4) counts as IPv4, as Go's To4() does;
    zone ids (fe80::1%eth0) and prefixes are refused.
    """
    got = parse(text)
    return None if got is None else (got[0], ntop(*got))


def rule_cidr(text):
    """(family, address text, prefixlen) of "addr/len", or of a bare address
    (its host prefix); None when malformed.  A mapped address written with
    an IPv6 prefix (::ffff:a.b.c.d/120) is IPv4 with that prefix less 96."""
    if not isinstance(text, str):
        return None
    host, sep, plen = text.partition("/")
    got = rule_ip(host)
    if got is None:
        return None
    fam, ip = got
    if not sep:
        return fam, ip, BITS[fam]
    if not (plen.isascii() and plen.isdigit()) or len(plen) > 3:
        return None
    n = int(plen)
    if ":" in host and fam == 4:
        n -= 96
    if not 0 <= n <= BITS[fam]:
        return None
    return fam, ip, n


def rule_network(family, ip, prefixlen):
    """The network address of ip/prefixlen as rule text (10.1.2.3, 24 -> 10.1.2.0)."""
    n = int.from_bytes(inet_pton(_AF[family], ip), "big")
    return ntop(family, n & mask(family, prefixlen))


def is_unspecified(family, ip):
    return ip == ("0.0.0.0" if family == 4 else "::")


def host_prefix(family):
    return BITS[family]
