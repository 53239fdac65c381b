"""bridge config validation, MAC precedence, veth alias, calcGateways and
what each path imports (no root)."""

import pytest

from cnilib.base import errors
from cnilib.bridge import netconf
from cnilib.cni.types import Result

BASE = {"cniVersion": "1.0.0", "name": "net1", "type": "bridge",
        "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}


def conf(**kw):
    c = dict(BASE)
    c.update(kw)
    return c


def test_defaults():
    c = netconf.load_conf(conf())
    assert c["bridge"] == "cni0"
    for key in ("isGateway", "isDefaultGateway", "forceAddress", "ipMasq", "hairpinMode",
                "promiscMode", "preserveDefaultVlan", "enabledad", "macspoofchk",
                "disableContainerInterface", "portIsolation"):
        assert c[key] is False, key
    assert c["mtu"] == 0 and c["vlan"] == 0 and c["ipMasqBackend"] is None
    assert c["_l3"] and c["_ipam"] == "host-local" and c["_trunk"] is None


def test_default_gateway_implies_gateway():
    c = netconf.load_conf(conf(isDefaultGateway=True))
    assert c["isGateway"] is True


def test_layer2_without_ipam():
    c = netconf.load_conf({"cniVersion": "1.0.0", "name": "n", "type": "bridge"})
    assert not c["_l3"]
    c = netconf.load_conf({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipam": {}})
    assert not c["_l3"]


def test_keys_match_without_case_like_go():
    c = netconf.load_conf(conf(MTU=1400, isgateway=True, HairpinMode=True))
    assert c["mtu"] == 1400 and c["isGateway"] and c["hairpinMode"]


@pytest.mark.parametrize("bad,needle", [
    ({"vlan": 4095}, "vlan"),
    ({"vlan": -1}, "vlan"),
    ({"vlan": "10"}, "vlan"),
    ({"bridge": "b" * 16}, "bridge"),
    ({"bridge": "br/../x"}, "bridge"),
    ({"bridge": "br 0"}, "bridge"),
    ({"bridge": ""}, "bridge"),
    ({"mtu": "1500"}, "mtu"),
    ({"mtu": 70000}, "mtu"),
    ({"mtu": 60}, "mtu"),
    ({"hairpinMode": True, "promiscMode": True}, "hairpin"),
    ({"portIsolation": "true"}, "portIsolation"),
    ({"ipMasqBackend": "pf"}, "ipMasqBackend"),
    ({"disableContainerInterface": True}, "DisableContainerInterface"),
    ({"vlanTrunk": [{"minID": 10}]}, "maxID is missing"),
    ({"vlanTrunk": [{"maxID": 10}]}, "minID is missing"),
    ({"vlanTrunk": [{"minID": 20, "maxID": 10}]}, "greater"),
    ({"vlanTrunk": [{"id": 0}]}, "vlanTrunk"),
    ({"vlanTrunk": [{"id": 5000}]}, "vlanTrunk"),
    ({"vlanTrunk": {"id": 5}}, "vlanTrunk"),
    ({"isGateway": True, "vlan": 4000, "bridge": "abcdefghijkl"}, "15 bytes"),
    ({"isGateway": 1}, "isGateway"),
])
def test_bad_configs_are_code_7(bad, needle):
    with pytest.raises(errors.InvalidConfig) as ei:
        netconf.load_conf(conf(**bad))
    assert ei.value.code == 7
    assert needle in str(ei.value)


def test_trunk_is_sorted_and_deduplicated():
    c = netconf.load_conf(conf(vlanTrunk=[{"id": 30}, {"minID": 10, "maxID": 12}, {"id": 11}]))
    assert c["_trunk"] == [10, 11, 12, 30]
    assert netconf.load_conf(conf(vlanTrunk=[]))["_trunk"] == []


def test_mac_precedence_and_validation():
    c = conf(args={"cni": {"mac": "0a:00:00:00:00:02"}}, runtimeConfig={"mac": "0A:00:00:00:00:03"})
    assert netconf.container_mac(c, {"MAC": "0a:00:00:00:00:01"}) == "0a:00:00:00:00:03"
    c = conf(args={"cni": {"mac": "0a:00:00:00:00:02"}})
    assert netconf.container_mac(c, {"MAC": "0a:00:00:00:00:01"}) == "0a:00:00:00:00:02"
    assert netconf.container_mac(conf(), {"MAC": "0a:00:00:00:00:01"}) == "0a:00:00:00:00:01"
    assert netconf.container_mac(conf(), {}) is None
    for bad in ("01:00:5e:00:00:01", "00:00:00:00:00:00", "zz:00:00:00:00:01", "0a:00:00:00:01",
                "0a-00-00-00-00-01"):
        with pytest.raises(errors.InvalidConfig):
            netconf.container_mac(conf(runtimeConfig={"mac": bad}), {})
    with pytest.raises(errors.InvalidEnvironment):
        netconf.container_mac(conf(), {"MAC": "nope"})


def test_veth_alias_names_the_attachment():
    from cnilib.firewall import naming
    a = netconf.veth_alias("net1", "abc123", "eth0", {})
    assert a == "pycni net=net1 cid=abc123 if=eth0"
    a = netconf.veth_alias("net1", "abc123", "eth0",
                          {"K8S_POD_NAMESPACE": "kube-system", "K8S_POD_NAME": "core dns;$(x)"})
    assert a == "pycni net=net1 cid=abc123 if=eth0 pod=kube-system/core_dns___x_"
    assert naming.veth_alias_names(a, "net1", "abc123", "eth0")
    for other in (("net2", "abc123", "eth0"), ("net1", "abc12", "eth0"), ("net1", "abc123", "eth1")):
        assert not naming.veth_alias_names(a, *other)
    long = netconf.veth_alias("n" * 128, "c" * 128, "eth0", {})
    assert len(long) <= 255 and naming.veth_alias_names(long, "n" * 128, "c" * 128, "eth0")
    assert not naming.veth_alias_names(long, "n" * 128, "c" * 127, "eth0")
    assert not naming.veth_alias_names(None, "n", "c", "eth0")


@pytest.mark.parametrize("ns,pod", [("default", "日" * 90), ("名前空間" * 10, "ポッド" * 40),
                                    ("default", "é" * 100), ("n", "😀" * 100)],
                         ids=["3-byte pod", "3-byte both", "2-byte pod", "4-byte symbols"])
def test_veth_alias_is_measured_in_bytes_and_cut_on_a_character(ns, pod):
    """The kernel's limit is in bytes (254 and the NUL): a pod name in
    another script (2-4 bytes a character) made the alias too long and
    every bridge ADD fail."""
    from cnilib.firewall import naming
    for net, cid, ifname in (("net1", "abc123", "eth0"), ("n" * 100, "c" * 100, "éé"),
                             ("n" * 128, "c" * 110, "e" * 15)):
        a = netconf.veth_alias(net, cid, ifname, {"K8S_POD_NAMESPACE": ns, "K8S_POD_NAME": pod})
        assert len(a.encode()) <= naming.IFALIAS_MAX == 254, (len(a.encode()), a)
        assert naming.veth_alias_names(a, net, cid, ifname)
        fields = naming.parse_veth_alias(a)
        clean = "".join(c if c.isalnum() or c in "/" else "_" for c in ns + "/" + pod)
        if "pod" in fields:
            assert fields["pod"] and clean.startswith(fields["pod"])
    a = netconf.veth_alias("net1", "abc123", "eth0", {"K8S_POD_NAMESPACE": ns, "K8S_POD_NAME": pod})
    assert a.startswith("pycni net=net1 cid=abc123 if=eth0 pod=" + ns[:20])


def ipam_result(ips, routes=()):
    return Result(ips=[dict(i) for i in ips], routes=[dict(r) for r in routes])


def cfg(**kw):
    c = netconf.load_conf(conf(**kw))
    return c


def test_calc_gateways_fills_gateway_and_index():
    r = ipam_result([{"address": "10.1.0.5/24"}])
    gws = netconf.calc_gateways(r, cfg(isGateway=True))
    assert r.ips == [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2}]
    assert r.routes == []
    assert gws == {4: [("10.1.0.1", 24)], 6: []}


def test_calc_gateways_without_is_gateway_keeps_ipam_gateway_off_the_bridge():
    r = ipam_result([{"address": "10.1.0.5/24", "gateway": "10.1.0.254"}])
    gws = netconf.calc_gateways(r, cfg())
    assert r.ips[0]["gateway"] == "10.1.0.254" and r.ips[0]["interface"] == 2
    assert gws == {4: [], 6: []}


def test_calc_gateways_default_route_once_per_family():
    r = ipam_result([{"address": "10.1.0.5/24"}, {"address": "10.2.0.5/16"},
                     {"address": "fd00:1::5/64"}])
    gws = netconf.calc_gateways(r, cfg(isDefaultGateway=True))
    assert r.routes == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0", "gw": "fd00:1::1"}]
    assert gws == {4: [("10.1.0.1", 24), ("10.2.0.1", 16)], 6: [("fd00:1::1", 64)]}


def test_calc_gateways_respects_an_ipam_default_route_with_gw():
    r = ipam_result([{"address": "10.1.0.5/24"}], [{"dst": "0.0.0.0/0", "gw": "10.1.0.254"}])
    netconf.calc_gateways(r, cfg(isDefaultGateway=True))
    assert r.routes == [{"dst": "0.0.0.0/0", "gw": "10.1.0.254"}]


def test_calc_gateways_avoids_the_duplicate_default_route_trap():
    """IPAM's 0.0.0.0/0 without gw gets the gateway filled in when applied;
    the reference appends a second, identical route and the ADD fails on EEXIST."""
    r = ipam_result([{"address": "10.1.0.5/24"}], [{"dst": "0.0.0.0/0"}])
    netconf.calc_gateways(r, cfg(isDefaultGateway=True))
    assert r.routes == [{"dst": "0.0.0.0/0"}]


def test_calc_gateways_other_family_default_does_not_count():
    r = ipam_result([{"address": "10.1.0.5/24"}, {"address": "fd00::5/64"}], [{"dst": "::/0"}])
    netconf.calc_gateways(r, cfg(isDefaultGateway=True))
    assert r.routes == [{"dst": "::/0"}, {"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]


def test_calc_gateways_same_gateway_listed_once():
    r = ipam_result([{"address": "10.1.0.5/24"}, {"address": "10.1.0.6/24"}])
    gws = netconf.calc_gateways(r, cfg(isGateway=True))
    assert gws[4] == [("10.1.0.1", 24)]


def test_first_gateways_and_interface_filter():
    from cnilib.bridge import iface
    r = Result(interfaces=[{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0"}],
               ips=[{"address": "10.1.0.5/24", "interface": 2},
                    {"address": "10.9.0.5/24", "interface": 1},
                    {"address": "10.8.0.5/24"},
                    {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2}])
    assert [i["address"] for i in iface.ips_for(r, "eth0")] == ["10.1.0.5/24", "fd00::5/64"]
    assert iface.first_gateways(r.ips) == {4: None, 6: "fd00::1"}
    r.ips.append({"address": "10.1.0.7/24", "interface": 7})
    with pytest.raises(errors.Internal, match="invalid interface index"):
        iface.ips_for(r, "eth0")
    assert iface.broadcast("10.1.0.5", 24) == "10.1.0.255"
    assert iface.broadcast("10.1.0.5", 30) == "10.1.0.7"
    assert iface.canonical_net("10.1.2.3/16") == "10.1.0.0/16"


def _modules_after(code):
    import subprocess
    import sys

    from cnitest import ROOT
    site = [p for p in sys.path if p.endswith("site-packages")]
    prog = ("import sys; sys.path[0:0] = %r\n%s\nprint('\\n'.join(sorted(sys.modules)))"
            % ([ROOT] + site, code))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", prog], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("command,stdin", [
    ("VERSION", b'{"cniVersion":"1.0.0"}'),
    ("STATUS", b'{"cniVersion":"1.1.0","name":"n","type":"bridge","vlan":5000}'),
    ("ADD", b'{"cniVersion":"1.0.0","name":"n","type":"bridge","mtu":"1500"}'),
    ("ADD", b'{"cniVersion":"1.0.0","name":"n","type":"bridge","hairpinMode":true,"promiscMode":true}'),
])
def test_version_and_config_errors_stay_light(command, stdin):
    """No pyroute2, ipaddress or json before the config has passed.  (An error
    logged with its cause loads ``traceback``, and with it ``re``: skel's.)"""
    mods = _modules_after(
        "import os\nos.environ.update(CNI_COMMAND=%r, CNI_CONTAINERID='c', CNI_NETNS='/proc/self/ns/net',"
        " CNI_NETNS_OVERRIDE='1', CNI_IFNAME='eth0', CNI_PATH='/nonexistent', PYCNI_LOG='off')\n"
        "from cnilib.cni import skel\nimport plugins.bridge as p\n"
        "rc, out = skel.execute(p.PLUGIN, os.environ, stdin_data=%r)\n"
        "assert (rc == 0) == (%r == 'VERSION'), out\n"
        "assert rc == 0 or b'\"code\":7' in out, out" % (command, stdin, command))
    heavy = ("pyroute2", "pydantic", "pydantic_core", "json", "ipaddress", "subprocess")
    if command == "VERSION":
        heavy += ("re", "traceback")
    assert sorted(m for m in mods if m.split(".")[0] in heavy) == []
