"""Hostile names and paths from the runtime, through the built plugins in
sandbox namespaces (issue 16): a CNI_NETNS that is a FIFO, an ifname that
is not UTF-8 or holds an ESC, a pod name in another script, CNI_IFNAME=lo
for the bridge.  DEL of nothing succeeds whatever the config."""

import json
import os

import pytest
from cnitest import assert_cni_error, run_plugin

pytestmark = pytest.mark.root

NOT_UTF8 = os.fsdecode(b"et\xffh0")          # reaches the plugin as the bytes et 0xff h0


@pytest.mark.parametrize("ns,pod,cid", [("default", "日本語のポッド名" * 12, "abc123"),
                                        ("名前空間" * 8, "é" * 100, "abc123"),
                                        ("default", "p" * 92, "c" * 123)], ids=["cjk", "cjk-ns", "ascii-255"])
def test_a_pod_name_in_another_script_fits_the_veth_alias(node, ns, pod, cid):
    """The alias was measured in characters against the kernel's limit in
    bytes: every bridge ADD of such a pod failed with a 999 (ERANGE).  The
    limit is 254 bytes and the NUL: an ASCII pod name that made the alias
    exactly 255 failed the same way."""
    ctr = node.container()
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s" % (ns, pod)
    res = node.add(node.conf(isGateway=True), ctr, cid=cid, args=args)
    alias = node.links()[res["interfaces"][1]["name"]]["ifalias"]
    assert alias.startswith("pycni net=bnet cid=%s if=eth0 pod=%s" % (cid, ns[:4]))
    assert len(alias.encode()) <= 254 and (ns + "/" + pod).startswith(alias.split(" pod=")[1])
    node.delete(node.conf(isGateway=True), ctr, cid=cid)
    node.assert_clean()


def nothing_changed(node, ctr, before):
    assert (node.veths(), node.leases(), ctr.links().keys()) == before


def snapshot(node, ctr):
    return node.veths(), node.leases(), ctr.links().keys()


def test_an_ifname_that_is_not_utf8_is_code_4_and_its_del_succeeds(node):
    """It was a 999 with a traceback on ADD (netlink could not encode it),
    and its DEL failed the same way for ever."""
    ctr = node.container()
    conf = node.conf(isGateway=True, ipMasq=True)
    before = snapshot(node, ctr)
    err = assert_cni_error(node.run("ADD", conf, ctr, ifname=NOT_UTF8), 4)
    assert err["msg"] == "interface name contains bytes that are not UTF-8"
    assert err["details"] == 'CNI_IFNAME is "et\\udcffh0"; expected printable UTF-8'
    r = node.run("DEL", conf, ctr, ifname=NOT_UTF8)
    assert r.rc == 0 and r.stdout == "", r
    nothing_changed(node, ctr, before)
    assert node.owned() == [] and node.records() == []
    text = node.log_text()
    assert "Traceback" not in text and "if=et\\udcffh0" in text
    assert all(line.isprintable() for line in text.splitlines())


@pytest.mark.parametrize("ifname", ["e\x1b[2Jth", "eth\x07", "e\u202eth0"])
def test_an_ifname_with_a_control_character_is_refused(node, ifname):
    """The kernel takes an ESC in an interface name, and `ip link`, the log
    and `pycni whois` then print it to whoever looks."""
    ctr = node.container()
    before = snapshot(node, ctr)
    err = assert_cni_error(node.run("ADD", node.conf(isGateway=True), ctr, ifname=ifname), 4)
    assert err["msg"] in ("interface name contains control characters",
                          "interface name contains characters that are not printable")
    assert node.run("DEL", node.conf(isGateway=True), ctr, ifname=ifname).rc == 0
    nothing_changed(node, ctr, before)
    assert all(line.isprintable() for line in node.log_text().splitlines())


def test_bridge_refuses_lo_on_add_and_its_del_touches_nothing(node):
    """bridge DEL with CNI_IFNAME=lo failed for ever (it tried to delete the
    container's lo: EOPNOTSUPP), and ADD failed with a 999 after IPAM."""
    ctr = node.container()
    conf = node.conf(isGateway=True, ipMasq=True)
    live = node.container()
    node.add(conf, live, cid="c1")                        # the same container ID's real attachment
    before = snapshot(node, ctr)
    err = assert_cni_error(node.run("ADD", conf, ctr, cid="c1", ifname="lo"), 4)
    assert "CNI_IFNAME lo" in err["msg"]
    for netns in (ctr, live):
        r = node.run("DEL", conf, netns, cid="c1", ifname="lo")
        assert r.rc == 0 and r.stdout == "", r
    assert snapshot(node, ctr) == before and len(before[1]) == 1      # the live lease is kept
    assert ctr.links()["lo"]["operstate"] == "UNKNOWN" and "eth0" in live.links()
    node.delete(conf, live, cid="c1")
    node.assert_clean()


def test_json_errors_stay_exact_while_logs_escape(node):
    """Escaping is for log lines and terminals: a result keeps an ifname in
    another script exactly as the runtime sent it."""
    ctr = node.container()
    res = node.add(node.conf(isGateway=True), ctr, ifname="éth0")
    assert res["interfaces"][2]["name"] == "éth0"
    raw = run_plugin(node.exe, "DEL", node.conf(isGateway=True), containerid="c1", netns=ctr.path,
                     ifname="éth0", path=node.path, host_netns=node.host.name,
                     extra_env=node.env)
    assert raw.rc == 0, raw
    assert json.dumps(res, ensure_ascii=False).count("éth0") == 1


@pytest.mark.parametrize("plugin", ["bridge", "loopback", "tuning"])
def test_a_fifo_as_cni_netns_is_refused_at_once_and_its_del_succeeds(node, plugin, tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: bridge,
    loopback and tuning hung until the runtime killed them, and their DEL
    hung too.  Now: code 4 within a second, DEL succeeds, nothing made."""
    fifo = str(tmp_path / "netns-fifo")
    os.mkfifo(fifo)
    conf = {"bridge": node.conf(isGateway=True),
            "loopback": {"cniVersion": "1.0.0", "name": "lo", "type": "loopback"},
            "tuning": {"cniVersion": "1.0.0", "name": "tn", "type": "tuning", "mtu": 1400,
                       "dataDir": str(tmp_path / "tuning"),
                       "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]}}}[plugin]
    exe = os.path.join(node.plugins, plugin)
    for verb in ("ADD", "CHECK"):
        r = node.run(verb, conf, netns=fifo, exe=exe, timeout=10)
        err = assert_cni_error(r, 4)
        assert "is not a namespace file" in err["msg"] and "a FIFO" in err["details"], err
    r = node.run("DEL", conf, netns=fifo, exe=exe, timeout=10)
    assert r.rc == 0 and r.stdout == "", r
    assert node.veths() == [] and node.leases() == []
    assert "is not a namespace file: cleaning up outside it" in node.log_text()


def test_loopback_del_with_a_config_add_refuses_still_succeeds(node, ctr):
    conf = {"cniVersion": "1.0.0", "name": "lo", "type": "loopback", "logLevel": 5, "dns": "x"}
    exe = os.path.join(node.plugins, "loopback")
    assert_cni_error(node.run("ADD", conf, ctr, exe=exe, ifname="lo"), 7)
    r = node.run("DEL", conf, ctr, exe=exe, ifname="lo")
    assert r.rc == 0 and r.stdout == "", r


def test_tuning_del_with_a_config_add_refuses_still_succeeds(node, ctr, tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "tn", "type": "tuning", "mtu": "1400",
            "dataDir": str(tmp_path / "tuning"), "prevResult": {"cniVersion": "1.0.0"}}
    exe = os.path.join(node.plugins, "tuning")
    assert_cni_error(node.run("ADD", conf, ctr, exe=exe, args="FOO=1"), 7)
    for c, args in ((conf, "FOO=1"), (dict(conf, dataDir="/tmp/\x00x"), ""), (dict(conf, sysctl=[]), "")):
        r = node.run("DEL", c, ctr, exe=exe, args=args)
        assert r.rc == 0 and r.stdout == "", r


@pytest.mark.parametrize("bad", [{"ipMasq": "yes", "mtu": "x"}, {"hairpinMode": True, "promiscMode": True},
                                 {"bridge": "br/../x"}], ids=["wrong types", "conflict", "bridge name"])
def test_bridge_del_with_a_config_add_refuses_removes_what_the_key_finds(node, bad):
    """The attachment was made with a good config, which was then broken:
    DEL still removes its veth (by its alias when CNI_NETNS is empty: on
    any bridge when the config's bridge name is unusable), masquerade
    elements and lease, all keyed by network, container ID and ifname,
    instead of failing for ever."""
    good = node.conf(isGateway=True, ipMasq=True)
    ctr = node.container()
    node.add(good, ctr)
    assert node.veths() and node.leases() and node.owned()
    for netns in ("", None):     # without CNI_NETNS first (found by its alias), then in it
        r = node.run("DEL", dict(good, **bad), ctr, netns=netns)
        assert r.rc == 0 and r.stdout == "", r
    node.assert_clean()
    assert "DEL with a config ADD refuses" in node.log_text()
