"""Planted directory links in the state dirs are never followed (issue 16 item 1).

A symlink planted at any component below a configured directory (host-local's
network dir and its ``.pycni-attachments``, flannel's dataDir entries,
tuning's per-network dir, the suite's record dirs, libcni's ``results``) is
refused with code 5 by what would write there, and left alone, with what it
points at untouched, by what would read or sweep there (DEL, GC).  The
configured directory itself may be a link an operator made.  The plugins run
through ``skel.execute`` with no network namespace: host-local, and the GC of
flannel and tuning, need none.
"""

import json
import os

import pytest

from cnilib import flannel, tuning
from cnilib.base import errors, fsutil
from cnilib.base.log import Log
from cnilib.cni import skel
from cnilib.ipam import store as lstore
from cnilib.ipam.store import Store


def victim_dir(tmp_path, names):
    """A directory of files a sweep through a link would delete or a writer
    would write into: {name: content}, read back by ``contents``."""
    v = tmp_path / "victim"
    v.mkdir()
    for name in names:
        (v / name).write_text("precious %s\n" % name)
    return v


def contents(d):
    """{relative path: content} of every file under ``d`` (links not followed)."""
    out = {}
    for base, _dirs, files in os.walk(d):
        for n in files:
            p = os.path.join(base, n)
            with open(p) as f:
                out[os.path.relpath(p, d)] = f.read()
    return out


def run(plugin, command, conf, tmp_path, cid="c1", ifname="eth0", netns="/var/run/netns/x"):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": netns,
           "CNI_PATH": str(tmp_path / "nobin"), "PYCNI_LOG": str(tmp_path / "log"),
           "PYCNI_STATE_DIR": str(tmp_path / "state"), "PYCNI_RUN_DIR": str(tmp_path / "run")}
    rc, out = skel.execute(plugin, env, stdin_data=json.dumps(conf).encode())
    return rc, (json.loads(out) if out.strip() else None)


def log_text(tmp_path):
    p = tmp_path / "log"
    return p.read_text() if p.exists() else ""


# ---- host-local -----------------------------------------------------------------------------------

def hl_conf(tmp_path, **extra):
    return dict({"cniVersion": "1.1.0", "name": "net1", "type": "host-local",
                 "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                          "ranges": [[{"subnet": "10.1.2.0/24"}]]}}, **extra)


def hostlocal():
    import plugins.host_local as p
    return p.PLUGIN


def test_host_local_index_dir_planted_as_a_link(tmp_path):
    """GC swept every file of the link's target, DEL removed the entry through
    it and ADD wrote into it."""
    conf = hl_conf(tmp_path)
    assert run(hostlocal(), "ADD", conf, tmp_path, cid="live")[0] == 0
    assert run(hostlocal(), "ADD", conf, tmp_path, cid="c1")[0] == 0
    net = tmp_path / "ipam" / "net1"
    index = net / lstore.INDEX_DIR
    v = victim_dir(tmp_path, ["c1@eth0", "c2@eth0", "passwd", fsutil.TMP_PREFIX + "1-x"])
    before = contents(v)
    for n in os.listdir(index):
        os.unlink(index / n)
    os.rmdir(index)
    os.symlink(v, index)
    rc, err = run(hostlocal(), "ADD", conf, tmp_path, cid="c2")
    assert rc == 1 and err["code"] == 5 and str(index) in err["msg"] and "symbolic link" in err["msg"]
    assert sorted(n for n in os.listdir(net) if n[0].isdigit()) == ["10.1.2.2", "10.1.2.3"]  # undone
    assert run(hostlocal(), "DEL", conf, tmp_path, cid="c1")[0] == 0      # its lease goes
    assert sorted(n for n in os.listdir(net) if n[0].isdigit()) == ["10.1.2.2"]
    gc = dict(conf, **{"cni.dev/valid-attachments": []})
    assert run(hostlocal(), "GC", gc, tmp_path, cid="", ifname="", netns="")[0] == 0     # every other
    assert sorted(n for n in os.listdir(net) if n[0].isdigit()) == []
    assert contents(v) == before and os.path.islink(index)
    assert "%s is a symbolic link: not followed" % index in log_text(tmp_path)


def test_host_local_network_dir_planted_as_a_link(tmp_path):
    v = victim_dir(tmp_path, ["10.1.2.2", "10.1.2.3", "lock", "last_reserved_ip.0"])
    (v / "10.1.2.3").write_text("c1\r\neth0")         # what DEL would release through the link
    before = contents(v)
    (tmp_path / "ipam").mkdir()
    os.symlink(v, tmp_path / "ipam" / "net1")
    conf = hl_conf(tmp_path)
    rc, err = run(hostlocal(), "ADD", conf, tmp_path)
    assert rc == 1 and err["code"] == 5 and "net1 is a symbolic link" in err["msg"]
    rc, err = run(hostlocal(), "CHECK", conf, tmp_path)
    assert rc == 1 and err["code"] == 5
    rc, err = run(hostlocal(), "STATUS", conf, tmp_path, cid="", ifname="", netns="")
    assert rc == 1 and err["code"] == 50 and "symbolic link" in err["msg"]
    assert run(hostlocal(), "DEL", conf, tmp_path)[0] == 0
    gc = dict(conf, **{"cni.dev/valid-attachments": []})
    assert run(hostlocal(), "GC", gc, tmp_path, cid="", ifname="", netns="")[0] == 0
    assert contents(v) == before and os.path.islink(tmp_path / "ipam" / "net1")
    assert "DEL: nothing released: %s is a symbolic link" % (tmp_path / "ipam" / "net1") in log_text(tmp_path)


def test_store_readers_skip_links(tmp_path):
    v = victim_dir(tmp_path, ["10.9.9.9"])
    (v / "10.9.9.9").write_text("secret\r\neth0")
    data = tmp_path / "ipam"
    data.mkdir()
    os.symlink(v, data / "net2")
    s = Store(str(data), "net1", Log("host-local", {"PYCNI_LOG": "off"}))
    s.create()
    s.reserve("10.1.0.5", "c1", "eth0")
    problems = []
    leases, nets = lstore.read_leases([str(data)], problems)
    assert nets == {"net1"} and [le.ip for le in leases] == ["10.1.0.5"]
    assert problems == ["%s is a symbolic link: not followed" % (data / "net2")]


# ---- flannel -----------------------------------------------------------------------------------------

def test_flannel_gc_never_sweeps_through_a_link(tmp_path):
    import plugins.flannel as p
    v = victim_dir(tmp_path, ["dead1", "passwd"])
    before = contents(v)
    data = tmp_path / "flannel"
    flannel.save(str(data), "live", b'{"name":"cbr0","type":"bridge"}')
    flannel.save(str(data), "dead", b'{"name":"cbr0","type":"bridge"}')
    os.symlink(v, data / "linkdir")            # an entry that is a directory link
    os.symlink(v / "passwd", data / "linkfile")
    conf = {"cniVersion": "1.1.0", "name": "cbr0", "type": "flannel", "dataDir": str(data),
            "subnetFile": str(tmp_path / "subnet.env"),
            "cni.dev/valid-attachments": [{"containerID": "live", "ifname": "eth0"}]}
    (tmp_path / "nobin").mkdir()
    old = tmp_path / "nobin" / "bridge"            # a delegate GC is not forwarded to
    old.write_text("#!/bin/sh\necho '{\"cniVersion\":\"0.4.0\",\"supportedVersions\":[\"0.4.0\"]}'\n")
    old.chmod(0o755)
    assert run(p.PLUGIN, "GC", conf, tmp_path, cid="", ifname="", netns="")[0] == 0
    assert sorted(os.listdir(data)) == ["linkdir", "linkfile", "live"]
    assert contents(v) == before
    assert flannel.saved_entries(str(data)) == ["live"]


def test_flannel_save_refuses_no_dir_and_dataDir_may_be_a_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(real, tmp_path / "flannel")
    flannel.save(str(tmp_path / "flannel"), "c1", b"{}")        # the operator's link
    assert (real / "c1").read_bytes() == b"{}"
    v = victim_dir(tmp_path, ["x"])
    os.symlink(v / "x", real / "c2")
    flannel.save(str(tmp_path / "flannel"), "c2", b"{}")        # replaces the link
    assert contents(v) == {"x": "precious x\n"} and not os.path.islink(real / "c2")


# ---- tuning --------------------------------------------------------------------------------------------

def test_tuning_network_dir_planted_as_a_link(tmp_path):
    import plugins.tuning as p
    v = victim_dir(tmp_path, ["dead:eth0.json", "c1:eth0.json", "other.txt"])
    before = contents(v)
    data = tmp_path / "tuning"
    data.mkdir()
    os.symlink(v, data / "net1")
    gc = {"cniVersion": "1.1.0", "name": "net1", "type": "tuning", "dataDir": str(data),
          "cni.dev/valid-attachments": []}
    assert run(p.PLUGIN, "GC", gc, tmp_path, cid="", ifname="", netns="")[0] == 0
    assert contents(v) == before and os.path.islink(data / "net1")
    assert "symbolic link" in log_text(tmp_path)
    a = skel.CmdArgs(p.PLUGIN, "ADD", {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}, Log("t", {}))
    a.conf = {"name": "net1", "dataDir": str(data), "mtu": 1400}
    a.stdin = json.dumps(a.conf).encode()
    with pytest.raises(fsutil.NotFollowed):
        tuning.save_backup(a, tuning.settings(a), {"mtu": 1500})
    assert tuning.load_backup(str(data), "net1", "c1", "eth0") == (None, None)
    tuning.remove_backup(str(data), "net1", "c1", "eth0")
    assert contents(v) == before and not os.path.exists(v / ".lock")


# ---- the suite's records and libcni's cache ------------------------------------------------------------

def test_records_never_go_through_a_link(tmp_path, monkeypatch):
    from cnilib.firewall import naming, records
    monkeypatch.setenv("PYCNI_STATE_DIR", str(tmp_path / "state"))
    h = naming.attachment_hash("n", "c1", "eth0")
    v = victim_dir(tmp_path, [h])
    (v / h).write_text(json.dumps({"net": "n", "cid": "c1", "if": "eth0"}))
    (v / "masq").mkdir()
    (v / "masq" / h).write_text(json.dumps({"net": "n", "cid": "c1", "if": "eth0"}))
    before = contents(v)
    for planted in (("nft",), ("nft", "masq")):
        state = tmp_path / "state"
        if state.exists():
            import shutil
            shutil.rmtree(state)
        state.mkdir()
        if len(planted) == 2:
            (state / "nft").mkdir()
        os.symlink(v, state.joinpath(*planted))
        assert records.load("masq", "n", "c1", "eth0") is None
        assert records.scan("masq") == []
        assert records.remove("masq", "n", "c1", "eth0") is False
        assert records.unreadable("masq", "n", "c1", "eth0") is True     # DEL: find them by comment
        with pytest.raises(errors.IOFailure, match="symbolic link"):
            records.save("masq", "n", "c1", "eth0", {})
        assert contents(v) == before


def test_result_cache_never_goes_through_a_link(tmp_path):
    from cnilib.ops import resultcache
    v = victim_dir(tmp_path, ["net1-c1-eth0"])
    (v / "net1-c1-eth0").write_text(json.dumps({"kind": "cniCacheV1", "containerId": "c1",
                                                "ifName": "eth0", "networkName": "net1"}))
    before = contents(v)
    (tmp_path / "cache").mkdir()
    os.symlink(v, tmp_path / "cache" / "results")
    c = resultcache.Cache(str(tmp_path / "cache"))
    for fn in (c.attachments, lambda: c.read("net1", "c1", "eth0")):    # GC's listing, DEL's read
        with pytest.raises(errors.IOFailure, match="results is a symbolic link") as ei:
            fn()
        assert ei.value.code == 5
    c.remove("net1", "c1", "eth0")
    problems = []
    assert resultcache.read_cache(str(tmp_path / "cache"), problems) == []
    assert problems and "symbolic link" in problems[0]
    with pytest.raises(errors.IOFailure, match="symbolic link"):
        c.write(type("N", (), {"name": "net1", "raw": b"{}"})(),
                type("A", (), {"container_id": "c1", "ifname": "eth0", "netns": "", "args": [],
                               "cap_args": {}})(), {})
    assert contents(v) == before
