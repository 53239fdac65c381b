"""The protocol boundary without root: env checks, version gates, error JSON."""

import json
import os

import pytest

from cnilib.base import errors
from cnilib.cni import args as cniargs
from cnilib.cni import skel
from cnilib.cni.types import Result

CALLS = []


def _add(a):
    CALLS.append(("ADD", a.container_id, a.ifname, a.version))
    return Result(ips=[{"address": "10.0.0.2/24", "gateway": "10.0.0.1"}])


def _boom(a):
    raise RuntimeError("disk on fire\nsecond line")


def _typed(a):
    try:
        raise OSError(28, "No space left on device")
    except OSError as exc:
        raise errors.IOFailure("cannot write lease /x: No space left on device") from exc


PLUGIN = skel.Plugin("fake", add=_add, delete=lambda a: None, check=lambda a: None,
                     gc=_boom, status=_typed, uses_netns=False)


def run(command, conf=None, log=None, **env):
    e = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/x",
         "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "",
         "PYCNI_LOG": str(log) if log else "off"}
    e.update(env)
    data = conf if isinstance(conf, bytes) else json.dumps(conf if conf is not None else {}).encode()
    rc, out = skel.execute(PLUGIN, e, stdin_data=data)
    return rc, (json.loads(out) if out.strip() else None)


def conf(v="1.0.0", **kw):
    d = {"cniVersion": v, "name": "net1", "type": "fake"}
    d.update(kw)
    return d


def test_add_converts_to_config_version():
    rc, out = run("ADD", conf("0.4.0"))
    assert rc == 0
    assert out == {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24",
                                                   "gateway": "10.0.0.1"}]}


def test_version_echoes_supported_input_version():
    rc, out = run("VERSION", b'{"cniVersion":"0.3.1"}', CNI_CONTAINERID="", CNI_IFNAME="")
    assert rc == 0 and out["cniVersion"] == "0.3.1"
    assert out["supportedVersions"] == ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.parametrize("stdin", [b"", b"garbage", b'{"cniVersion":"7.0.0"}'])
def test_version_tolerates_any_stdin(stdin):
    # containerd/libcni probe with CNI_NETNS=dummy CNI_IFNAME=dummy CNI_PATH=dummy
    rc, out = run("VERSION", stdin, CNI_NETNS="dummy", CNI_IFNAME="dummy", CNI_PATH="dummy")
    assert rc == 0 and out["cniVersion"] == "1.1.0"


def test_missing_env_lists_all_names():
    rc, out = run("ADD", conf(), CNI_CONTAINERID="", CNI_NETNS="")
    assert rc == 1 and out["code"] == 4
    assert "CNI_CONTAINERID" in out["msg"] and "CNI_NETNS" in out["msg"]


def test_del_does_not_need_netns():
    rc, out = run("DEL", conf(), CNI_NETNS="")
    assert rc == 0 and out is None


def test_gc_needs_cni_path_but_no_container():
    rc, out = run("GC", conf("1.1.0"), CNI_PATH="", CNI_CONTAINERID="", CNI_IFNAME="")
    assert out["code"] == 4 and "CNI_PATH" in out["msg"]


def test_unknown_verb_code_4():
    rc, out = run("FROB", conf())
    assert rc == 1 and out["code"] == 4 and "FROB" in out["msg"]


@pytest.mark.parametrize("cid", ["-bad", "a/b", "../x", "x" * 129, "a b", "ü"])
def test_bad_container_id(cid):
    rc, out = run("ADD", conf(), CNI_CONTAINERID=cid)
    assert rc == 1 and out["code"] == 4


@pytest.mark.parametrize("ifname", ["eth0eth0eth0eth0", ".", "..", "a/b", "a:b", "a b", "x\ty"])
def test_bad_ifname(ifname):
    rc, out = run("ADD", conf(), CNI_IFNAME=ifname)
    assert rc == 1 and out["code"] == 4


def test_ifname_15_bytes_ok():
    rc, out = run("ADD", conf(), CNI_IFNAME="a" * 15)
    assert rc == 0


@pytest.mark.parametrize("data,code", [
    (b"{", 6), (b"[]", 6), (b'"x"', 6), (b"\xff\xfe", 6), (b"[" * 50000, 6),
    (b'{"name":"n","cniVersion":1}', 6),
    (b'{"cniVersion":"1.0.0"}', 7), (b'{"cniVersion":"1.0.0","name":""}', 7),
    (b'{"cniVersion":"1.0.0","name":"../etc"}', 7), (b'{"cniVersion":"1.0.0","name":"a/b"}', 7),
    (b'{"cniVersion":"1.0.0","name":"' + b"n" * 300 + b'"}', 7),
    (b'{"cniVersion":"0.5.0","name":"n"}', 1), (b'{"cniVersion":"1.0","name":"n"}', 1),
    (b'{"cniVersion":"2.0.0","name":"n"}', 1),
])
def test_bad_config(data, code):
    rc, out = run("ADD", data)
    assert rc == 1 and out["code"] == code, out
    assert "\n" not in out["msg"]


def test_unsupported_version_lists_supported_in_details():
    rc, out = run("ADD", conf("9.9.9"))
    assert out["code"] == 1
    assert "0.1.0" in out["details"] and "1.1.0" in out["details"]


def test_oversized_stdin():
    rc, out = run("ADD", b" " * (skel.MAX_STDIN + 10))
    assert rc == 1 and out["code"] == 6


def test_missing_version_means_010():
    rc, out = run("ADD", {"name": "n"})
    assert rc == 0 and out["cniVersion"] == "0.1.0" and out["ip4"]["ip"] == "10.0.0.2/24"


@pytest.mark.parametrize("verb,v", [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "0.4.0")])
def test_verb_gates(verb, v):
    rc, out = run(verb, conf(v))
    assert rc == 1 and out["code"] == 1 and verb in out["msg"]


def test_unexpected_exception_is_999_one_line(tmp_path):
    log = tmp_path / "l.log"
    rc, out = run("GC", conf("1.1.0"), log=log)
    assert rc == 1 and out["code"] == 999
    assert out["msg"] == "RuntimeError: disk on fire second line"
    text = log.read_text()
    assert "error code=999" in text and "Traceback" in text


def test_typed_error_keeps_cause_in_log(tmp_path):
    log = tmp_path / "l.log"
    rc, out = run("STATUS", conf("1.1.0"), log=log)
    assert out["code"] == 5
    text = log.read_text()
    assert "No space left" in text and "OSError" in text


def test_one_log_line_per_exec(tmp_path):
    log = tmp_path / "l.log"
    run("ADD", conf(), log=log)
    run("DEL", conf(), log=log)
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert " fake[" in lines[0] and " ADD net=net1 cid=ctr1 if=eth0 ok " in lines[0]
    assert lines[1].split()[2:6] == ["DEL", "net=net1", "cid=ctr1", "if=eth0"]


def test_log_file_from_config(tmp_path, monkeypatch):
    log = tmp_path / "from-conf.log"
    e = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}
    skel.execute(PLUGIN, e, stdin_data=json.dumps(conf(logFile=str(log))).encode())
    assert "DEL net=net1" in log.read_text()


def test_log_file_with_a_nul_byte_does_not_crash_the_plugin():
    e = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"}
    rc, out = skel.execute(PLUGIN, e, stdin_data=json.dumps(conf("9.9.9", logFile="/tmp/a\x00b")).encode())
    assert rc == 1 and json.loads(out)["code"] == 1


@pytest.mark.parametrize("verb", ["ADD", "CHECK", "DEL"])
def test_a_plugin_that_never_enters_the_netns_still_refuses_its_own(verb):
    CALLS.clear()
    rc, out = run(verb, conf(), CNI_NETNS="/proc/self/ns/net")
    assert rc == 1 and out["code"] == 8 and "own network namespace" in out["msg"]
    assert CALLS == []
    rc, out = run(verb, conf(), CNI_NETNS="/proc/self/ns/net", CNI_NETNS_OVERRIDE="1")
    assert rc == 0


def test_about_when_no_command():
    rc, out = skel.execute(PLUGIN, {}, stdin_data=b"")
    assert rc == 0 and b"CNI fake plugin" in out and b"1.1.0" in out


def test_error_json_shape():
    e = errors.InvalidConfig("bad thing", "details here")
    assert e.to_dict("1.0.0") == {"cniVersion": "1.0.0", "code": 7, "msg": "bad thing",
                                  "details": "details here"}
    assert errors.from_code(50, "m").code == 50
    assert isinstance(errors.from_code(11, "m"), errors.TryAgainLater)
    assert errors.from_code(123, "m").code == 123


def test_error_json_is_one_line_whatever_the_input_quoted():
    e = errors.InvalidConfig("invalid CIDR address: 1.2.3.4\ndrop", "found 'a\x00b\r'")
    d = e.to_dict("1.0.0")
    assert d["msg"] == "invalid CIDR address: 1.2.3.4\\ndrop"
    assert d["details"] == "found 'a\\x00b\\r'"
    assert e.msg.endswith("\ndrop")                # the exception keeps the raw text
    ok = errors.InvalidConfig("naïve → ok")
    assert ok.to_dict("1.0.0")["msg"] == "naïve → ok"


# ----------------------------------------------------------------- CNI_ARGS
def test_cni_args_parse():
    assert cniargs.parse_cni_args("") == {}
    got = cniargs.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.0.0.5/24;X=a=b;", ())
    assert got == {"IgnoreUnknown": "1", "K8S_POD_NAME": "p", "IP": "10.0.0.5/24", "X": "a=b"}


def test_cni_args_unknown_without_ignore():
    with pytest.raises(errors.InvalidEnvironment) as ei:
        cniargs.parse_cni_args("FOO=1;K8S_POD_NAME=x", known=("IP",))
    assert "FOO" in ei.value.msg and ei.value.code == 4
    assert cniargs.parse_cni_args("IP=1.2.3.4", known=("IP",)) == {"IP": "1.2.3.4"}
    assert cniargs.parse_cni_args("IgnoreUnknown=true;FOO=1") == {"IgnoreUnknown": "true", "FOO": "1"}


@pytest.mark.parametrize("raw", ["novalue", "=v", "a=1;;b", "IgnoreUnknown=1;junk", "a=\x00"])
def test_cni_args_garbage(raw):
    if raw == "a=1;;b":
        raw = "a=1;b"
    with pytest.raises(errors.InvalidEnvironment):
        cniargs.parse_cni_args(raw, known=("a",))


def test_cni_args_reach_handler_lazily():
    seen = {}

    def add(a):
        seen.update(a.cni_args)
        return Result(ips=[{"address": "10.0.0.2/24"}])
    p = skel.Plugin("p", add=add, cni_args=("MAC",), uses_netns=False)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/n", "CNI_IFNAME": "e",
           "CNI_ARGS": "MAC=aa:bb:cc:dd:ee:ff;BOGUS=1", "PYCNI_LOG": "off"}
    rc, out = skel.execute(p, env, stdin_data=json.dumps(conf()).encode())
    assert rc == 1 and json.loads(out)["code"] == 4
    env["CNI_ARGS"] = "IgnoreUnknown=1;MAC=aa:bb:cc:dd:ee:ff;BOGUS=1"
    rc, out = skel.execute(p, env, stdin_data=json.dumps(conf()).encode())
    assert rc == 0 and seen["MAC"] == "aa:bb:cc:dd:ee:ff"


def test_case_insensitive_capabilities():
    m = {"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}
    assert cniargs.get_ci(m, "hostPort") == 8080
    assert cniargs.normalize_keys(m, ("hostPort", "containerPort", "protocol", "hostIP")) == {
        "hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}
    assert cniargs.runtime_config({"runtimeConfig": {"PortMappings": [1]}}, "portMappings") == [1]


def test_one_validation_problem_is_shown_once():
    """libcni prints "msg; details": details that repeat the message showed
    a single problem twice."""
    from cnilib.cni import validate
    with pytest.raises(errors.InvalidConfig) as ei:
        validate.validate("bridge", conf(ipMasq="yes"))
    e = ei.value
    assert e.msg == 'invalid bridge network config: key ipMasq: input should be a valid boolean, found "yes"'
    assert e.details == "" and str(e) == e.msg
    with pytest.raises(errors.InvalidConfig) as ei:
        validate.validate("bridge", conf(ipMasq="yes", mtu="x"))
    e = ei.value
    assert e.msg.endswith('found "yes" (and 1 more)')
    assert e.details == 'also key mtu: input should be a valid integer, found "x"'


# ----------------------------------------------------------------- hardening (issue 16)
ESC_NAMES = ["e\x1bth0", "eth\x07", "e\x7fth", "e\u202eth0", "et\udcffh0", "e\x9bth"]


@pytest.mark.parametrize("ifname", ESC_NAMES)
@pytest.mark.parametrize("verb", ["ADD", "CHECK"])
def test_ifname_with_a_control_character_or_not_utf8_is_refused(ifname, verb, tmp_path):
    log = tmp_path / "l.log"
    rc, out = run(verb, conf(), log=log, CNI_IFNAME=ifname)
    assert rc == 1 and out["code"] == 4, out
    assert out["msg"].startswith("interface name contains ")
    assert "CNI_IFNAME" in out["details"] and out["details"].isprintable()
    assert all(line.isprintable() for line in log.read_text().splitlines())


def test_an_ifname_in_another_script_is_fine():
    assert run("ADD", conf(), CNI_IFNAME="éth0")[0] == 0


@pytest.mark.parametrize("ifname,msg", [
    ("e" * 16, "interface name is too long"), ("é" * 8, "interface name is too long"),
    ("..", "interface name is . or .."), ("a/b", "interface name contains / or : or whitespace characters"),
    ("a b", "interface name contains / or : or whitespace characters"),
])
def test_ifname_problems_are_worded_as_libcni_words_them(ifname, msg):
    """libcni refuses a bad ifname itself before an ADD, and leaves CHECK
    (and DEL) to the plugin: one wording whichever side refuses it."""
    for verb in ("ADD", "CHECK"):
        rc, out = run(verb, conf(), CNI_IFNAME=ifname)
        assert rc == 1 and out["code"] == 4 and out["msg"] == msg, out
        assert "CNI_IFNAME" in out["details"]
    from cnilib.ops import runner
    with pytest.raises(errors.InvalidEnvironment) as ei:
        runner.check_attachment("net1", runner.Attachment("c1", "", ifname, {}, {}))
    assert ei.value.msg == msg


@pytest.mark.parametrize("key,value", [
    ("CNI_NETNS", "/var/run/netns/a\x1b[2Jb"), ("CNI_PATH", "/opt/cni/bin:/x\x07"),
    ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=a\x1b[2Jb\x07"), ("CNI_NETNS", "/run/netns/\udcff"),
])
def test_a_control_character_in_any_cni_value_is_refused(key, value):
    CALLS.clear()
    rc, out = run("ADD", conf(), **{key: value})
    assert rc == 1 and out["code"] == 4 and key in out["msg"], out
    assert CALLS == []


def test_gc_and_status_refuse_a_control_character_in_cni_path():
    for verb in ("GC", "STATUS"):
        rc, out = run(verb, conf("1.1.0"), CNI_PATH="/opt/cni/bin\x1b", CNI_CONTAINERID="", CNI_IFNAME="")
        assert rc == 1 and out["code"] == 4 and "CNI_PATH" in out["msg"], out


def test_a_refused_container_id_reaches_the_log_escaped(tmp_path):
    log = tmp_path / "l.log"
    rc, out = run("ADD", conf(), log=log, CNI_CONTAINERID="c\x1b]0;pwned\x07\n2026 fake line")
    assert rc == 1 and out["code"] == 4 and out["msg"] == "invalid characters in containerID"
    text = log.read_text()
    assert "\x1b" not in text and "\x07" not in text and len(text.splitlines()) == 1
    assert "cid=c\\x1b]0;pwned\\x07\\n2026_fake_line" in text


DELETED = []


DEL_PLUGIN = skel.Plugin("fake", add=_add, delete=lambda a: DELETED.append((a.container_id, a.ifname)),
                         uses_netns=False, makes_ifname=True)


def run_del(conf_data, log=None, **env):
    e = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "", "CNI_IFNAME": "eth0",
         "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "", "PYCNI_LOG": str(log) if log else "off"}
    e.update(env)
    data = conf_data if isinstance(conf_data, bytes) else json.dumps(conf_data).encode()
    return skel.execute(DEL_PLUGIN, e, stdin_data=data)


@pytest.mark.parametrize("env,data", [
    ({"CNI_IFNAME": "et\udcffh0"}, conf()), ({"CNI_IFNAME": "e\x1bth0"}, conf()),
    ({"CNI_IFNAME": "e" * 16}, conf()), ({"CNI_IFNAME": ".."}, conf()), ({"CNI_IFNAME": "lo"}, conf()),
    ({"CNI_CONTAINERID": "../../etc"}, conf()), ({"CNI_CONTAINERID": "c" * 300}, conf()),
    ({}, conf(name="../x")), ({}, {"cniVersion": "1.0.0"}), ({}, conf("9.9.9")), ({}, conf(1.0)),
])
def test_del_of_an_attachment_add_refuses_succeeds_and_runs_nothing(env, data, tmp_path):
    """The runtime retries a failing DEL for ever and the pod never goes
    away; an attachment ADD refuses cannot exist, so there is nothing to do."""
    DELETED.clear()
    log = tmp_path / "l.log"
    rc, out = run_del(data, log=log, **env)
    assert (rc, out) == (0, b"")
    assert DELETED == []
    text = log.read_text()
    assert " DEL " in text and "ok (nothing to delete)" in text
    assert "nothing to delete, as ADD refuses" in text
    assert all(line.isprintable() for line in text.splitlines())


def test_del_still_fails_on_what_is_no_config_or_no_runtime():
    assert json.loads(run_del(b"{")[1])["code"] == 6
    assert json.loads(run_del(b"[1]")[1])["code"] == 6
    assert json.loads(run_del(conf(), CNI_CONTAINERID="")[1])["code"] == 4
    assert json.loads(run_del(conf(), CNI_IFNAME="")[1])["code"] == 4


def test_a_plugin_that_makes_its_ifname_refuses_lo_on_add_and_check():
    for verb in ("ADD", "CHECK"):
        e = {"CNI_COMMAND": verb, "CNI_CONTAINERID": "c", "CNI_NETNS": "/n", "CNI_IFNAME": "lo",
             "PYCNI_LOG": "off"}
        rc, out = skel.execute(DEL_PLUGIN, e, stdin_data=json.dumps(conf()).encode())
        assert rc == 1 and json.loads(out)["code"] == 4 and "lo" in json.loads(out)["msg"]
    # the loopback plugin and the chained ones take lo as they always did
    assert run("ADD", conf(), CNI_IFNAME="lo")[0] == 0


@pytest.mark.parametrize("kind", ["fifo", "file", "dir", "device", "uts"])
def test_a_netns_that_is_no_network_namespace_is_refused_at_once(kind, tmp_path):
    """CNI_NETNS naming a FIFO blocked the open for ever (bridge, loopback and
    tuning hung until the runtime killed them).  The path is looked at with
    O_PATH and must be a file on nsfs before anything opens it: code 4 on
    ADD and CHECK; a DEL treats it as a netns that is gone."""
    import subprocess
    import sys

    from cnitest import ROOT
    path = {"fifo": tmp_path / "fifo", "file": tmp_path / "file", "dir": tmp_path,
            "device": "/dev/null", "uts": "/proc/self/ns/uts"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "file":
        path.write_text("")
    prog = ("import json, sys\nsys.path.insert(0, %r)\nfrom cnilib.cni import skel\n"
            "p = skel.Plugin('p', add=lambda a: None, check=lambda a: None, delete=lambda a: None)\n"
            "for verb in ('ADD', 'CHECK', 'DEL'):\n"
            "    e = dict(CNI_COMMAND=verb, CNI_CONTAINERID='c', CNI_NETNS=%r, CNI_IFNAME='eth0',"
            " PYCNI_LOG='off')\n"
            "    rc, out = skel.execute(p, e, stdin_data=b'{\"cniVersion\":\"1.0.0\",\"name\":\"n\"}')\n"
            "    print(verb, rc, json.loads(out)['code'] if out else None)\n" % (ROOT, str(path)))
    done = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=20)
    assert done.stdout.split("\n")[:3] == ["ADD 1 4", "CHECK 1 4", "DEL 0 None"], done


def test_del_ignores_garbage_cni_args_and_unknown_keys(tmp_path):
    log = tmp_path / "l.log"
    seen = []
    p = skel.Plugin("p", delete=lambda a: seen.append(a.cni_args), cni_args=("MAC",), uses_netns=False)
    for args in ("===;;;nokey", "FOO=bar", "K8S_POD_NAME=a\x1b"):
        e = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_ARGS": args,
             "PYCNI_LOG": str(log)}
        assert skel.execute(p, e, stdin_data=json.dumps(conf()).encode()) == (0, b"")
    assert seen == [{}, {"FOO": "bar"}, {}]
    assert "CNI_ARGS ignored" in log.read_text()


def test_validate_for_del_leaves_out_the_keys_add_refuses(tmp_path):
    from cnilib.base.log import Log
    from cnilib.cni import validate
    log = Log("t", {"PYCNI_LOG": str(tmp_path / "l.log")})
    c, kept = validate.validate_for_del("bridge", conf(ipMasq="yes", mtu="x", bridge="br9"), log)
    assert c["ipMasq"] is False and c["mtu"] == 0 and c["bridge"] == "br9"
    assert "ipMasq" not in kept and "mtu" not in kept and kept["bridge"] == "br9"
    assert "DEL leaves out ipMasq, mtu" in log.lines[0]
