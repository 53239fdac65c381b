"""loopback through the built plugins, in namespaces, for every spec version."""

import json
import os

import pytest
from cnitest import ALL_VERSIONS, assert_cni_error, run_plugin

pytestmark = pytest.mark.root


def lo_state(ns):
    link = ns.links()["lo"]
    return "UP" in link["flags"]


@pytest.mark.parametrize("v", ALL_VERSIONS)
def test_add_check_del(plugins, statedir, host, netns_factory, v):
    ctr = netns_factory(lo_up=False)
    exe = os.path.join(plugins, "loopback")
    conf = {"cniVersion": v, "name": "lonet", "type": "loopback"}
    kw = dict(containerid="c1", netns=ctr.path, ifname="lo", path=plugins, host_netns=host.name)
    assert not lo_state(ctr)
    r = run_plugin(exe, "ADD", conf, **kw)
    assert r.rc == 0, r
    res = r.json
    assert res["cniVersion"] == v
    if v in ("0.1.0", "0.2.0"):
        assert res["ip4"]["ip"] == "127.0.0.1/8"
    else:
        assert res["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": ctr.path}]
        got = [{k: ip[k] for k in ("address", "interface")} for ip in res["ips"]]
        assert {"address": "127.0.0.1/8", "interface": 0} in got
        assert {"address": "::1/128", "interface": 0} in got      # IPv6 is on in the netns
    assert lo_state(ctr)
    if v >= "0.4.0":
        assert run_plugin(exe, "CHECK", dict(conf, prevResult=res), **kw).rc == 0
    r = run_plugin(exe, "DEL", conf, **kw)
    assert r.rc == 0 and r.stdout == "", r
    assert not lo_state(ctr)
    if v >= "0.4.0":
        err = assert_cni_error(run_plugin(exe, "CHECK", dict(conf, prevResult=res), **kw), 999)
        assert "down" in err["msg"]
    assert run_plugin(exe, "DEL", conf, **kw).rc == 0     # DEL again


def test_prev_result_passes_through(plugins, statedir, host, ctr):
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": ctr.path}],
            "ips": [{"address": "10.1.0.5/24", "interface": 0}]}
    conf = {"cniVersion": "1.0.0", "name": "lonet", "type": "loopback", "prevResult": prev}
    r = run_plugin(os.path.join(plugins, "loopback"), "ADD", conf, containerid="c1",
                   netns=ctr.path, ifname="lo", host_netns=host.name)
    assert r.rc == 0 and r.json == prev


def test_del_without_or_with_vanished_netns(plugins, statedir, host):
    exe = os.path.join(plugins, "loopback")
    conf = {"cniVersion": "1.0.0", "name": "lonet", "type": "loopback"}
    for ns in ("", "/var/run/netns/never-existed-pycni"):
        r = run_plugin(exe, "DEL", conf, containerid="c1", netns=ns, ifname="lo",
                       host_netns=host.name)
        assert r.rc == 0, r
    assert not os.path.exists("/var/run/netns/never-existed-pycni")   # never created


def test_own_netns_refused_every_verb(plugins, statedir, host):
    exe = os.path.join(plugins, "loopback")
    for verb, v in (("ADD", "1.0.0"), ("DEL", "1.0.0"), ("CHECK", "1.0.0")):
        conf = {"cniVersion": v, "name": "lonet", "type": "loopback"}
        err = assert_cni_error(run_plugin(exe, verb, conf, containerid="c1", netns=host.path,
                                          ifname="lo", host_netns=host.name), 8)
        assert "own network namespace" in err["msg"]
    assert lo_state(host)   # the sandbox's lo was never taken down
    r = run_plugin(exe, "ADD", {"cniVersion": "1.0.0", "name": "lonet", "type": "loopback"},
                   containerid="c1", netns="/proc/self/ns/net", ifname="lo", host_netns=host.name)
    assert_cni_error(r, 8)


BAD = [
    # (what, env overrides, stdin, code)
    ("malformed JSON", {}, b'{"cniVersion":', 6),
    ("not an object", {}, b"[1,2]", 6),
    ("deep nesting", {}, b"[" * 100000 + b"]" * 100000, 6),
    ("no name", {}, b'{"cniVersion":"1.0.0","type":"loopback"}', 7),
    ("bad name", {}, b'{"cniVersion":"1.0.0","name":"../../etc","type":"loopback"}', 7),
    ("unsupported version", {}, b'{"cniVersion":"0.5.0","name":"n","type":"loopback"}', 1),
    ("missing env", {"CNI_CONTAINERID": ""}, None, 4),
    ("unknown verb", {"CNI_COMMAND": "FROB"}, None, 4),
    ("bad CNI_ARGS", {"CNI_ARGS": "junk-without-equals"}, None, 4),
    ("CNI_ARGS empty key", {"CNI_ARGS": "IgnoreUnknown=1;=x"}, None, 4),
    ("ifname too long", {"CNI_IFNAME": "x" * 16}, None, 4),
    ("container id with slash", {"CNI_CONTAINERID": "../../x"}, None, 4),
    ("netns not a netns", {"CNI_NETNS": "/etc/hostname"}, None, 4),
    ("netns a directory", {"CNI_NETNS": "/etc"}, None, 4),
    ("netns relative", {"CNI_NETNS": "netns/x"}, None, 4),
    ("netns missing on ADD", {"CNI_NETNS": "/var/run/netns/pycni-absent"}, None, 4),
    ("CHECK on 0.3.1", {"CNI_COMMAND": "CHECK"}, b'{"cniVersion":"0.3.1","name":"n","type":"loopback"}', 1),
    ("GC on 1.0.0", {"CNI_COMMAND": "GC"}, b'{"cniVersion":"1.0.0","name":"n","type":"loopback"}', 1),
    ("wrong type for logLevel", {}, b'{"cniVersion":"1.0.0","name":"n","type":"loopback","logLevel":3}', 7),
]


@pytest.mark.parametrize("what,env,stdin,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_corpus(plugins, statedir, host, ctr, what, env, stdin, code):
    exe = os.path.join(plugins, "loopback")
    stdin = stdin or json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "loopback"}).encode()
    e = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": ctr.path, "CNI_IFNAME": "lo",
         "CNI_PATH": plugins, "CNI_ARGS": ""}
    e.update(env)
    before = ctr.links()["lo"]["flags"]
    r = run_plugin(exe, e.pop("CNI_COMMAND"), stdin, containerid=e["CNI_CONTAINERID"],
                   netns=e["CNI_NETNS"], ifname=e["CNI_IFNAME"], path=e["CNI_PATH"],
                   args=e["CNI_ARGS"], host_netns=host.name)
    assert_cni_error(r, code)
    assert ctr.links()["lo"]["flags"] == before      # nothing changed
