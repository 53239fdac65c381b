"""cnilib.base.addr, the suite's one address module, held to ``ipaddress``
(what it parses) and to inet_ntop (how rule text spells what it parsed).
Go's spelling (``fmt``) is held to ipaddress in test_ipam_config.py."""

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from cnilib.base import addr

V4 = st.integers(min_value=0, max_value=(1 << 32) - 1)
V6 = st.one_of(st.integers(min_value=0, max_value=(1 << 128) - 1),
               st.builds(lambda g, s: g << s, st.integers(0, 0xFFFF), st.sampled_from((0, 16, 32, 64, 112))))


def _text(version, n, exploded):
    a = ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n)
    return a.exploded if exploded else str(a)


@st.composite
def mangled(draw):
    """Address text as a person writes it, with up to two characters
    inserted, deleted or replaced: mostly valid, often nearly so."""
    version = draw(st.sampled_from((4, 6)))
    s = list(_text(version, draw(V4 if version == 4 else V6), draw(st.booleans())))
    for _ in range(draw(st.integers(0, 2))):
        op, k = draw(st.integers(0, 2)), draw(st.integers(0, len(s)))
        c = draw(st.sampled_from("0123456789abcdefABCDEF.:"))
        if op == 0 and s:
            del s[min(k, len(s) - 1)]
        elif op == 1:
            s.insert(k, c)
        elif s:
            s[min(k, len(s) - 1)] = c
    return "".join(s)


def _ip_address(text):
    """ipaddress.ip_address with CPython 3.9.5's rule on every interpreter:
    an IPv4 octet led by a zero is no address (Debian 11's 3.9.2 reads it
    as decimal, CVE-2021-29921; Go and inet_pton refuse it)."""
    quad = text.rpartition(":")[2].split(".")
    if len(quad) > 1 and any(len(o) > 1 and o[0] == "0" for o in quad):
        raise ValueError("%r has a zero-led octet" % text)
    return ipaddress.ip_address(text)


@given(mangled())
def test_parse_accepts_what_ipaddress_accepts(text):
    try:
        want = _ip_address(text)
    except ValueError:
        assert addr.parse(text) is None and addr.rule_ip(text) is None
        return
    mapped = want.version == 6 and want.ipv4_mapped is not None
    ip = want.ipv4_mapped if mapped else want
    assert addr.parse(text) == (ip.version, int(ip))
    assert addr.rule_ip(text) == (ip.version, socket.inet_ntop(
        socket.AF_INET if ip.version == 4 else socket.AF_INET6, ip.packed))


@given(V6)
def test_rule_text_is_inet_ntop(n):
    assert addr.ntop(6, n) == socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big"))
    v4 = n & 0xFFFFFFFF
    assert addr.ntop(4, v4) == str(ipaddress.IPv4Address(v4))


@given(st.sampled_from((4, 6)), st.data())
def test_rule_cidr_and_network_agree_with_ipaddress(version, data):
    n = data.draw(V4 if version == 4 else V6)
    plen = data.draw(st.integers(0, 32 if version == 4 else 128))
    text = "%s/%d" % (_text(version, n, data.draw(st.booleans())), plen)
    i = ipaddress.ip_interface(text)
    if version == 6 and i.ip.ipv4_mapped is not None:
        want = (4, str(i.ip.ipv4_mapped), plen - 96) if plen >= 96 else None
        assert addr.rule_cidr(text) == want
        return
    fam, ip, got_plen = addr.rule_cidr(text)
    assert (fam, got_plen) == (version, plen) and addr.parse(ip) == (version, int(i.ip))
    net = addr.rule_network(fam, ip, plen)
    assert addr.parse(net) == (version, int(i.network.network_address))


def test_rule_cidr_edges():
    assert addr.rule_cidr("10.1.2.3") == (4, "10.1.2.3", 32)
    assert addr.rule_cidr("fd00::1") == (6, "fd00::1", 128)
    assert addr.rule_cidr("::1.2.3.4/128") == (6, "::1.2.3.4", 128)      # inet_ntop keeps the form
    assert addr.fmt(*addr.parse("::1.2.3.4")) == "::102:304"               # Go does not
    for bad in ("10.1.2.3/", "10.1.2.3/33", "10.1.2.3/٢٤", "10.1.2.3/0024", "fe80::1%eth0/64", None):
        assert addr.rule_cidr(bad) is None
    assert addr.is_unspecified(4, "0.0.0.0") and addr.is_unspecified(6, "::")
    assert (addr.host_prefix(4), addr.host_prefix(6)) == (32, 128)
