"""tuning through the built plugins: a veth into a container netns, real
sysctls and link attributes, for every spec version and both install forms."""

import json
import os

import pytest
from cnitest import ALL_VERSIONS, assert_cni_error, run_plugin

pytestmark = pytest.mark.root

NEW_MAC = "0a:58:0a:f4:00:05"


@pytest.fixture
def pair(host, ctr):
    """veth: 'vh0' in the host netns, 'eth0' (up) in the container."""
    host.run("ip", "link", "add", "vh0", "type", "veth", "peer", "name", "eth0", "netns", ctr.name)
    host.run("ip", "link", "set", "vh0", "up")
    ctr.run("ip", "link", "set", "eth0", "up")
    return host, ctr


def link(ns, dev="eth0"):
    out = ns.run("ip", "-j", "-d", "link", "show", "dev", dev).stdout
    return json.loads(out)[0]


def sysctl(ns, name):
    return ns.run("cat", "/proc/sys/" + name).stdout.strip()


def prev(ctr, v, mac="aa:aa:aa:aa:aa:aa"):
    if v in ("0.1.0", "0.2.0"):
        return {"cniVersion": v, "ip4": {"ip": "10.1.0.2/24", "gateway": "10.1.0.1"}}
    return {"cniVersion": v,
            "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:01"},
                           {"name": "vh0", "mac": "aa:aa:aa:aa:aa:02"},
                           {"name": "eth0", "mac": mac, "sandbox": ctr.path}],
            "ips": [dict({"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 2},
                         **({"version": "4"} if v < "1.0.0" else {}))]}


def conf(statedir, ctr, v="1.0.0", **kw):
    c = {"cniVersion": v, "name": "tunenet", "type": "tuning",
         "dataDir": str(statedir / "tuning"), "prevResult": prev(ctr, v)}
    c.update(kw)
    return c


def run(plugins, verb, c, host, ctr, **kw):
    kw.setdefault("containerid", "c1")
    kw.setdefault("ifname", "eth0")
    return run_plugin(os.path.join(plugins, "tuning"), verb, c, netns=ctr.path,
                      path=plugins, host_netns=host.name, **kw)


def saved_files(statedir):
    d = statedir / "tuning"
    return sorted(str(p.relative_to(d)) for p in d.rglob("*.json")) if d.exists() else []


FULL = dict(mac=NEW_MAC, mtu=1400, promisc=True, allmulti=True, txQLen=123,
            sysctl={"net.ipv4.conf.IFNAME.arp_notify": "1", "net/ipv6/conf/eth0/accept_ra": "0"})


@pytest.mark.parametrize("v", ALL_VERSIONS)
def test_add_check_del_restores(plugins, statedir, pair, v):
    host, ctr = pair
    orig = link(ctr)
    ra = sysctl(ctr, "net/ipv6/conf/eth0/accept_ra")
    c = conf(statedir, ctr, v, **FULL)
    r = run(plugins, "ADD", c, host, ctr)
    assert r.rc == 0, r
    res = r.json
    assert res["cniVersion"] == v
    if v in ("0.1.0", "0.2.0"):
        assert res["ip4"]["ip"] == "10.1.0.2/24"
    else:
        assert res["interfaces"][2] == {"name": "eth0", "mac": NEW_MAC, "sandbox": ctr.path}
        assert res["interfaces"][:2] == c["prevResult"]["interfaces"][:2]
        assert res["ips"] == c["prevResult"]["ips"]
    now = link(ctr)
    assert now["address"] == NEW_MAC and now["mtu"] == 1400 and now["txqlen"] == 123
    assert "PROMISC" in now["flags"] and "ALLMULTI" in now["flags"] and "UP" in now["flags"]
    assert sysctl(ctr, "net/ipv4/conf/eth0/arp_notify") == "1"
    assert sysctl(ctr, "net/ipv6/conf/eth0/accept_ra") == "0"
    assert saved_files(statedir) == ["tunenet/c1:eth0.json"]
    if v >= "0.4.0":
        assert run(plugins, "CHECK", dict(c, prevResult=res), host, ctr).rc == 0
    r = run(plugins, "DEL", c, host, ctr)
    assert r.rc == 0 and r.stdout == "", r
    back = link(ctr)
    for k in ("address", "mtu", "txqlen", "flags"):
        assert back[k] == orig[k], k
    assert saved_files(statedir) == []
    # sysctls stay, as with the reference: the netns goes away with the pod
    assert sysctl(ctr, "net/ipv4/conf/eth0/arp_notify") == "1"
    if v >= "0.4.0":
        err = assert_cni_error(run(plugins, "CHECK", dict(c, prevResult=res), host, ctr), 999)
        assert "MAC" in err["msg"] and "MTU" in err["msg"]
    assert run(plugins, "DEL", c, host, ctr).rc == 0                   # DEL again
    assert ra is not None


def test_mac_sources_in_precedence_order(plugins, statedir, pair):
    host, ctr = pair
    c = conf(statedir, ctr, mac="0a:00:00:00:00:01")
    r = run(plugins, "ADD", c, host, ctr, args="IgnoreUnknown=1;K8S_POD_NAME=p;MAC=0a:00:00:00:00:02")
    assert r.rc == 0 and link(ctr)["address"] == "0a:00:00:00:00:02", r
    c2 = dict(c, runtimeConfig={"mac": "0A-00-00-00-00-03"})
    r = run(plugins, "ADD", c2, host, ctr, args="MAC=0a:00:00:00:00:02")
    assert r.rc == 0 and link(ctr)["address"] == "0a:00:00:00:00:03", r
    assert r.json["interfaces"][2]["mac"] == "0a:00:00:00:00:03"
    c3 = dict(c2, args={"cni": {"mac": "0a00.0000.0004", "mtu": 1300}})
    r = run(plugins, "ADD", c3, host, ctr, args="MAC=0a:00:00:00:00:02")
    assert r.rc == 0 and link(ctr)["address"] == "0a:00:00:00:00:04" and link(ctr)["mtu"] == 1300, r


def test_second_add_keeps_the_originals(plugins, statedir, pair):
    host, ctr = pair
    orig = link(ctr)
    assert run(plugins, "ADD", conf(statedir, ctr, mac=NEW_MAC), host, ctr).rc == 0
    assert run(plugins, "ADD", conf(statedir, ctr, mac="0a:00:00:00:00:09", mtu=1300), host, ctr).rc == 0
    assert run(plugins, "DEL", conf(statedir, ctr), host, ctr).rc == 0
    back = link(ctr)
    assert back["address"] == orig["address"] and back["mtu"] == orig["mtu"]


def test_unknown_cni_args_refused(plugins, statedir, pair):
    host, ctr = pair
    before = link(ctr)
    assert_cni_error(run(plugins, "ADD", conf(statedir, ctr, mac=NEW_MAC), host, ctr, args="FOO=1"), 4)
    assert link(ctr)["address"] == before["address"]


BAD = [
    ("kernel sysctl", {"sysctl": {"kernel.hostname": "x"}}),
    ("dotdot", {"sysctl": {"net.ipv4/../../kernel/hostname": "x"}}),
    ("slash dotdot", {"sysctl": {"net/../kernel/hostname": "x"}}),
    ("empty component", {"sysctl": {"net..ipv4.ip_forward": "1"}}),
    ("bare net", {"sysctl": {"net": "1"}}),
    ("value not a string", {"sysctl": {"net.ipv4.ip_forward": 1}}),
    ("missing sysctl", {"sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1", "net.pycni.nope": "1"}}),
    ("bad mac", {"mac": "zz:00:00:00:00:01"}),
    ("multicast mac", {"mac": "01:00:5e:00:00:01"}),
    ("mtu type", {"mtu": "1400"}),
    ("mtu refused by kernel", {"mac": NEW_MAC, "mtu": 70000}),
    ("negative txQLen", {"txQLen": -1}),
    ("args.cni type", {"args": {"cni": {"promisc": "yes"}}}),
    ("runtimeConfig mac type", {"runtimeConfig": {"mac": 5}}),
    ("no prevResult", {"prevResult": None, "mtu": 1400}),
]


@pytest.mark.parametrize("what,extra", BAD, ids=[b[0] for b in BAD])
def test_bad_config_changes_nothing(plugins, statedir, pair, what, extra):
    host, ctr = pair
    before, notify = link(ctr), sysctl(ctr, "net/ipv4/conf/eth0/arp_notify")
    c = conf(statedir, ctr)
    c.update(extra)
    if c["prevResult"] is None:
        del c["prevResult"]
    err = assert_cni_error(run(plugins, "ADD", c, host, ctr), 7)
    if what == "no prevResult":
        assert err["msg"] == "Required prevResult missing"
    after = link(ctr)
    for k in ("address", "mtu", "txqlen", "flags"):
        assert after[k] == before[k], k
    assert sysctl(ctr, "net/ipv4/conf/eth0/arp_notify") == notify
    assert saved_files(statedir) == []


def test_del_succeeds_whatever_the_config(plugins, statedir, pair):
    """DEL of nothing succeeds whatever the config: wrong types, unknown
    CNI_ARGS keys and values ADD would refuse (a failing DEL is retried for
    ever and the pod never goes away)."""
    host, ctr = pair
    for c, args in ((conf(statedir, ctr, mtu="1400"), ""), (conf(statedir, ctr), "FOO=1"),
                    (conf(statedir, ctr, mac="not-a-mac", sysctl={"kernel.x": "1"}), "")):
        r = run(plugins, "DEL", c, host, ctr, args=args)
        assert r.rc == 0 and r.stdout == "", r


def test_del_with_a_config_add_refuses_still_restores_what_add_saved(plugins, statedir, pair):
    host, ctr = pair
    before = link(ctr)["mtu"]
    assert run(plugins, "ADD", conf(statedir, ctr, mtu=1400), host, ctr).rc == 0
    assert link(ctr)["mtu"] == 1400
    r = run(plugins, "DEL", conf(statedir, ctr, mtu="1400", promisc="yes"), host, ctr, args="FOO=1")
    assert r.rc == 0, r
    assert link(ctr)["mtu"] == before and saved_files(statedir) == []


def test_duplicate_sysctl_key_refused(plugins, statedir, pair):
    host, ctr = pair
    c = json.dumps(conf(statedir, ctr))[:-1]
    c += ', "sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1", "net.ipv4.conf.IFNAME.arp_notify": "0"}}'
    err = assert_cni_error(run(plugins, "ADD", c, host, ctr), 7)
    assert "more than once" in err["msg"]


def test_allowlist(plugins, statedir, pair, tmp_path):
    host, ctr = pair
    allow = tmp_path / "allowlist.conf"
    allow.write_text("^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]+$\n\n^net\\.core\\.somaxconn$\n")
    env = {"PYCNI_TUNING_ALLOWLIST": str(allow)}
    ok = conf(statedir, ctr, sysctl={"net.ipv4.conf.IFNAME.arp_notify": "1"})
    assert run(plugins, "ADD", ok, host, ctr, extra_env=env).rc == 0
    bad = conf(statedir, ctr, sysctl={"net.ipv4.ip_forward": "1"})
    err = assert_cni_error(run(plugins, "ADD", bad, host, ctr, extra_env=env), 7)
    assert "not allowed" in err["msg"]


def test_del_when_netns_or_link_is_gone(plugins, statedir, pair, netns_factory):
    host, ctr = pair
    c = conf(statedir, ctr, mac=NEW_MAC)
    assert run(plugins, "ADD", c, host, ctr).rc == 0
    ctr.run("ip", "link", "del", "eth0")
    assert run(plugins, "DEL", c, host, ctr).rc == 0
    assert saved_files(statedir) == []
    other = netns_factory()
    other.run("ip", "link", "add", "vh1", "type", "veth", "peer", "name", "eth0", "netns", ctr.name)
    assert run(plugins, "ADD", c, host, ctr, containerid="c2").rc == 0
    ctr.delete()
    for ns in (ctr.path, ""):
        r = run_plugin(os.path.join(plugins, "tuning"), "DEL", c, containerid="c2", netns=ns,
                       ifname="eth0", path=plugins, host_netns=host.name)
        assert r.rc == 0, r
    assert saved_files(statedir) == []


@pytest.mark.parametrize("point,action", [("tuning-after-state-write", "error"),
                                          ("tuning-after-link", "error"),
                                          ("tuning-after-sysctls", "error")])
def test_failed_add_is_undone(plugins, statedir, pair, point, action):
    host, ctr = pair
    before, notify = link(ctr), sysctl(ctr, "net/ipv4/conf/eth0/arp_notify")
    c = conf(statedir, ctr, **FULL)
    r = run(plugins, "ADD", c, host, ctr, extra_env={"PYCNI_FAILPOINTS": "%s=%s" % (point, action)})
    assert_cni_error(r, 999)
    after = link(ctr)
    for k in ("address", "mtu", "txqlen", "flags"):
        assert after[k] == before[k], k
    assert sysctl(ctr, "net/ipv4/conf/eth0/arp_notify") == notify
    assert saved_files(statedir) == []


def test_crash_after_link_change_is_repaired_by_del(plugins, statedir, pair):
    host, ctr = pair
    before = link(ctr)
    c = conf(statedir, ctr, mac=NEW_MAC, mtu=1400)
    r = run(plugins, "ADD", c, host, ctr, extra_env={"PYCNI_FAILPOINTS": "tuning-after-link=kill"})
    assert r.rc != 0
    assert link(ctr)["address"] == NEW_MAC
    assert run(plugins, "DEL", c, host, ctr).rc == 0
    after = link(ctr)
    assert after["address"] == before["address"] and after["mtu"] == before["mtu"]
    assert saved_files(statedir) == []


def test_gc_forgets_stale_attachments(plugins, statedir, pair):
    host, ctr = pair
    c = conf(statedir, ctr, "1.1.0", mac=NEW_MAC)
    assert run(plugins, "ADD", c, host, ctr, containerid="keep").rc == 0
    assert run(plugins, "ADD", c, host, ctr, containerid="stale").rc == 0
    assert saved_files(statedir) == ["tunenet/keep:eth0.json", "tunenet/stale:eth0.json"]
    gc = {"cniVersion": "1.1.0", "name": "tunenet", "type": "tuning", "dataDir": c["dataDir"],
          "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    r = run_plugin(os.path.join(plugins, "tuning"), "GC", gc, path=plugins, host_netns=host.name)
    assert r.rc == 0, r
    assert saved_files(statedir) == ["tunenet/keep:eth0.json"]


def test_del_restores_what_the_go_plugin_saved(plugins, go_plugins, statedir, pair):
    """Upgrade: ADD by the Go reference, DEL by us."""
    host, ctr = pair
    before = link(ctr)
    c = conf(statedir, ctr, "0.4.0", mac=NEW_MAC, mtu=1400)
    r = run_plugin(os.path.join(go_plugins, "tuning"), "ADD", c, containerid="c1", netns=ctr.path,
                   ifname="eth0", path=go_plugins, host_netns=host.name)
    assert r.rc == 0, r
    assert os.path.exists(statedir / "tuning" / "c1_eth0.json")
    assert run(plugins, "DEL", c, host, ctr).rc == 0
    after = link(ctr)
    assert after["address"] == before["address"] and after["mtu"] == before["mtu"]
    assert not os.path.exists(statedir / "tuning" / "c1_eth0.json")


@pytest.mark.parametrize("v", ["0.3.1", "0.4.0", "1.0.0"])
def test_result_matches_go(plugins, go_plugins, statedir, pair, v):
    host, ctr = pair
    c = conf(statedir, ctr, v, mac=NEW_MAC)
    results = []
    for d in (go_plugins, plugins):
        r = run_plugin(os.path.join(d, "tuning"), "ADD", c, containerid="c1", netns=ctr.path,
                       ifname="eth0", path=d, host_netns=host.name)
        assert r.rc == 0, r
        res = r.json
        if res.get("dns") == {}:
            del res["dns"]          # Go 1.1.1 prints an empty dns object at 0.3.x
        results.append(res)
    assert results[0] == results[1]
