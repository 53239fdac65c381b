"""The runner's libcni logic without root: config lists, per-plugin stdin,
the result cache, the list verbs against recording fake plugins, the CLI."""

import base64
import hashlib
import json
import os
import stat

import pytest
from cnitest import cache_file, fake_calls, install_fake_plugins

from cnilib.base import errors
from cnilib.cni import version
from cnilib.ops import cli, resultcache, runner


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def netlist(version="1.0.0", plugins=({"type": "a"},), name="net1", **kw):
    conf = {"cniVersion": version, "name": name, "plugins": list(plugins)}
    conf.update(kw)
    return runner.list_from_bytes(json.dumps(conf).encode(), "test.conflist")


# ---- versions -----------------------------------------------------------------

@pytest.mark.parametrize("cv, cvs, want", [
    ("1.0.0", None, "1.0.0"),
    ("2.0.0", None, "2.0.0"),                      # taken as is without cniVersions
    ("0.4.0", ["0.3.1", "1.0.0", "1.1.0"], "1.1.0"),
    ("1.0.0", ["1.1.0", "2.0.0"], "1.1.0"),        # above CURRENT: ignored
    ("2.0.0", ["0.4.0"], "0.4.0"),
    ("", ["0.3.1"], "0.3.1"),
    ("1.0.0", ["3.0.0"], "1.0.0"),
    ("1.2.0", ["3.0.0"], "1.2.0"),                 # nothing usable: cniVersion stays
    ("1.0.0", [], "1.0.0"),
    ("0.3.1", ["0.10.0"], "0.10.0"),               # numeric, not lexical, comparison
])
def test_pick_version(cv, cvs, want):
    assert runner.pick_version(cv, cvs) == want


def test_parse_version_as_libcni():
    assert version.libcni_vtuple("") == (0, 1, 0)
    assert version.libcni_vtuple("1") == (1, 0, 0)
    assert version.libcni_vtuple("0.4") == (0, 4, 0)
    assert version.libcni_ge("1", "0.4.0") and not version.libcni_ge("", "0.2")
    for bad in ("1.0.0.0", "x", "1.a.0", "1..0", "-1.0.0"):
        with pytest.raises(errors.IncompatibleVersion):
            version.libcni_vtuple(bad)
        assert version.vtuple(bad) is None
    for lenient_only in ("", "1", "0.4"):       # the plugins' reader stays strict
        assert version.vtuple(lenient_only) is None
    with pytest.raises(errors.IncompatibleVersion, match="cniVersions"):
        netlist(cniVersions=["1.0.0", "one"])


# ---- loading ------------------------------------------------------------------

def test_conflist_fields(tmp_path):
    p = write(tmp_path / "10.conflist", {
        "cniVersion": "0.4.0", "cniVersions": ["1.0.0"], "name": "n", "disableCheck": "TRUE",
        "disableGC": False, "plugins": [{"type": "a"}, {"type": "b", "capabilities": {"mac": True}}]})
    net = runner.load_file(p)
    assert (net.name, net.version, net.disable_check, net.disable_gc) == ("n", "1.0.0", True, False)
    assert net.types() == ["a", "b"]
    assert net.raw == open(p, "rb").read()        # the cache keeps the file's bytes


def test_single_conf_is_up_converted(tmp_path):
    conf = {"cniVersion": "0.3.1", "name": "single", "type": "loopback", "x": 1}
    net = runner.load_file(write(tmp_path / "10-single.conf", conf))
    assert (net.name, net.version, net.plugins) == ("single", "0.3.1", [conf])
    assert json.loads(net.raw) == {"cniVersion": "0.3.1", "name": "single", "plugins": [conf]}
    assert net.raw.startswith(b'{"cniVersion"')   # Go map: sorted keys


@pytest.mark.parametrize("conf, what", [
    ({"cniVersion": "1.0.0", "plugins": [{"type": "a"}]}, "no \"name\""),
    ({"name": "n", "plugins": []}, "no plugins in list"),
    ({"name": "n", "plugins": {"type": "a"}}, "expected a list"),
    ({"name": "n", "plugins": [{"x": 1}]}, "no \"type\""),
    ({"name": "n", "plugins": [{"type": "../bin/sh"}]}, "plain plugin name"),
    ({"name": "n", "plugins": [{"type": "a", "capabilities": {"mac": "yes"}}]}, "object of booleans"),
    ({"name": "n", "disableCheck": "maybe", "plugins": [{"type": "a"}]}, "disableCheck"),
    ({"name": "n", "cniVersion": 1, "plugins": [{"type": "a"}]}, "cniVersion"),
    ({"name": "n", "loadOnlyInlinedPlugins": True}, "loadOnlyInlinedPlugins"),
    ({"name": "n"}, "has no plugins"),
    ("[1, 2]", "expected an object"),
    ("{bad", "cannot decode"),
])
def test_bad_conflists(tmp_path, conf, what):
    p = write(tmp_path / "bad.conflist", conf)
    with pytest.raises(errors.CniError, match=what) as ei:
        runner.load_file(p)
    assert p in ei.value.msg


def test_plugin_files_beside_the_list(tmp_path):
    write(tmp_path / "10.conflist", {"cniVersion": "1.1.0", "name": "n", "plugins": [{"type": "a"}]})
    write(tmp_path / "n" / "20-c.conf", {"type": "c"})
    write(tmp_path / "n" / "10-b.conf", {"type": "b"})
    write(tmp_path / "n" / "ignored.json", {"type": "z"})
    assert runner.load_file(str(tmp_path / "10.conflist")).types() == ["a", "b", "c"]
    write(tmp_path / "11.conflist", {"cniVersion": "1.1.0", "name": "n", "loadOnlyInlinedPlugins": True,
                                     "plugins": [{"type": "a"}]})
    assert runner.load_file(str(tmp_path / "11.conflist")).types() == ["a"]
    write(tmp_path / "m.conflist", {"cniVersion": "1.1.0", "name": "m"})
    write(tmp_path / "m" / "x.conf", {"type": "x"})
    assert runner.load_file(str(tmp_path / "m.conflist")).types() == ["x"]


def test_find_network_order_and_skips(tmp_path):
    write(tmp_path / "00-a.conf", {"cniVersion": "0.3.1", "name": "dup", "type": "from-conf"})
    write(tmp_path / "50-b.conflist", {"cniVersion": "1.0.0", "name": "dup",
                                       "plugins": [{"type": "from-list"}]})
    write(tmp_path / "10-broken.conflist", "{not json")
    write(tmp_path / "20-wrongext.conf", {"name": "wrong", "plugins": [{"type": "a"}]})
    write(tmp_path / "30-other.json", {"cniVersion": "1.0.0", "name": "other", "type": "o"})
    write(tmp_path / "README", "not a config")
    net, skipped = runner.find_network(str(tmp_path), "dup")
    assert net.types() == ["from-list"]             # libcni: conflists before .conf
    assert [os.path.basename(p) for p, _ in skipped] == ["10-broken.conflist"]
    net, _ = runner.find_network(str(tmp_path), "other")
    assert net.types() == ["o"]
    with pytest.raises(runner.NetworkNotFound) as ei:
        runner.find_network(str(tmp_path), "wrong")
    assert "20-wrongext.conf" in ei.value.details and "rename it" in ei.value.details
    with pytest.raises(runner.NetworkNotFound, match="no network config named 'x'"):
        runner.find_network(str(tmp_path / "missing-dir"), "x")
    order = [os.path.basename(p) for p, _ in runner.load_all(str(tmp_path))]
    assert order == ["00-a.conf", "10-broken.conflist", "20-wrongext.conf", "30-other.json", "50-b.conflist"]


# ---- per-plugin stdin ----------------------------------------------------------

PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}


def test_build_config_injects_name_version_prev():
    net = netlist("1.0.0", name="net1")
    plugin = {"type": "a", "name": "other", "cniVersion": "0.1.0", "k": [1]}
    c = runner.build_config(net, plugin, None, runner.Attachment("c", "/n", "eth0"))
    assert c == {"type": "a", "name": "net1", "cniVersion": "1.0.0", "k": [1]}
    assert plugin["name"] == "other"                 # the list's object is not modified
    c = runner.build_config(net, plugin, PREV, runner.Attachment("c", "/n", "eth0"))
    assert c["prevResult"] == PREV


def test_runtime_config_from_enabled_capabilities():
    net = netlist()
    caps = {"portMappings": [{"hostPort": 8080}], "mac": "c2:11:22:33:44:55", "bandwidth": {}}
    att = runner.Attachment("c", "/n", "eth0", cap_args=caps)
    plugin = {"type": "a", "capabilities": {"portMappings": True, "mac": False, "ips": True},
              "runtimeConfig": {"static": 1}}
    c = runner.build_config(net, plugin, None, att)
    assert c["runtimeConfig"] == {"portMappings": [{"hostPort": 8080}]}   # replaced, not merged
    assert c["capabilities"] == plugin["capabilities"]                    # libcni keeps it
    no_match = dict(plugin, capabilities={"ips": True})
    assert runner.build_config(net, no_match, None, att)["runtimeConfig"] == {"static": 1}
    assert "runtimeConfig" not in runner.build_config(net, {"type": "a"}, None, att)


def test_gc_and_status_configs():
    net = netlist("1.1.0")
    plugin = {"type": "a", "capabilities": {"mac": True}}
    c = runner.gc_config(net, plugin, [("c1", "eth0"), ("c2", "eth1")])
    va = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "eth1"}]
    assert c["cni.dev/valid-attachments"] == va and c["cni.dev/attachments"] == va
    assert "runtimeConfig" not in c and "prevResult" not in c
    assert runner.status_config(net, plugin) == dict(plugin, name="net1", cniVersion="1.1.0")


def test_encode_config_sorts_keys_like_a_go_map():
    assert runner.encode_config({"type": "a", "name": "n", "b": {"z": 1, "a": 2}}) == \
        b'{"b":{"a":2,"z":1},"name":"n","type":"a"}'


def test_plugin_env_sets_all_six():
    base = {"PATH": "/bin", "CNI_NETNS": "/stale", "OTHER": "x"}
    env = runner.plugin_env("DEL", runner.Attachment("c1", "", "eth0", [("A", "1"), ("B", "x=y")]),
                            ["/p1", "/p2"], base)
    assert env == {"PATH": "/bin", "OTHER": "x", "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1",
                   "CNI_NETNS": "", "CNI_ARGS": "A=1;B=x=y", "CNI_IFNAME": "eth0",
                   "CNI_PATH": "/p1:/p2"}
    env = runner.plugin_env("GC", None, ["/p"], {})
    assert env == {"CNI_COMMAND": "GC", "CNI_CONTAINERID": "", "CNI_NETNS": "", "CNI_ARGS": "",
                   "CNI_IFNAME": "", "CNI_PATH": "/p"}


def test_parse_cni_args_keeps_order():
    assert runner.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=p;;IP=10.0.0.5/24;") == [
        ("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p"), ("IP", "10.0.0.5/24")]
    for bad in ("novalue", "=v"):
        with pytest.raises(errors.InvalidEnvironment):
            runner.parse_cni_args(bad)


# ---- the result cache ----------------------------------------------------------

# What libcni >= 1.2 writes for this attachment (Go struct order, Go maps sorted).
CONFLIST = b'{"cniVersion":"1.0.0","name":"testnet","plugins":[{"type":"a"}]}\n'
RESULT_100 = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
              "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}]}
GO_CACHE = (
    '{"kind":"cniCacheV1","containerId":"ctr1","config":"%s","ifName":"eth0",'
    '"networkName":"testnet","netns":"/var/run/netns/x",'
    '"cniArgs":[["IgnoreUnknown","1"],["K8S_POD_NAME","p"]],'
    '"capabilityArgs":{"portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"}]},'
    '"result":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],'
    '"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1","interface":0}]}}'
    % base64.b64encode(CONFLIST).decode())
ATT = runner.Attachment("ctr1", "/var/run/netns/x", "eth0", [("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p")],
                        {"portMappings": [{"hostPort": 8080, "protocol": "tcp", "containerPort": 80}]})


def test_cache_encoding_matches_libcni():
    net = runner.list_from_bytes(CONFLIST)
    assert resultcache.Cache("/x").encode(net, ATT, RESULT_100).decode() == GO_CACHE
    bare = runner.Attachment("c", "", "eth0")
    assert resultcache.Cache("/x").encode(net, bare, RESULT_100).decode().startswith(
        '{"kind":"cniCacheV1","containerId":"c","config":"%s","ifName":"eth0","networkName":"testnet",'
        '"result":' % base64.b64encode(CONFLIST).decode())


def test_cache_write_modes_and_read_back(tmp_path):
    net = runner.list_from_bytes(CONFLIST)
    cache = resultcache.Cache(str(tmp_path / "cni"))
    cache.write(net, ATT, RESULT_100)
    f = cache_file(tmp_path / "cni", "testnet", "ctr1", "eth0")
    assert open(f).read() == GO_CACHE
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(f)).st_mode) == 0o700
    assert [n for n in os.listdir(os.path.dirname(f))] == [os.path.basename(f)]   # no temp left
    assert cache.result(net, ATT) == RESULT_100
    for v, shape in (("0.4.0", "version"), ("0.3.1", "version"), ("0.2.0", "ip4")):
        conv = cache.result(runner.list_from_bytes(CONFLIST.replace(b"1.0.0", v.encode())), ATT)
        assert conv["cniVersion"] == v and shape in json.dumps(conv)


def test_cache_reads_what_libcni_wrote(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "testnet-ctr1-eth0").write_text(GO_CACHE)
    (results / "testnet-ctr2-eth1").write_text(GO_CACHE.replace("ctr1", "ctr2").replace(
        '"ifName":"eth0"', '"ifName":"eth1"'))
    (results / "other-ctr3-eth0").write_text(GO_CACHE.replace('"networkName":"testnet"',
                                                              '"networkName":"other"'))
    (results / ".pycni-tmp-1-abcd").write_text(GO_CACHE)
    (results / "testnet-legacy-eth0").write_text(json.dumps(RESULT_100))
    (results / "testnet-junk-eth0").write_text("{junk")
    cache = resultcache.Cache(str(tmp_path))
    atts = cache.attachments("testnet")
    assert [(a.container_id, a.ifname) for a in atts] == [("ctr1", "eth0"), ("ctr2", "eth1")]
    a = atts[0]
    assert (a.netns, a.args, a.config) == ("/var/run/netns/x", ATT.args, CONFLIST)
    assert a.cap_args == ATT.cap_args
    assert len(cache.attachments()) == 3
    net = runner.list_from_bytes(CONFLIST)
    legacy = runner.Attachment("legacy", "", "eth0")
    assert cache.result(net, legacy) == RESULT_100          # a bare result: libcni's legacy form
    with pytest.raises(errors.DecodingFailure):
        cache.result(net, runner.Attachment("junk", "", "eth0"))
    assert cache.result(net, runner.Attachment("none", "", "eth0")) is None
    # the tolerant reader whois and doctor use: the same entries, and why the others are unusable
    problems = []
    every = resultcache.read_cache(str(tmp_path), problems)
    usable = [e for e in every if e.problem is None]
    assert [e.path for e in usable] == [a.path for a in cache.attachments()] and problems == []
    why = {os.path.basename(e.path): e.problem for e in every if e.problem}
    assert sorted(why) == ["testnet-junk-eth0", "testnet-legacy-eth0"]
    assert why["testnet-junk-eth0"].startswith("not JSON (")
    assert why["testnet-legacy-eth0"] == "not a cniCacheV1 entry (a legacy bare result: no key, no netns)"
    assert runner.cached_attachment(usable[0]).args == ATT.args


def test_cache_readers_never_follow_a_planted_symlink(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    secret = tmp_path / "secret"
    secret.write_text(GO_CACHE)
    os.symlink(str(secret), str(results / "testnet-ctr1-eth0"))
    (results / "dir-ctr-eth0").mkdir()
    assert resultcache.Cache(str(tmp_path)).attachments() == []
    problems = []
    assert resultcache.read_cache(str(tmp_path), problems) == []
    assert sorted(p.split(": ")[0] for p in problems) == [
        "cannot read %s" % (results / "dir-ctr-eth0"), "cannot read %s" % (results / "testnet-ctr1-eth0")]
    with pytest.raises(errors.IOFailure):
        resultcache.Cache(str(tmp_path)).read("testnet", "ctr1", "eth0")


# ---- list verbs against fake plugins -------------------------------------------

@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Fake plugins a, b, c in tmp; their calls recorded in FAKE_RECORD."""
    record = str(tmp_path / "calls.jsonl")
    monkeypatch.setenv("FAKE_RECORD", record)
    bindir = install_fake_plugins(str(tmp_path / "bin"), "a", "b", "c")

    class Fake:
        path = [str(tmp_path / "empty"), bindir]
        cache_dir = str(tmp_path / "cache")

        def runner(self):
            return runner.Runner(self.path, self.cache_dir)

        def calls(self):
            out = fake_calls(record)
            if os.path.exists(record):
                os.unlink(record)
            return out
    return Fake()


def chain(version="1.0.0", **kw):
    plugins = [{"type": "a"}, {"type": "b", "capabilities": {"portMappings": True}}, {"type": "c"}]
    for t, extra in kw.items():
        plugins = [dict(p, **extra) if p["type"] == t else p for p in plugins]
    return netlist(version, plugins)


ATT2 = runner.Attachment("ctr1", "/var/run/netns/x", "eth0", [("IgnoreUnknown", "1")],
                         {"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]})


def test_add_chains_prev_results_and_caches(fake):
    r = fake.runner()
    net = chain(c={"fake": {"result": dict(RESULT_100, cniVersion="")}})
    res = r.add(net, ATT2)
    calls = fake.calls()
    assert [(c["type"], c["command"]) for c in calls] == [("a", "ADD"), ("b", "ADD"), ("c", "ADD")]
    assert "prevResult" not in calls[0]["conf"]
    first = calls[1]["conf"]["prevResult"]
    assert first["ips"][0]["address"] == "10.9.0.2/24"                 # a's made-up result
    assert calls[2]["conf"]["prevResult"] == first                      # b passed it on
    assert calls[1]["conf"]["runtimeConfig"] == {"portMappings": ATT2.cap_args["portMappings"]}
    assert "runtimeConfig" not in calls[0]["conf"]
    for c in calls:
        assert c["conf"]["name"] == "net1" and c["conf"]["cniVersion"] == "1.0.0"
        assert c["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1",
                            "CNI_NETNS": "/var/run/netns/x", "CNI_ARGS": "IgnoreUnknown=1",
                            "CNI_IFNAME": "eth0", "CNI_PATH": ":".join(fake.path)}
    assert res == dict(RESULT_100)                                      # cniVersion fixed up
    cached = json.load(open(cache_file(fake.cache_dir, "net1", "ctr1", "eth0")))
    assert cached["result"] == res and cached["cniArgs"] == [["IgnoreUnknown", "1"]]
    assert base64.b64decode(cached["config"]) == net.raw


def test_add_stops_at_the_first_failure(fake):
    r = fake.runner()
    net = chain(b={"fake": {"fail": {"ADD": [7, "bad bridge", "expected x"]}}})
    with pytest.raises(runner.PluginFailed) as ei:
        r.add(net, ATT2)
    e = ei.value
    assert (e.code, e.plugin_type, e.details) == (7, "b", "expected x")
    assert e.msg == 'plugin type="b" failed (add): bad bridge'
    assert [c["type"] for c in fake.calls()] == ["a", "b"]
    assert not os.path.exists(cache_file(fake.cache_dir, "net1", "ctr1", "eth0"))


@pytest.mark.parametrize("raw, what", [
    ([0, "", ""], "printed no result"),
    ([0, "hello", ""], "not JSON"),
    ([0, "[1]", ""], "expected an object"),
    ([0, '{"cniVersion": "9.9.9"}', ""], "9.9.9"),
    ([1, "", "boom on stderr"], "boom on stderr"),
    ([2, "", ""], "exit status 2 and no error message"),
    ([1, "garbage", ""], "printed no CNI error: garbage"),
    ([1, '{"msg": "no code"}', ""], "no code"),
])
def test_add_bad_plugin_output(fake, raw, what):
    net = chain(a={"fake": {"raw": {"ADD": raw}}})
    with pytest.raises(errors.CniError, match=what) as ei:
        fake.runner().add(net, ATT2)
    assert ei.value.msg.startswith('plugin type="a" failed (add): ')


def test_missing_and_unnamed_plugins(fake):
    with pytest.raises(runner.PluginFailed, match='type="zz".*failed to find plugin'):
        fake.runner().add(netlist("1.0.0", [{"type": "zz", "name": "x"}]), ATT2)
    with pytest.raises(runner.PluginFailed, match="CNI_PATH is empty") as ei:
        runner.Runner([], fake.cache_dir).add(chain(), ATT2)
    assert ei.value.code == 4


def test_stderr_of_a_successful_plugin_is_passed_on(fake, capsys):
    fake.runner().add(chain(a={"fake": {"stderr": "note from a\n"}}), ATT2)
    assert "note from a" in capsys.readouterr().err


def test_del_reverse_with_cached_prev_result(fake):
    r = fake.runner()
    net = chain()
    res = r.add(net, ATT2)
    fake.calls()
    r.delete(net, ATT2)
    calls = fake.calls()
    assert [(c["type"], c["command"]) for c in calls] == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert all(c["conf"]["prevResult"] == res for c in calls)
    assert calls[1]["conf"]["runtimeConfig"] == {"portMappings": ATT2.cap_args["portMappings"]}
    assert not os.path.exists(cache_file(fake.cache_dir, "net1", "ctr1", "eth0"))
    r.delete(net, ATT2)                                     # again: no cache, no prevResult
    assert all("prevResult" not in c["conf"] for c in fake.calls())


def test_del_below_040_never_sends_prev_result(fake):
    r = fake.runner()
    net = chain("0.3.1")
    r.add(net, ATT2)
    fake.calls()
    r.delete(net, ATT2)
    assert all("prevResult" not in c["conf"] for c in fake.calls())


def test_del_converts_the_cached_result_to_the_list_version(fake):
    r = fake.runner()
    r.add(chain("1.0.0"), ATT2)
    fake.calls()
    r.delete(chain("0.4.0"), ATT2)            # the config was edited since ADD
    prev = fake.calls()[0]["conf"]["prevResult"]
    assert prev["cniVersion"] == "0.4.0" and prev["ips"][0]["version"] == "4"


def test_del_failure_stops_and_keeps_the_cache(fake):
    r = fake.runner()
    r.add(chain(), ATT2)
    fake.calls()
    with pytest.raises(runner.PluginFailed) as ei:
        r.delete(chain(b={"fake": {"fail": {"DEL": [11, "busy"]}}}), ATT2)
    assert ei.value.code == 11 and "failed (delete): busy" in ei.value.msg
    assert [c["type"] for c in fake.calls()] == ["c", "b"]
    assert os.path.exists(cache_file(fake.cache_dir, "net1", "ctr1", "eth0"))


def test_del_drops_an_unreadable_cache(fake):
    f = cache_file(fake.cache_dir, "net1", "ctr1", "eth0")
    os.makedirs(os.path.dirname(f))
    open(f, "w").write("{broken")
    r = fake.runner()
    r.delete(chain(), ATT2)
    assert all("prevResult" not in c["conf"] for c in fake.calls())
    assert not os.path.exists(f) and "unreadable cached result" in r.notes[0]


def test_check(fake):
    r = fake.runner()
    res = r.add(chain(), ATT2)
    fake.calls()
    assert r.check(chain(), ATT2) is True
    calls = fake.calls()
    assert [(c["type"], c["command"]) for c in calls] == [("a", "CHECK"), ("b", "CHECK"), ("c", "CHECK")]
    assert all(c["conf"]["prevResult"] == res for c in calls)
    with pytest.raises(runner.PluginFailed) as ei:
        r.check(chain(a={"fake": {"fail": {"CHECK": [999, "lo is down"]}}}), ATT2)
    assert ei.value.code == 999 and [c["type"] for c in fake.calls()] == ["a"]
    with pytest.raises(errors.IncompatibleVersion, match="does not support the CHECK command"):
        r.check(chain("0.3.1"), ATT2)
    assert r.check(netlist("1.0.0", [{"type": "a"}], disableCheck=True), ATT2) is False
    assert fake.calls() == []
    open(cache_file(fake.cache_dir, "net1", "ctr1", "eth0"), "w").write("{broken")
    with pytest.raises(errors.DecodingFailure, match="failed to get network 'net1' cached result"):
        r.check(chain(), ATT2)


def test_check_without_a_cache_still_runs(fake):
    assert fake.runner().check(chain("0.4.0"), ATT2)
    assert all("prevResult" not in c["conf"] for c in fake.calls())


@pytest.mark.parametrize("cid, ifname, err", [
    ("../../etc", "eth0", errors.InvalidEnvironment),
    ("c1", "a/b", errors.InvalidEnvironment),
    ("", "eth0", errors.InvalidEnvironment),
    ("c1", "", errors.InvalidEnvironment),
])
def test_attachment_names_are_checked_on_every_verb(fake, cid, ifname, err):
    att = runner.Attachment(cid, "/n", ifname)
    for verb in ("add", "delete", "check"):
        with pytest.raises(err):
            getattr(fake.runner(), verb)(chain(), att)
    assert fake.calls() == []


def test_status(fake):
    r = fake.runner()
    assert r.status(chain("1.0.0")) is False and fake.calls() == []
    assert r.status(chain("1.1.0")) is True
    calls = fake.calls()
    assert [(c["type"], c["command"]) for c in calls] == [("a", "STATUS"), ("b", "STATUS"), ("c", "STATUS")]
    assert calls[1]["conf"] == {"type": "b", "capabilities": {"portMappings": True}, "name": "net1",
                                "cniVersion": "1.1.0"}
    assert calls[0]["env"] == {"CNI_COMMAND": "STATUS", "CNI_CONTAINERID": "", "CNI_NETNS": "",
                               "CNI_ARGS": "", "CNI_IFNAME": "", "CNI_PATH": ":".join(fake.path)}
    with pytest.raises(runner.PluginFailed) as ei:
        r.status(chain("1.1.0", b={"fake": {"fail": {"STATUS": [50, "no subnet.env"]}}}))
    assert ei.value.code == 50 and [c["type"] for c in fake.calls()] == ["a", "b"]


def _add_three(fake, net):
    r = fake.runner()
    for cid in ("ctr1", "ctr2", "ctr3"):
        r.add(net, runner.Attachment(cid, "/var/run/netns/" + cid, "eth0", [("K", cid)],
                                     {"portMappings": [{"hostPort": int(cid[-1])}]}))
    fake.calls()
    return r


def test_gc_deletes_stale_cached_attachments_then_sends_gc(fake):
    net = chain("1.1.0")
    r = _add_three(fake, net)
    plan = r.plan_gc(net, [("ctr2", "eth0"), ("gone", "eth0"), ("ctr2", "eth0")])
    assert plan.valid == [("ctr2", "eth0"), ("gone", "eth0")]
    assert [c.container_id for c in plan.stale] == ["ctr1", "ctr3"]
    r.gc(plan)
    calls = fake.calls()
    assert [(c["type"], c["command"], c["env"]["CNI_CONTAINERID"]) for c in calls] == [
        ("c", "DEL", "ctr1"), ("b", "DEL", "ctr1"), ("a", "DEL", "ctr1"),
        ("c", "DEL", "ctr3"), ("b", "DEL", "ctr3"), ("a", "DEL", "ctr3"),
        ("a", "GC", ""), ("b", "GC", ""), ("c", "GC", "")]
    d = calls[1]      # the stale DEL runs with the cached netns, CNI_ARGS and capability args
    assert (d["env"]["CNI_NETNS"], d["env"]["CNI_ARGS"]) == ("/var/run/netns/ctr1", "K=ctr1")
    assert d["conf"]["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert d["conf"]["prevResult"]["cniVersion"] == "1.1.0"
    va = [{"containerID": "ctr2", "ifname": "eth0"}, {"containerID": "gone", "ifname": "eth0"}]
    for g in calls[6:]:
        assert g["conf"]["cni.dev/valid-attachments"] == va == g["conf"]["cni.dev/attachments"]
        assert g["env"]["CNI_NETNS"] == "" and g["env"]["CNI_IFNAME"] == ""
    assert [c.container_id for c in r.cache.attachments("net1")] == ["ctr2"]


def test_gc_goes_on_after_errors_and_joins_them(fake):
    net = chain("1.1.0", b={"fake": {"fail": {"DEL": [11, "busy"], "GC": [5, "disk"]}}})
    r = _add_three(fake, chain("1.1.0"))
    with pytest.raises(runner.GcFailed) as ei:
        r.gc(r.plan_gc(net, [("ctr2", "eth0")]))
    e = ei.value
    assert e.code == 11 and len(e.errors) == 3
    assert e.msg.splitlines()[0].startswith("failed to delete stale attachment ctr1 eth0: plugin type=\"b\"")
    assert e.msg.splitlines()[2] == "failed to GC plugin b: disk"
    assert [c["command"] for c in fake.calls()].count("GC") == 3
    assert len(r.cache.attachments("net1")) == 3            # failed DELs keep their cache


def test_gc_before_110_and_disabled(fake):
    r = _add_three(fake, chain("1.0.0"))
    plan = r.gc(r.plan_gc(chain("1.0.0"), [("ctr1", "eth0")]))
    assert plan.gc_plugins == [] and [c.container_id for c in plan.deleted] == ["ctr2", "ctr3"]
    assert "GC" not in [c["command"] for c in fake.calls()]
    off = netlist("1.1.0", [{"type": "a"}], disableGC=True)
    plan = r.gc(r.plan_gc(off, []))
    assert plan.disabled and plan.stale == [] and fake.calls() == []


# ---- the CLI -------------------------------------------------------------------

@pytest.fixture
def env(tmp_path, fake, monkeypatch):
    confdir = tmp_path / "net.d"
    write(confdir / "10-net1.conflist", {
        "cniVersion": "1.0.0", "cniVersions": ["1.1.0"], "name": "net1",
        "plugins": [{"type": "a"}, {"type": "b", "capabilities": {"portMappings": True}}]})
    write(confdir / "20-bad.conflist", {
        "cniVersion": "1.1.0", "name": "bad", "plugins": [{"type": "a", "fake": {"fail": {
            "ADD": [7, "bad conf", "expected y"], "STATUS": [50, "not ready"]}}}]})
    for k in ("CNI_IFNAME", "CNI_ARGS", "CAP_ARGS", "PYCNI_CACHE_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETCONFPATH", str(confdir))
    monkeypatch.setenv("CNI_PATH", ":".join(fake.path))
    monkeypatch.setenv("PYCNI_CACHE_DIR", fake.cache_dir)
    monkeypatch.chdir(tmp_path)
    return fake


def cnitool_id(netns):
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


def test_cli_add_del_like_cnitool(env, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p")
    monkeypatch.setenv("CAP_ARGS", '{"portMappings": [{"hostPort": 80}]}')
    assert cli.main(["add", "net1", "ns/../myns"]) == 0
    netns = str(tmp_path / "myns")
    res = json.loads(capsys.readouterr().out)
    assert res["cniVersion"] == "1.1.0" and res["interfaces"][0]["sandbox"] == netns
    calls = env.calls()
    cid = cnitool_id(netns)
    assert calls[0]["env"]["CNI_CONTAINERID"] == cid and calls[0]["env"]["CNI_IFNAME"] == "eth0"
    assert calls[0]["env"]["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=p"
    assert calls[1]["conf"]["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}
    assert os.path.exists(cache_file(env.cache_dir, "net1", cid, "eth0"))
    assert cli.main(["check", "net1", netns]) == 0
    assert [c["command"] for c in env.calls()] == ["CHECK", "CHECK"]
    assert cli.main(["del", "net1", netns]) == 0
    assert capsys.readouterr().out == ""
    assert all(c["conf"]["prevResult"] == res for c in env.calls())


def test_cli_ifname_and_container_id(env, capsys, monkeypatch):
    monkeypatch.setenv("CNI_IFNAME", "net7")
    assert cli.main(["add", "net1", "/run/netns/x", "--container-id", "c9"]) == 0
    assert env.calls()[0]["env"]["CNI_IFNAME"] == "net7"
    assert cli.main(["add", "net1", "/run/netns/x", "-i", "eth3", "--container-id", "c9"]) == 0
    assert env.calls()[0]["env"]["CNI_IFNAME"] == "eth3"
    assert os.path.exists(cache_file(env.cache_dir, "net1", "c9", "net7"))
    assert cli.main(["del", "net1", "--container-id", "c9"]) == 0        # no netns needed for DEL
    assert env.calls()[0]["env"]["CNI_NETNS"] == ""
    capsys.readouterr()
    assert cli.main(["del", "net1"]) == 1
    assert "needs a netns path" in capsys.readouterr().err


def test_cli_errors_are_readable(env, capsys, monkeypatch):
    assert cli.main(["add", "bad", "/run/netns/x"]) == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.splitlines() == [
        'pycni add bad: plugin type="a" failed (add): bad conf',
        "  code 7 (invalid network config)", "  details: expected y"]
    assert cli.main(["status", "bad"]) == 1
    assert "code 50 (plugin not available)" in capsys.readouterr().err
    assert cli.main(["add", "nope", "/run/netns/x"]) == 1
    assert "no network config named 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("CAP_ARGS", "[1]")
    assert cli.main(["add", "net1", "/run/netns/x"]) == 1
    assert "CAP_ARGS is a JSON list" in capsys.readouterr().err


def test_cli_status_notes_old_versions(env, capsys, tmp_path):
    write(tmp_path / "net.d" / "30-old.conflist", {"cniVersion": "1.0.0", "name": "old",
                                                    "plugins": [{"type": "a"}]})
    assert cli.main(["status", "old"]) == 0
    assert "has no STATUS" in capsys.readouterr().err and env.calls() == []
    assert cli.main(["status", "net1", "/ignored"]) == 0
    assert [c["command"] for c in env.calls()] == ["STATUS", "STATUS"]


def test_cli_gc_safety(env, capsys, tmp_path):
    for ns in ("/run/netns/a", "/run/netns/b"):
        assert cli.main(["add", "net1", ns]) == 0
    env.calls()
    capsys.readouterr()
    ida, idb = cnitool_id("/run/netns/a"), cnitool_id("/run/netns/b")
    # no --valid: the cache is the valid set; nothing stale, GC told about both
    assert cli.main(["gc", "net1"]) == 0
    out = capsys.readouterr().out
    assert "valid: 2 attachment(s) from the result cache" in out and "DELeted 0" in out
    gc_calls = env.calls()
    assert [c["command"] for c in gc_calls] == ["GC", "GC"]
    assert gc_calls[0]["conf"]["cni.dev/valid-attachments"] == [   # in cache file order
        {"containerID": i, "ifname": "eth0"} for i in sorted((ida, idb))]
    # --dry-run shows, changes nothing
    valid = write(tmp_path / "valid.json", [{"containerID": ida, "ifname": "eth0"}])
    assert cli.main(["gc", "net1", "--valid", valid, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "would DEL 1 stale" in out and idb in out
    assert "would send GC to 2 plugin(s): a, b" in out
    assert env.calls() == [] and len(resultcache.Cache(env.cache_dir).attachments()) == 2
    # for real
    assert cli.main(["gc", "net1", "--valid", valid]) == 0
    assert [(c["command"], c["env"]["CNI_CONTAINERID"]) for c in env.calls()] == [
        ("DEL", idb), ("DEL", idb), ("GC", ""), ("GC", "")]
    assert [a.container_id for a in resultcache.Cache(env.cache_dir).attachments()] == [ida]
    capsys.readouterr()
    # an empty valid set is refused unless --all
    empty = write(tmp_path / "empty.json", [])
    assert cli.main(["gc", "net1", "--valid", empty]) == 1
    assert "refusing to GC network net1 with an empty valid set" in capsys.readouterr().err
    assert env.calls() == []
    assert cli.main(["gc", "net1", "--valid", empty, "--all"]) == 0
    assert [c["command"] for c in env.calls()] == ["DEL", "DEL", "GC", "GC"]
    assert resultcache.Cache(env.cache_dir).attachments() == []
    assert cli.main(["gc", "net1"]) == 1                     # cache empty now: refused too
    assert "--all" in capsys.readouterr().err


@pytest.mark.parametrize("content, what", [
    ("{}", "expected a list"),
    ("[{\"containerID\": \"c\"}]", "entry 0"),
    ("nope", "not JSON"),
])
def test_cli_gc_bad_valid_file(env, capsys, tmp_path, content, what):
    p = write(tmp_path / "v.json", content)
    assert cli.main(["gc", "net1", "--valid", p]) == 1
    assert what in capsys.readouterr().err


def test_cli_dispatch(capsys, monkeypatch, tmp_path):
    assert cli.main([]) == 2
    assert "usage: pycni" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    monkeypatch.setitem(cli.SUBCOMMANDS, "whois", ("cnilib.no_such_module_xyz", "x"))
    assert cli.main(["whois"]) == 2
    assert "not available in this build" in capsys.readouterr().err
    (tmp_path / "fake_sub_mod.py").write_text("def main(argv):\n    print('got', argv)\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "doctor", ("fake_sub_mod", "x"))
    assert cli.main(["doctor", "--json"]) == 3
    assert capsys.readouterr().out == "got ['--json']\n"
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("pycni 0.1.0 (CNI spec versions 0.1.0,")
    with pytest.raises(SystemExit) as ei:
        cli.main(["add"])
    assert ei.value.code == 2


def test_cnitool_container_id_and_abs_path(monkeypatch, tmp_path):
    # cnitool: fmt.Sprintf("cnitool-%x", sha512.Sum512([]byte(abs))[:10])
    assert cli.cnitool_container_id("/var/run/netns/x") == cnitool_id("/var/run/netns/x")
    assert len(cli.cnitool_container_id("/x")) == len("cnitool-") + 20
    monkeypatch.chdir(tmp_path)
    assert cli.abs_path("a/../b/") == str(tmp_path / "b")
    assert cli.abs_path("//run//netns/x") == "/run/netns/x"


def test_a_cache_entry_that_is_a_symlink_is_an_io_error_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text('{"kind": "cniCacheV1"}')
    (tmp_path / "results").mkdir()
    os.symlink(victim, tmp_path / "results" / "net1-c1-eth0")
    with pytest.raises(errors.IOFailure, match="cached result"):
        resultcache.Cache(str(tmp_path)).read("net1", "c1", "eth0")


def test_the_runner_prints_a_plugins_error_escaped(capsys):
    """A plugin's message quotes input (and a plugin that is not ours may
    send anything): `pycni add` prints it to a terminal, escaped."""
    cli._error("add cbr0", errors.from_code(4, "bad \x1b]0;owned\x07 name", "found \x1b[2J\nline"))
    cli._note("pod \x1b[31mred")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "pycni add cbr0: bad \\x1b]0;owned\\x07 name" in err and "details: found \\x1b[2J\\nline" in err
    assert "pycni: pod \\x1b[31mred" in err
