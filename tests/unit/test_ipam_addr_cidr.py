"""cnilib.base.addr's CIDR helpers: what the bridge path uses instead of
``ipaddress`` (3-4 ms to import); held to ``ipaddress`` on ordinary input."""

import ipaddress

import pytest

from cnilib.base import addr
from cnilib.bridge import netconf
from cnilib.firewall import masquerade


@pytest.mark.parametrize("s", ["10.1.2.3/24", "10.1.2.3/32", "10.1.2.3/0", "192.168.0.255/31",
                               "fd00:10:244:1::5/64", "fe80::1/10", "2001:db8::/32", "::1/128"])
def test_cidr_and_network_agree_with_ipaddress(s):
    i = ipaddress.ip_interface(s)
    fam, n, prefix = addr.cidr(s)
    assert (fam, n, prefix) == (i.version, int(i.ip), i.network.prefixlen)
    assert addr.network(s) == str(i.network)
    assert masquerade._split(s) == (i.version, str(i.ip), str(i.network))


def test_mapped_addresses_read_as_go_does():
    assert addr.cidr("::ffff:10.1.2.3/120") == (4, 0x0A010203, 24)
    with pytest.raises(ValueError):
        addr.cidr("::ffff:10.1.2.3/64")


@pytest.mark.parametrize("bad", ["10.1.2.3", "10.1.2.3/33", "junk/24", "fd00::/129", "", None])
def test_malformed_cidr_is_a_value_error(bad):
    with pytest.raises(ValueError):
        addr.cidr(bad)


class R:
    def __init__(self, ips, routes=()):
        self.ips, self.routes = ips, list(routes)


def test_calc_gateways_matches_ipaddress_arithmetic():
    conf = {"isGateway": True, "isDefaultGateway": True}
    r = R([{"address": "10.244.1.7/24"}, {"address": "fd00:10:244:1::7/64"},
           {"address": "10.9.0.5/16", "gateway": "10.9.0.254"}])
    gws = netconf.calc_gateways(r, conf)
    assert [ip["gateway"] for ip in r.ips] == ["10.244.1.1", "fd00:10:244:1::1", "10.9.0.254"]
    assert gws == {4: [("10.244.1.1", 24), ("10.9.0.254", 16)], 6: [("fd00:10:244:1::1", 64)]}
    assert r.routes == [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "::/0", "gw": "fd00:10:244:1::1"}]
