"""host-local through the built plugins: versions, concurrency, crashes, GC, the Go plugin's leases."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from cnitest import ALL_VERSIONS, GO_CNI, assert_cni_error, run_plugin

pytestmark = pytest.mark.root

GO = os.path.join(GO_CNI, "host-local")


@pytest.fixture
def hl(plugins, statedir, host, ctr, tmp_path):
    """Run our host-local (or another exe) in the sandbox with dataDir in a temp dir."""
    data = tmp_path / "data"

    class HL:
        dir = data
        netdir = data / "net1"

        def conf(self, ranges=None, version="1.1.0", name="net1", **top):
            c = {"cniVersion": version, "name": name, "type": "bridge",
                 "ipam": {"type": "host-local", "dataDir": str(data),
                          "ranges": ranges or [[{"subnet": "10.77.0.0/16"}]]}}
            c.update(top)
            return c

        def run(self, command, conf, cid="c1", ifname="eth0", exe=None, **kw):
            return run_plugin(exe or os.path.join(plugins, "host-local"), command, conf,
                              containerid=cid, netns=ctr.path, ifname=ifname, path=plugins,
                              host_netns=host.name, **kw)

        def leases(self, name="net1"):
            d = data / name
            if not d.is_dir():
                return []
            return sorted(n for n in os.listdir(d) if n not in ("lock",)
                          and not n.startswith(("last_reserved_ip.", ".pycni-attachments")))

        def owner(self, ip, name="net1"):
            return (data / name / ip).read_bytes()

    return HL()


def addresses(res):
    if "ips" in res:
        return [ip["address"] for ip in res["ips"]]
    return [res[k]["ip"] for k in ("ip4", "ip6") if k in res]


@pytest.mark.parametrize("v", ALL_VERSIONS)
def test_every_spec_version(hl, v):
    conf = hl.conf([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]], version=v)
    conf["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    r = hl.run("ADD", conf)
    assert r.rc == 0, r
    res = r.json
    assert res["cniVersion"] == v
    if v in ("0.1.0", "0.2.0"):
        assert res["ip4"] == {"ip": "10.77.0.2/24", "gateway": "10.77.0.1",
                              "routes": [{"dst": "0.0.0.0/0"}]}
        assert res["ip6"] == {"ip": "fd77::2/64", "gateway": "fd77::1", "routes": [{"dst": "::/0"}]}
    else:
        want = [{"address": "10.77.0.2/24", "gateway": "10.77.0.1"},
                {"address": "fd77::2/64", "gateway": "fd77::1"}]
        if v in ("0.3.0", "0.3.1", "0.4.0"):
            want[0]["version"], want[1]["version"] = "4", "6"
        assert res["ips"] == want
        assert res["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        assert "interfaces" not in res
    assert hl.leases() == ["10.77.0.2", "fd77::2"]
    assert hl.owner("10.77.0.2") == b"c1\r\neth0"
    if v >= "0.4.0":
        assert hl.run("CHECK", dict(conf, prevResult=res)).rc == 0
    r = hl.run("DEL", conf)
    assert r.rc == 0 and r.stdout == "", r
    assert hl.leases() == []
    if v >= "0.4.0":
        err = assert_cni_error(hl.run("CHECK", dict(conf, prevResult=res)), 999)
        assert err["msg"] == "host-local: Failed to find address added by container c1"
    assert hl.run("DEL", conf).rc == 0
    if v == "1.1.0":
        assert hl.run("STATUS", conf, cid="", ifname="").rc == 0
        assert hl.run("GC", dict(conf, **{"cni.dev/valid-attachments": []}), cid="", ifname="").rc == 0
    else:
        assert_cni_error(hl.run("GC", conf, cid="", ifname=""), 1)


def test_resolv_conf_and_dns(hl, tmp_path):
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 10.0.0.53\nsearch example.com\noptions ndots:2\n")
    conf = hl.conf()
    conf["ipam"]["resolvConf"] = str(rc)
    r = hl.run("ADD", conf)
    assert r.rc == 0, r
    assert r.json["dns"] == {"nameservers": ["10.0.0.53"], "search": ["example.com"],
                             "options": ["ndots:2"]}


def test_200_concurrent_adds_get_unique_addresses_and_dels_leave_nothing(hl):
    conf = hl.conf([[{"subnet": "10.77.0.0/24"}]], version="1.0.0")
    cids = ["ctr%03d" % i for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        runs = list(pool.map(lambda c: hl.run("ADD", conf, cid=c), cids))
    assert all(r.rc == 0 for r in runs), [r for r in runs if r.rc][:3]
    got = [r.json["ips"][0]["address"] for r in runs]
    assert len(set(got)) == 200
    assert "10.77.0.1/24" not in got and "10.77.0.0/24" not in got and "10.77.0.255/24" not in got
    assert len(hl.leases()) == 200
    for cid, r in zip(cids, runs):
        ip = r.json["ips"][0]["address"].split("/")[0]
        assert hl.owner(ip) == ("%s\r\neth0" % cid).encode()
    with ThreadPoolExecutor(16) as pool:
        dels = list(pool.map(lambda c: hl.run("DEL", conf, cid=c), cids))
    assert all(r.rc == 0 for r in dels), [r for r in dels if r.rc][:3]
    assert sorted(os.listdir(hl.netdir)) == ["last_reserved_ip.0", "lock"]


@pytest.mark.parametrize("point", ["hostlocal-before-lease-link", "hostlocal-after-lease-write",
                                   "hostlocal-after-last-reserved"])
def test_sigkill_mid_add_leaves_state_the_next_add_and_del_handle(hl, point):
    conf = hl.conf([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]])
    r = hl.run("ADD", conf, cid="victim", extra_env={"PYCNI_FAILPOINTS": point + "=kill"})
    assert r.rc != 0 and r.stdout == "", r
    # the dead process held the lock: the next ADD is not wedged, and it sweeps the temp file
    r = hl.run("ADD", conf, cid="next")
    assert r.rc == 0, r
    assert not [n for n in os.listdir(hl.netdir) if n.startswith(".") and n != ".pycni-attachments"]
    assert not [n for n in os.listdir(hl.netdir / ".pycni-attachments") if n.startswith(".")]
    held = {ip for ip in hl.leases() if hl.owner(ip).startswith(b"victim")}
    assert not held & set(a.split("/")[0] for a in addresses(r.json))
    assert hl.run("DEL", conf, cid="victim").rc == 0
    assert all(hl.owner(ip).startswith(b"next") for ip in hl.leases())
    r = hl.run("ADD", conf, cid="victim")
    assert r.rc == 0, r
    assert len(hl.leases()) == 4


def test_error_failpoint_undoes_the_add(hl):
    conf = hl.conf([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]])
    r = hl.run("ADD", conf, extra_env={"PYCNI_FAILPOINTS": "hostlocal-after-last-reserved=error"})
    assert_cni_error(r, 999)
    assert hl.leases() == []


def test_sigkill_mid_del_then_del_again(hl):
    conf = hl.conf([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]])
    assert hl.run("ADD", conf).rc == 0
    r = hl.run("DEL", conf, extra_env={"PYCNI_FAILPOINTS": "hostlocal-mid-release=kill"})
    assert r.rc != 0
    assert len(hl.leases()) == 1
    assert hl.run("DEL", conf).rc == 0
    assert hl.leases() == []


def test_torn_lease_left_by_a_crashed_writer(hl):
    conf = hl.conf([[{"subnet": "10.77.0.0/30"}]])
    hl.netdir.mkdir(parents=True)
    (hl.netdir / "10.77.0.2").write_bytes(b"")        # a Go plugin killed between create and write
    r = hl.run("ADD", conf)
    assert r.rc == 0 and addresses(r.json) == ["10.77.0.2/30"], r
    assert hl.owner("10.77.0.2") == b"c1\r\neth0"


GC_CASES = [
    # (key and list, or None for no key; containers whose leases stay)
    ("full", ("cni.dev/valid-attachments", ["a/eth0", "b/eth0", "b/eth1", "legacy/eth0"]),
     ["a/eth0", "b/eth0", "b/eth1", "legacy"]),
    ("partial", ("cni.dev/valid-attachments", ["a/eth0", "b/eth1"]), ["a/eth0", "b/eth1"]),
    ("older key", ("cni.dev/attachments", ["b/eth0", "legacy/eth9"]), ["b/eth0", "legacy"]),
    ("empty", ("cni.dev/valid-attachments", []), []),
    ("null", ("cni.dev/valid-attachments", None), []),
    ("absent", None, ["a/eth0", "b/eth0", "b/eth1", "legacy"]),
]


@pytest.mark.parametrize("what,given,kept", GC_CASES, ids=[c[0] for c in GC_CASES])
def test_gc(hl, what, given, kept):
    conf = hl.conf([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]])
    owners = {}
    for cid, ifname in (("a", "eth0"), ("b", "eth0"), ("b", "eth1")):
        r = hl.run("ADD", conf, cid=cid, ifname=ifname)
        assert r.rc == 0, r
        for a in addresses(r.json):
            owners[a.split("/")[0]] = "%s/%s" % (cid, ifname)
    (hl.netdir / "10.77.9.9").write_bytes(b"legacy")           # written before ifnames existed
    owners["10.77.9.9"] = "legacy"
    gc = dict(conf)
    if given:
        key, items = given
        gc[key] = None if items is None else [
            {"containerID": i.split("/")[0], "ifname": i.split("/")[1]} for i in items]
    r = hl.run("GC", gc, cid="", ifname="")
    assert r.rc == 0 and r.stdout == "", r
    assert hl.leases() == sorted(ip for ip, o in owners.items() if o in kept)
    assert {"lock", "last_reserved_ip.0", "last_reserved_ip.1"} <= set(os.listdir(hl.netdir))


def test_status(hl):
    conf = hl.conf([[{"subnet": "10.77.0.0/30"}]])
    assert hl.run("STATUS", conf, cid="", ifname="").rc == 0
    assert hl.run("ADD", conf).rc == 0
    err = assert_cni_error(hl.run("STATUS", conf, cid="", ifname=""), 50)
    assert "range set 0 (10.77.0.1-10.77.0.2) is full: 1 of 1" in err["msg"]


def test_go_leases_are_ours_and_ours_are_gos(hl, go_plugins):
    conf = hl.conf([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]], version="1.0.0")
    r = hl.run("ADD", conf, cid="go1", exe=GO)
    assert r.rc == 0, r
    go1 = addresses(r.json)
    assert go1 == ["10.77.0.2/24", "fd77::2/64"]
    r = hl.run("ADD", conf, cid="py1")
    assert r.rc == 0, r
    assert addresses(r.json) == ["10.77.0.3/24", "fd77::3/64"]     # Go's round robin position read
    r = hl.run("ADD", conf, cid="go2", exe=GO)
    assert addresses(r.json) == ["10.77.0.4/24", "fd77::4/64"]     # and ours read by Go
    assert hl.owner("fd77::3") == b"py1\r\neth0"
    # each releases the other's; CHECK finds the other's
    assert hl.run("CHECK", conf, cid="go1").rc == 0
    assert hl.run("CHECK", conf, cid="py1", exe=GO).rc == 0
    assert hl.run("DEL", conf, cid="go1").rc == 0
    assert hl.run("DEL", conf, cid="py1", exe=GO).rc == 0
    assert hl.leases() == ["10.77.0.4", "fd77::4"]
    assert hl.run("DEL", conf, cid="go2").rc == 0
    assert hl.leases() == []
    # a Go lease of the same container blocks a duplicate ADD here, as it does in Go
    assert hl.run("ADD", conf, cid="dup", exe=GO).rc == 0
    err = assert_cni_error(hl.run("ADD", conf, cid="dup"), 999)
    assert "duplicate allocation is not allowed" in err["msg"]


def test_go_legacy_lease_released_by_container_id(hl, go_plugins):
    conf = hl.conf(version="1.0.0")
    hl.netdir.mkdir(parents=True)
    (hl.netdir / "10.77.0.9").write_bytes(b"old")
    assert hl.run("DEL", conf, cid="old").rc == 0
    assert hl.leases() == []


# the Go plugin's message must appear in ours: same words for the same mistake
PARITY = [
    {"cniVersion": "1.0.0", "name": "net1", "type": "bridge"},
    {"ranges": [[]]},
    {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]},
    {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]},
    {"ranges": [[{"subnet": "10.0.0.0/31"}]]},
    {"ranges": [[{"subnet": "::ffff:10.0.0.0/120"}]]},
    {"ranges": [[{"subnet": "10.1.17.1/24"}]]},
    {"ranges": [[{"subnet": "10.1.17.0/24", "rangeStart": "10.1.18.1"}]]},
    {"ranges": [[{"subnet": "10.1.17.0/24", "rangeEnd": "10.1.18.1"}]]},
    {"ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "10.1.0.0/16"}]]},
    {"subnet": "10.1.0.0/16", "ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "10.1.9.0/24"}]]},
    {"ranges": [[{"subnet": "junk"}]]},
    {"ranges": [[{"subnet": "10.1.17.0/24"}]], "cniArgs": "IP=10.1.17.1"},
    {"ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "10.2.17.0/24"}]], "cniVersion": "0.2.0"},
]


@pytest.mark.parametrize("case", PARITY, ids=[json.dumps(c)[:50] for c in PARITY])
def test_error_messages_match_the_reference(hl, go_plugins, case):
    case = dict(case)
    args = case.pop("cniArgs", "")
    if "name" in case:
        conf = case
    else:
        conf = hl.conf(version=case.pop("cniVersion", "1.0.0"))
        conf["ipam"].update(case)
    go = hl.run("ADD", conf, exe=GO, args=args)
    ours = hl.run("ADD", conf, args=args)
    assert go.rc == 1, go
    err = assert_cni_error(ours, 7)
    assert go.json["msg"] in err["msg"]
    assert not os.path.exists(hl.netdir) or hl.leases() == []


HOSTILE = [
    # (what, conf change, cid, ifname, code)
    ("network name ..", {"name": ".."}, "c1", "eth0", 7),
    ("network name with slash", {"name": "a/../../b"}, "c1", "eth0", 7),
    ("network name too long", {"name": "n" * 300}, "c1", "eth0", 7),
    ("container id with slash", {}, "../../etc", "eth0", 4),
    ("container id too long", {}, "c" * 300, "eth0", 4),
    ("ifname with slash", {}, "c1", "../x", 4),
    ("ifname with NUL-like junk", {}, "c1", "e th0", 4),
    ("relative dataDir", {"dataDir": "data"}, "c1", "eth0", 7),
]


@pytest.mark.parametrize("what,change,cid,ifname,code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_names_refused_with_nothing_written(hl, tmp_path, what, change, cid, ifname, code):
    conf = hl.conf()
    if "dataDir" in change:
        conf["ipam"]["dataDir"] = change["dataDir"]
    else:
        conf.update(change)
    before = sorted(n for n in os.listdir(tmp_path) if n != "pycni.log")
    for verb in ("ADD", "CHECK", "DEL"):
        r = hl.run(verb, conf, cid=cid, ifname=ifname)
        if verb == "DEL":
            assert r.rc == 0 and r.stdout == "", r      # nothing of ours can be there: DEL succeeds
        else:
            assert_cni_error(r, code)
    assert sorted(n for n in os.listdir(tmp_path) if n != "pycni.log") == before
    assert not hl.dir.exists() and not os.path.exists(os.path.join(os.getcwd(), "data"))


def test_gc_under_the_lock_never_loses_a_live_lease(hl):
    conf = hl.conf([[{"subnet": "10.77.0.0/24"}]])
    cids = ["live%02d" % i for i in range(50)]
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in cids]})
    (hl.netdir).mkdir(parents=True)
    (hl.netdir / "10.77.0.200").write_bytes(b"gone\r\neth0")
    jobs = [("ADD", conf, c) for c in cids] + [("GC", gc, "")] * 8
    with ThreadPoolExecutor(16) as pool:
        runs = list(pool.map(lambda j: hl.run(j[0], j[1], cid=j[2], ifname="eth0" if j[2] else ""),
                             jobs))
    assert all(r.rc == 0 for r in runs), [r for r in runs if r.rc][:3]
    assert hl.run("GC", gc, cid="", ifname="").rc == 0
    got = [r.json["ips"][0]["address"].split("/")[0] for r in runs[:50]]
    assert len(set(got)) == 50 and hl.leases() == sorted(got)


def test_in_process_delegation_as_bridge_does(hl, plugins, ctr):
    """bridge runs host-local through cnilib.cni.invoke.delegate (in-process for the py form)."""
    from cnilib.base.log import Log
    from cnilib.cni import invoke, skel
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": ctr.path, "CNI_IFNAME": "eth0",
           "CNI_PATH": plugins, "CNI_ARGS": "", "PYCNI_LOG": "off"}
    a = skel.CmdArgs(skel.Plugin("bridge"), "ADD", env, Log("bridge", env))
    a.version = "1.0.0"
    conf = json.dumps(hl.conf(version="1.0.0")).encode()
    res = invoke.delegate("ADD", "host-local", conf, a)
    assert res.ips == [{"address": "10.77.0.2/16", "gateway": "10.77.0.1"}]
    res = invoke.delegate("ADD", "host-local", conf, a, {"CNI_CONTAINERID": "c2"})
    assert res.ips[0]["address"] == "10.77.0.3/16"
    assert invoke.delegate("DEL", "host-local", conf, a) is None
    assert hl.leases() == ["10.77.0.3"]


@pytest.mark.parametrize("full", ["blocks", "inodes", "read-only"])
def test_status_is_50_while_the_data_dir_cannot_take_a_lease(plugins, host, full, tmp_path):
    """STATUS answered ready on a full disk: every ADD then failed with
    ENOSPC.  A small tmpfs, in a mount namespace of the plugin's own, is
    filled (or remounted read-only) under dataDir; ADD and STATUS agree."""
    data = tmp_path / "data"
    data.mkdir()
    conf = {"cniVersion": "1.1.0", "name": "net1", "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": str(data), "subnet": "10.77.0.0/24"}}
    fill = {"blocks": "dd if=/dev/zero of=$D/fill bs=4k 2>/dev/null; true",
            "inodes": "i=0; while touch $D/f$i 2>/dev/null; do i=$((i+1)); done",
            "read-only": "mount -o remount,ro $D"}[full]
    script = ("D=%s; mount -t tmpfs -o size=256k,nr_inodes=64 tmpfs $D && mkdir $D/net1 && %s && "
              "for v in STATUS ADD STATUS; do CNI_COMMAND=$v ip netns exec %s %s/host-local < %s "
              "> %s/out.$v.$$; done" % (data, fill, host.name, plugins, tmp_path / "conf.json", tmp_path))
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    env = dict(os.environ, CNI_CONTAINERID="c1", CNI_IFNAME="eth0", CNI_NETNS=host.path,
               CNI_NETNS_OVERRIDE="1", CNI_PATH=plugins)
    import subprocess
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script.replace("$$", "1")], env=env, capture_output=True, text=True, timeout=60)
    status = json.loads((tmp_path / "out.STATUS.1").read_text() or "null")
    add = json.loads((tmp_path / "out.ADD.1").read_text() or "null")
    assert status and status["code"] == 50, (status, done)
    assert add and add["code"] == 5, add          # what STATUS foretold
    why = {"blocks": "is full (no free block)", "inodes": "has no free inode",
           "read-only": "is on a read-only file system"}[full]
    assert status["msg"].startswith("host-local cannot write leases: ") and why in status["msg"], status
    assert not any(data.iterdir())         # the tmpfs went with its mount namespace


def test_a_fifo_planted_as_a_lease_blocks_nothing(hl):
    """The lease scan opened every address-named entry blocking: a FIFO
    there hung ADD, DEL and GC of the whole network until the runtime
    killed them.  It is skipped (and its address never handed out)."""
    conf = hl.conf([[{"subnet": "10.77.0.0/29"}]], version="1.1.0")
    assert hl.run("ADD", conf, cid="c0").rc == 0
    os.mkfifo(hl.netdir / "10.77.0.3")
    r = hl.run("ADD", conf, cid="c1", timeout=20)
    assert r.rc == 0 and r.json["ips"][0]["address"] == "10.77.0.4/29", r
    for verb, cid in (("DEL", "c1"), ("DEL", "c0"), ("STATUS", ""),
                      ("GC", "")):
        c = dict(conf, **{"cni.dev/valid-attachments": []}) if verb == "GC" else conf
        r = hl.run(verb, c, cid=cid, ifname="" if not cid else "eth0", timeout=20)
        assert r.rc == 0, (verb, r)
    assert hl.leases() == ["10.77.0.3"]            # not ours: left where it was
