"""bridge under faults: ADD failing at each step, DEL in every partial state
and without a netns, a stale bridge address, hostile configs."""

import os
import subprocess
import time

import pytest
from cnitest import assert_cni_error, unique

pytestmark = pytest.mark.root

FAILPOINTS = ["bridge.add.after_ipam", "bridge.add.after_veth", "bridge.add.after_addrs",
              "bridge.add.after_rules"]


@pytest.mark.parametrize("action", ["error", "kill"])
@pytest.mark.parametrize("point", FAILPOINTS)
@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_del_after_each_add_failure_point(node, point, action, backend):
    conf = node.conf(isDefaultGateway=True, ipMasq=True, ipMasqBackend=backend, macspoofchk=True)
    ctr = node.container()
    r = node.run("ADD", conf, ctr, env={"PYCNI_FAILPOINTS": "%s=%s" % (point, action)})
    if action == "kill":
        assert r.rc == -9, r
    else:
        err = assert_cni_error(r, 999)
        assert point in err["msg"]
        node.assert_clean()                 # the failed ADD undid itself
        assert "eth0" not in ctr.links()
    node.delete(conf, ctr)
    node.assert_clean()
    assert "eth0" not in ctr.links()
    node.delete(conf, ctr)                  # DEL twice
    node.assert_clean()
    node.add(conf, ctr)                     # and the next ADD works
    node.delete(conf, ctr)
    node.assert_clean()


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
@pytest.mark.parametrize("how", ["path-gone", "no-netns"])
def test_del_without_the_netns_releases_lease_and_rules(node, backend, how):
    conf = node.conf(isDefaultGateway=True, ipMasq=True, ipMasqBackend=backend)
    ctr = node.container()
    node.add(conf, ctr)
    path = ctr.path
    ctr.delete()                            # the kernel takes the veth pair with it
    node.delete(conf, None, netns=path if how == "path-gone" else "")
    node.assert_clean()
    node.delete(conf, None, netns="")


def test_del_finds_the_veth_of_a_netns_still_held_elsewhere(node):
    """The netns path is gone but a process keeps the namespace (and so the
    veth pair) alive: DEL finds the host veth by its alias."""
    conf = node.conf(isGateway=True, ipMasq=True)
    ctr = node.container()
    node.add(conf, ctr, cid="held")
    holder = _hold(ctr)
    try:
        path = ctr.path
        ctr.delete()
        assert len(node.veths()) == 1      # still there: the namespace lives on
        node.delete(conf, None, cid="held", netns=path)
        node.assert_clean()
    finally:
        holder.kill()
        holder.wait()


def _hold(ctr):
    """A process inside ``ctr`` that keeps the namespace alive without its path."""
    holder = subprocess.Popen(["ip", "netns", "exec", ctr.name, "sleep", "60"])
    for _ in range(200):        # until the holder has entered the namespace
        if subprocess.run(["ip", "netns", "identify", str(holder.pid)], capture_output=True,
                          text=True).stdout.strip() == ctr.name:
            break
        time.sleep(0.01)
    return holder


def test_gc_removes_the_veth_of_a_stale_attachment(node):
    conf = node.conf("1.1.0", isGateway=True, ipMasq=True)
    keep, stale = node.container(), node.container()
    rk = node.add(conf, keep, cid="keep")
    node.add(dict(conf, ipam=node.ipam("1.1.0", host=3)), stale, cid="stale")
    holder = _hold(stale)
    try:
        stale.delete()
        assert len(node.veths()) == 2
        gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
        r = node.run("GC", gc)
        assert r.rc == 0, r
        assert node.veths() == [rk["interfaces"][1]["name"]]
    finally:
        holder.kill()
        holder.wait()


def _old_bridge(node, addr="10.244.0.1/24", with_port=False):
    h = node.host
    h.run("ip", "link", "add", node.bridge, "type", "bridge")
    h.run("ip", "addr", "add", addr, "dev", node.bridge)
    h.run("ip", "link", "set", node.bridge, "up")
    if with_port:
        h.run("ip", "link", "add", "oldpod0", "type", "veth", "peer", "name", "oldpod1")
        h.run("ip", "link", "set", "oldpod0", "master", node.bridge)


def _v4(node):
    return [a for a in node.addrs(node.bridge) if ":" not in a]


def test_stale_bridge_address_is_replaced_when_nothing_uses_it(node):
    _old_bridge(node)
    conf = node.conf(subnet="10.244.3.0/24", isGateway=True)
    ctr = node.container()
    node.add(conf, ctr)
    assert _v4(node) == ["10.244.3.1/24"]
    assert "replaced stale address 10.244.0.1/24 on %s" % node.bridge in node.log_text()
    assert ctr.run("ping", "-c1", "-W3", "10.244.3.1").returncode == 0


def test_stale_bridge_address_with_a_port_attached_is_refused(node):
    _old_bridge(node, with_port=True)
    conf = node.conf(subnet="10.244.3.0/24", isGateway=True)
    ctr = node.container()
    err = assert_cni_error(node.run("ADD", conf, ctr), 999)
    assert err["msg"] == ("failed to set bridge addr: %r already has an IP address different from "
                          "10.244.3.1/24: found 10.244.0.1/24" % node.bridge)
    assert "1 port(s) are attached to %s (oldpod0)" % node.bridge in err["details"]
    assert "ip addr del 10.244.0.1/24 dev %s" % node.bridge in err["details"]
    assert "forceAddress" in err["details"]
    assert _v4(node) == ["10.244.0.1/24"]
    assert node.leases() == [] and node.veths() == [] and "eth0" not in ctr.links()
    # the operator's way out, as the message says
    ok = node.add(dict(conf, forceAddress=True), ctr)
    assert ok["ips"][0]["gateway"] == "10.244.3.1" and _v4(node) == ["10.244.3.1/24"]


def test_stale_bridge_address_with_a_live_lease_is_refused(node):
    _old_bridge(node)
    os.makedirs(os.path.join(node.data_dir, "bnet"))
    with open(os.path.join(node.data_dir, "bnet", "10.244.0.7"), "w") as f:
        f.write("oldcontainer\r\neth0")
    conf = node.conf(subnet="10.244.3.0/24", isGateway=True)
    err = assert_cni_error(node.run("ADD", conf, node.container()), 999)
    assert "found 10.244.0.1/24" in err["msg"]
    assert "1 lease(s) in 10.244.0.0/24 are live" in err["details"] and "10.244.0.7" in err["details"]
    assert node.leases() == ["10.244.0.7"] and _v4(node) == ["10.244.0.1/24"]


def test_stale_bridge_address_with_an_ipam_we_cannot_read_is_refused(node):
    _old_bridge(node)
    ipam = {"type": "static", "addresses": [{"address": "10.244.3.5/24"}]}
    err = assert_cni_error(node.run("ADD", node.conf(ipam=ipam, isGateway=True), node.container()), 999)
    assert "may still be in use" in err["details"]


HOSTILE = [
    ("vlan out of range", {"vlan": 4095}),
    ("vlan as string", {"vlan": "100"}),
    ("bridge name over 15 bytes", {"bridge": "b" * 16}),
    ("bridge name with a slash", {"bridge": "br/../../x"}),
    ("mtu as string", {"mtu": "1400"}),
    ("mtu below the minimum", {"mtu": 20}),
    ("promisc with hairpin", {"promiscMode": True, "hairpinMode": True}),
    ("unknown masquerade backend", {"ipMasq": True, "ipMasqBackend": "ipfw"}),
    ("trunk range reversed", {"vlanTrunk": [{"minID": 30, "maxID": 20}]}),
    ("bad runtime mac", {"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}),
    ("ipam with disabled interface", {"disableContainerInterface": True}),
    ("isGateway as string", {"isGateway": "true"}),
    ("ipam type with a path", {"ipam": {"type": "../../../bin/true"}}),
]


@pytest.mark.parametrize("what,bad", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_config_is_refused_and_nothing_is_created(node, what, bad):
    conf = node.conf(isGateway=True, ipMasq=True)
    conf.update(bad)
    ctr = node.container()
    before = set(node.links())
    assert_cni_error(node.run("ADD", conf, ctr), 7)
    assert set(node.links()) == before
    assert node.leases() == [] and "eth0" not in ctr.links()
    assert [t for t in node.nft_tables() if "pycni" in t] == [] and node.nat_rules() == []


def test_missing_ipam_plugin_creates_nothing(node):
    err = assert_cni_error(node.run("ADD", node.conf(ipam={"type": "no-such-ipam"}),
                                    node.container()), 999)
    assert "no-such-ipam" in err["msg"]
    assert node.links().keys() == {"lo"}


def test_bad_mac_in_cni_args_is_an_environment_error(node):
    r = node.run("ADD", node.conf(), node.container(), args="MAC=zz")
    assert_cni_error(r, 4)
    assert node.links().keys() == {"lo"}


def test_non_bridge_link_with_the_bridge_name(node):
    node.host.run("ip", "link", "add", node.bridge, "type", "veth", "peer", "name", unique("p")[:12])
    err = assert_cni_error(node.run("ADD", node.conf(), node.container()), 999)
    assert "already exists but is not a bridge" in err["msg"]
    assert node.leases() == []


def test_containerd_double_del_with_and_without_prev_result(node):
    conf = node.conf("1.0.0", isDefaultGateway=True, ipMasq=True)
    ctr = node.container()
    res = node.add(conf, ctr)
    node.delete(dict(conf, prevResult=res), ctr)
    node.delete(conf, ctr)
    node.assert_clean()
    log = [ln for ln in node.log_text().splitlines() if " bridge[" in ln and " DEL " in ln]
    assert len(log) == 2 and all(" ok " in ln for ln in log)
