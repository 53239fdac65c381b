"""cnilib.tuning: names, MACs, merging of settings, saved values (no root)."""

import json
import os

import pytest

from cnilib import tuning
from cnilib.base import errors, paths
from cnilib.base.log import Log
from cnilib.cni import skel


@pytest.mark.parametrize("key,ifname,want", [
    ("net.ipv4.conf.IFNAME.arp_notify", "eth0", "net/ipv4/conf/eth0/arp_notify"),
    ("net.ipv4.conf.IFNAME.arp_notify", "eth0.100", "net/ipv4/conf/eth0.100/arp_notify"),
    ("net/ipv4/conf/eth0.100/forwarding", "x", "net/ipv4/conf/eth0.100/forwarding"),
    ("net.core.somaxconn", "eth0", "net/core/somaxconn"),
    ("net.ipv6.conf.IFNAME.IFNAME", "e", "net/ipv6/conf/e/IFNAME"),   # first one only
])
def test_sysctl_name(key, ifname, want):
    assert tuning.sysctl_name(key, ifname) == want


@pytest.mark.parametrize("key", [
    "kernel.hostname", "net", "", "net..ipv4", "net.ipv4.", "net/../kernel/x",
    "net.ipv4/../../kernel", "/net/ipv4/ip_forward", "net/ipv4//ip_forward", "vm.net.x",
    "net.ipv4.conf.IFNAME.x\x00", "Net.ipv4.ip_forward",
])
def test_sysctl_name_refused(key):
    with pytest.raises(errors.InvalidConfig):
        tuning.sysctl_name(key, "eth0")


def test_sysctl_name_ifname_cannot_escape():
    # skel refuses '/' in CNI_IFNAME; '..' as a whole name is refused here too
    with pytest.raises(errors.InvalidConfig):
        tuning.sysctl_name("net.ipv4.conf.IFNAME.x", "..")


@pytest.mark.parametrize("text,want", [
    ("0a:58:0A:f4:00:05", "0a:58:0a:f4:00:05"),
    ("0a-58-0a-f4-00-05", "0a:58:0a:f4:00:05"),
    ("0a58.0af4.0005", "0a:58:0a:f4:00:05"),
    (" 02:00:00:00:00:01 ", "02:00:00:00:00:01"),
])
def test_parse_mac(text, want):
    assert tuning.parse_mac(text) == want


@pytest.mark.parametrize("text", ["", "0a:58:0a:f4:00", "0a:58:0a:f4:00:05:06", "0a:58-0a:f4:00:05",
                                  "zz:58:0a:f4:00:05", "01:00:5e:00:00:01", "0a580af40005"])
def test_parse_mac_refused(text):
    with pytest.raises(errors.InvalidConfig):
        tuning.parse_mac(text)


def test_duplicate_sysctl_keys():
    dup = b'{"name":"n","sysctl":{"net.a.b":"1","net.a.b":"2"}}'
    with pytest.raises(errors.InvalidConfig, match="more than once"):
        tuning.check_duplicate_sysctls(dup)
    tuning.check_duplicate_sysctls(b'{"name":"n","sysctl":{"net.a.b":"1","net.a.c":"2"}}')
    # duplicates elsewhere are plain JSON's business, as with the reference
    tuning.check_duplicate_sysctls(b'{"name":"n","x":{"a":1,"a":2},"sysctl":{}}')


def test_allowlist(tmp_path):
    f = tmp_path / "allow.conf"
    f.write_text("^net\\.core\\.somaxconn$\n\n  ^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]+$  \n")
    tuning.check_allowlist(["net.core.somaxconn", "net.ipv4.conf.IFNAME.arp_notify"], str(f))
    with pytest.raises(errors.InvalidConfig, match="not allowed"):
        tuning.check_allowlist(["net.ipv4.ip_forward"], str(f))
    tuning.check_allowlist(["anything"], str(tmp_path / "missing"))
    f.write_text("([\n")
    with pytest.raises(errors.InvalidConfig, match="invalid pattern"):
        tuning.check_allowlist(["net.x"], str(f))


def cmdargs(conf, cni_args="", cmd="ADD"):
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_ARGS": cni_args,
           "PYCNI_LOG": "off"}
    a = skel.CmdArgs(skel.Plugin("tuning", cni_args=("MAC",)), cmd, env, Log("tuning", env))
    a.conf = dict({"cniVersion": "1.0.0", "name": "n", "type": "tuning"}, **conf)
    return a


def test_settings_merge_order():
    s = tuning.settings(cmdargs({"mac": "02:00:00:00:00:01", "mtu": 1400, "sysctl": {"net.a.b": "1"}}))
    assert (s.mac, s.mtu, s.promisc, s.allmulti, s.txqlen) == ("02:00:00:00:00:01", 1400, False, None, None)
    assert s.data_dir == paths.TUNING_DIR and s.link_changes()
    s = tuning.settings(cmdargs({"mac": "02:00:00:00:00:01"}, "MAC=02:00:00:00:00:02"))
    assert s.mac == "02:00:00:00:00:02"
    s = tuning.settings(cmdargs({"runtimeConfig": {"Mac": "02:00:00:00:00:03"}}, "MAC=02:00:00:00:00:02"))
    assert s.mac == "02:00:00:00:00:03"
    s = tuning.settings(cmdargs({"runtimeConfig": {"mac": "02:00:00:00:00:03"}, "sysctl": {"net.a.b": "1"},
                                 "args": {"cni": {"mac": "02:00:00:00:00:04", "promisc": True,
                                                  "allmulti": False, "txQLen": 0,
                                                  "sysctl": {"net.a.b": "2", "net.a.c": "3"}}}}))
    assert (s.mac, s.promisc, s.allmulti, s.txqlen) == ("02:00:00:00:00:04", True, False, 0)
    assert s.sysctl == {"net.a.b": "2", "net.a.c": "3"}
    assert not tuning.settings(cmdargs({"sysctl": {"net.a.b": "1"}})).link_changes()


@pytest.mark.parametrize("conf", [{"mtu": -1}, {"mtu": 1.5}, {"promisc": "true"}, {"sysctl": ["x"]},
                                  {"txQLen": "5"}, {"args": {"cni": {"mtu": "9000"}}},
                                  {"dataDir": ""}, {"allmulti": 1}])
def test_settings_refuse_bad_types(conf):
    with pytest.raises(errors.InvalidConfig):
        tuning.settings(cmdargs(conf))


def test_backup_keeps_first_values_and_gc(tmp_path):
    a = cmdargs({"dataDir": str(tmp_path)})
    s = tuning.settings(a)
    path = tuning.save_backup(a, s, {"mac": "02:00:00:00:00:01", "mtu": 1500})
    assert path == str(tmp_path / "n" / "c1:eth0.json")
    tuning.save_backup(a, s, {"mac": "02:00:00:00:00:09", "txQLen": 7})
    saved = json.loads(open(path).read())
    assert saved == {"network": "n", "containerID": "c1", "ifname": "eth0",
                     "mac": "02:00:00:00:00:01", "mtu": 1500, "txQLen": 7}
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert list(tuning.restore_order(saved)) == ["mtu", "mac", "txQLen"]
    other = cmdargs({"dataDir": str(tmp_path)})
    other.container_id = "c2"
    tuning.save_backup(other, s, {"mtu": 1500})
    assert tuning.gc(str(tmp_path), "n", {("c1", "eth0")}, a.log) == 1
    assert sorted(os.listdir(tmp_path / "n")) == [".lock", "c1:eth0.json"]
    assert tuning.gc(str(tmp_path), "absent", set(), a.log) == 0


def test_read_backup_tolerates_garbage(tmp_path):
    p = tmp_path / "x.json"
    assert tuning.read_backup(str(p)) is None
    p.write_text("{not json")
    assert tuning.read_backup(str(p)) is None
    p.write_text("[1]")
    assert tuning.read_backup(str(p)) is None


def test_read_backups_sees_what_save_backup_and_the_go_plugin_wrote(tmp_path):
    a = cmdargs({"dataDir": str(tmp_path)})
    mine = tuning.save_backup(a, tuning.settings(a), {"mtu": 1500})
    go = tmp_path / tuning.backup_name("c9", "eth1", legacy=True)
    go.write_text("{not json")
    (tmp_path / "n" / "odd.json").write_text("{}")                 # no separator: no ifname
    (tmp_path / "n" / ".pycni-tmp-1-x").write_text("{}")
    os.symlink(mine, str(tmp_path / "n" / "c3:eth0.json"))         # not followed
    problems = []
    got = {(b.network, b.cid, b.ifname, b.ok) for b in tuning.read_backups([str(tmp_path)], problems)}
    assert got == {("n", "c1", "eth0", True), (None, "c9", "eth1", False), ("n", "odd", None, True),
                   ("n", "c3", "eth0", False)}
    assert len(problems) == 1 and "c3:eth0.json" in problems[0]
    assert tuning.parse_backup_name(tuning.backup_name("a:b", "eth0")) == ("a:b", "eth0")
    assert tuning.parse_backup_name("lock") is None and tuning.parse_backup_name(".x.json") is None
    assert tuning.read_backups([str(tmp_path / "none")], problems) == [] and len(problems) == 1


def test_version_and_error_paths_stay_light():
    from test_imports import HEAVY, _modules_after
    mods = _modules_after(
        "import os\nos.environ.update(CNI_COMMAND='VERSION', PYCNI_LOG='off')\n"
        "from cnilib.cni import skel\nimport plugins.tuning as p\n"
        "skel.execute(p.PLUGIN, os.environ, stdin_data=b'{\"cniVersion\":\"1.0.0\"}')")
    assert sorted(m for m in mods if m.split(".")[0] in HEAVY) == []
    mods = _modules_after(
        "import os\nos.environ.update(CNI_COMMAND='ADD', CNI_CONTAINERID='c', CNI_NETNS='/x', "
        "CNI_IFNAME='eth0', PYCNI_LOG='off')\n"
        "from cnilib.cni import skel\nimport plugins.tuning as p\n"
        "skel.execute(p.PLUGIN, os.environ, stdin_data=b'{}')")
    assert not any(m.startswith(("pyroute2", "pydantic")) for m in mods)
