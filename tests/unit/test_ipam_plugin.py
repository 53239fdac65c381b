"""host-local's verbs through skel, in-process (no root: it touches no netns)."""

import json
import os
import subprocess
import sys

import pytest
from cnitest import ROOT

from cnilib.cni import skel
from plugins import host_local

SITE = [p for p in sys.path if p.endswith("site-packages")]


def run(command, conf, cid="c1", ifname="eth0", args="", **extra):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": ifname, "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": args, "PYCNI_LOG": "off"}
    env.update(extra)
    rc, out = skel.execute(host_local.PLUGIN, env, stdin_data=json.dumps(conf).encode())
    return rc, (json.loads(out) if out.strip() else None)


@pytest.fixture
def net(tmp_path):
    return {"cniVersion": "1.1.0", "name": "net1", "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path),
                     "ranges": [[{"subnet": "10.1.2.0/24"}]]}}


def leases(net):
    d = os.path.join(net["ipam"]["dataDir"], "net1")
    return sorted(n for n in os.listdir(d) if n[0].isdigit()) if os.path.isdir(d) else []


def test_add_check_del(net):
    rc, res = run("ADD", net)
    assert rc == 0 and res["ips"] == [{"address": "10.1.2.2/24", "gateway": "10.1.2.1"}]
    assert run("CHECK", dict(net, prevResult=res)) == (0, None)
    assert run("DEL", net) == (0, None)
    assert leases(net) == []
    rc, err = run("CHECK", net)
    assert rc == 1 and err["msg"] == "host-local: Failed to find address added by container c1"


def test_check_compares_prev_result(net):
    _, res = run("ADD", net)
    wrong = dict(res, ips=[{"address": "10.1.2.77/24", "gateway": "10.1.2.1"}])
    rc, err = run("CHECK", dict(net, prevResult=wrong))
    assert rc == 1 and "lease 10.1.2.2 of container c1 is not in prevResult" in err["msg"]
    extra = dict(res, ips=res["ips"] + [{"address": "10.1.2.77/24"}])
    rc, err = run("CHECK", dict(net, prevResult=extra))
    assert rc == 1 and "10.1.2.77 (range set 0) is not reserved" in err["msg"]
    other = dict(res, ips=res["ips"] + [{"address": "192.168.0.5/24"}])   # another plugin's
    assert run("CHECK", dict(net, prevResult=other)) == (0, None)


def test_del_never_fails_for_missing_or_changed_things(net, tmp_path):
    assert run("DEL", net) == (0, None)                    # no directory at all
    assert not os.path.exists(tmp_path / "net1")           # and DEL did not make one
    run("ADD", net)
    changed = json.loads(json.dumps(net))
    changed["ipam"]["ranges"] = [[{"subnet": "10.1.2.1/24"}]]         # no longer valid
    assert run("DEL", changed) == (0, None)
    assert leases(net) == []
    for ipam in ({"dataDir": "relative/dir"}, {"dataDir": 5}, "not an object"):
        assert run("DEL", dict(net, ipam=ipam)) == (0, None)
    del changed["ipam"]
    assert run("DEL", changed) == (0, None)


def test_gc_lists(net):
    for cid in ("a", "b", "c"):
        run("ADD", net, cid=cid)
    assert run("GC", net) == (0, None)                     # no list: frees nothing
    assert len(leases(net)) == 3
    valid = [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "eth0"}]
    assert run("GC", dict(net, **{"cni.dev/attachments": valid})) == (0, None)
    assert leases(net) == ["10.1.2.2", "10.1.2.3"]
    assert run("GC", dict(net, **{"cni.dev/valid-attachments": valid[:1]})) == (0, None)
    assert leases(net) == ["10.1.2.2"]
    assert run("GC", dict(net, **{"cni.dev/valid-attachments": None})) == (0, None)
    assert leases(net) == []


@pytest.mark.parametrize("bad", ["x", [{"containerID": "a"}], [5], {"containerID": "a", "ifname": "e"}])
def test_gc_refuses_a_malformed_list_and_frees_nothing(net, bad):
    run("ADD", net)
    rc, err = run("GC", dict(net, **{"cni.dev/valid-attachments": bad}))
    assert rc == 1 and err["code"] == 7
    assert leases(net) == ["10.1.2.2"]


def test_status(net, tmp_path):
    assert run("STATUS", net) == (0, None)
    assert not os.path.exists(tmp_path / "net1")
    small = json.loads(json.dumps(net))
    small["ipam"]["ranges"] = [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.9.0.0/30"}]]
    run("ADD", small)
    rc, err = run("STATUS", small)
    assert rc == 1 and err["code"] == 50
    assert err["msg"] == ("host-local range set 1 (10.9.0.1-10.9.0.2) is full: 1 of 1 "
                          "addresses in use")
    (tmp_path / "file").write_text("")
    rc, err = run("STATUS", dict(net, ipam=dict(net["ipam"], dataDir=str(tmp_path / "file"))))
    assert rc == 1 and err["code"] == 50 and "not a directory" in err["msg"]


def test_cni_args_ip_and_unknown_keys(net):
    rc, res = run("ADD", net, args="IP=10.1.2.40")
    assert rc == 0 and res["ips"][0]["address"] == "10.1.2.40/24"
    rc, err = run("ADD", net, cid="c2", args="MAC=aa:bb:cc:dd:ee:ff")
    assert rc == 1 and err["code"] == 4 and "unknown keys MAC" in err["msg"]
    rc, res = run("ADD", net, cid="c2", args="IgnoreUnknown=1;MAC=aa;IP=10.1.2.41")
    assert rc == 0 and res["ips"][0]["address"] == "10.1.2.41/24"


def test_nothing_written_for_a_bad_config(net, tmp_path):
    bad = json.loads(json.dumps(net))
    bad["ipam"]["ranges"] = [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.0.0/16"}]]
    rc, err = run("ADD", bad)
    assert rc == 1 and err["code"] == 7
    rc, err = run("ADD", dict(net, ipam=dict(net["ipam"], resolvConf=str(tmp_path / "none"))))
    assert rc == 1 and err["code"] == 5
    assert os.listdir(tmp_path) == []


def test_no_module_state_between_in_process_runs(tmp_path):
    """bridge runs host-local in-process: two networks in one process stay apart."""
    for i, name in enumerate(("n1", "n2")):
        conf = {"cniVersion": "1.0.0", "name": name, "type": "host-local",
                "ipam": {"dataDir": str(tmp_path), "ranges": [[{"subnet": "10.%d.0.0/24" % i}]]}}
        for cid in ("a", "b"):
            rc, res = run("ADD", conf, cid=cid)
            assert rc == 0
        assert res["ips"][0]["address"] == "10.%d.0.3/24" % i


def test_import_path_has_no_pyroute2_nor_heavy_modules(tmp_path):
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "host-local",
                       "ipam": {"dataDir": str(tmp_path), "ranges": [[{"subnet": "10.1.0.0/24"}]]}})
    prog = ("import sys, os; sys.path[0:0] = %r\n"
            "os.environ.update(CNI_COMMAND='ADD', CNI_CONTAINERID='c1', CNI_NETNS='/x',"
            " CNI_IFNAME='eth0', CNI_PATH='/x', PYCNI_LOG='off')\n"
            "from cnilib.cni import skel\nimport plugins.host_local as p\n"
            "rc, out = skel.execute(p.PLUGIN, os.environ, stdin_data=%r)\nassert rc == 0, out\n"
            "print('\\n'.join(sorted(sys.modules)))" % ([ROOT] + SITE, conf.encode()))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", prog], capture_output=True,
                         text=True, check=True).stdout
    heavy = [m for m in out.split() if m.split(".")[0] in
             ("pyroute2", "ipaddress", "re", "json", "subprocess", "logging", "typing", "enum")]
    assert heavy == []
