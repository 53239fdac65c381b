"""flannel logic without root: subnet.env rules, the delegate config, saved files."""

import json
import os
import threading
import time

import pytest

from cnilib import flannel
from cnilib.base import errors
from cnilib.flannel import SubnetEnvError, parse_subnet_env

V4 = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
      "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
V6 = ("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
      "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
DUAL = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")

# plugin-features.md 6.3: kube-flannel's conflist entry as libcni hands it over
KUBE_FLANNEL = {"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
                "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
REFERENCE_SAVED = ('{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":'
                   '[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":'
                   '"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":'
                   '"cbr0","type":"bridge"}')


def missing_of(text):
    with pytest.raises(SubnetEnvError) as ei:
        parse_subnet_env(text, "/run/flannel/subnet.env")
    assert ei.value.kind == "missing"
    return ei.value.msg


# ------------------------------------------------------------ subnet.env


def test_parse_v4_masks_host_bits():
    env = parse_subnet_env(V4)
    assert env.networks == ["10.244.0.0/16"]
    assert env.subnet == "10.244.1.0/24"
    assert env.networks6 == [] and env.subnet6 is None
    assert env.mtu == 1450 and env.ipmasq is True


def test_parse_v6_and_dual():
    env = parse_subnet_env(V6)
    assert env.networks6 == ["fd00:10:244::/56"] and env.subnet6 == "fd00:10:244:1::/64"
    assert env.subnet is None
    env = parse_subnet_env(DUAL)
    assert env.subnets() == ["10.244.1.0/24", "fd00:10:244:1::/64"]
    assert env.all_networks() == ["10.244.0.0/16", "fd00:10:244::/56"]


def test_network_comma_list_deduplicated():
    env = parse_subnet_env(V4.replace("FLANNEL_NETWORK=10.244.0.0/16",
                                      "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16,10.244.3.4/16"))
    assert env.networks == ["10.244.0.0/16", "10.245.0.0/16"]


def test_repeated_key_replaces_earlier_value():
    env = parse_subnet_env(V4 + "FLANNEL_NETWORK=10.96.0.0/12\nFLANNEL_MTU=1400\n")
    assert env.networks == ["10.96.0.0/12"] and env.mtu == 1400


@pytest.mark.parametrize("line", [" FLANNEL_MTU=1450", "export FLANNEL_MTU=1450", "flannel_mtu=1450",
                                  "FLANNEL_MTU", "# FLANNEL_MTU=1450", "FLANNEL_MTU =1450"])
def test_lines_that_do_not_count(line):
    text = V4.replace("FLANNEL_MTU=1450\n", line + "\n")
    assert missing_of(text) == "/run/flannel/subnet.env is missing FLANNEL_MTU"


def test_crlf_and_unknown_lines_are_fine():
    env = parse_subnet_env("# written by hand\r\nOTHER=1\r\n" + V4.replace("\n", "\r\n"))
    assert env.mtu == 1450 and env.ipmasq is True


@pytest.mark.parametrize("value,expected", [("true", True), ("false", False), ("True", False),
                                            ("1", False), ("true ", False), ("", False)])
def test_ipmasq_is_exactly_true(value, expected):
    env = parse_subnet_env(V4.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=" + value))
    assert env.ipmasq is expected


@pytest.mark.parametrize("value,ok", [("1450", 1450), ("0", 0), ("4294967295", 4294967295),
                                      ("4294967296", None), ("-1", None), ("+1450", None),
                                      ("1_450", None), ("", None), ("1450 ", None), ("0x5aa", None),
                                      ("١٤٥٠", None)])
def test_mtu_parse_uint32(value, ok):
    text = V4.replace("FLANNEL_MTU=1450", "FLANNEL_MTU=" + value)
    if ok is None:
        with pytest.raises(SubnetEnvError) as ei:
            parse_subnet_env(text)
        assert ei.value.kind == "invalid" and "FLANNEL_MTU" in ei.value.msg and "line 3" in ei.value.msg
    else:
        assert parse_subnet_env(text).mtu == ok


# leading zeros: refused whatever the interpreter (ipaddress accepted them
# before Python 3.9.5, as Debian 11's 3.9.2 does; the unit tier runs there)
@pytest.mark.parametrize("value", ["10.244.1.1", "10.244.1.1/33", "10.244.1/24", "010.244.1.1/24",
                                   "10.244.01.1/24", "10.244.1.00/24", "::ffff:10.244.01.1/120",
                                   "10.244.1.1/24 ", "10.244.1.1/255.255.255.0", "fe80::1%eth0/64",
                                   "", "10.244.1.1/+24"])
def test_subnet_values_go_refuses(value):
    with pytest.raises(SubnetEnvError) as ei:
        parse_subnet_env(V4.replace("FLANNEL_SUBNET=10.244.1.1/24", "FLANNEL_SUBNET=" + value))
    assert ei.value.kind == "invalid" and "FLANNEL_SUBNET" in ei.value.msg


def test_network_list_with_empty_item_is_invalid():
    with pytest.raises(SubnetEnvError):
        parse_subnet_env(V4.replace("10.244.0.0/16", "10.244.0.0/16,"))


def test_missing_lists_every_key_in_reference_order():
    assert missing_of("") == ("/run/flannel/subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, "
                              "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ")
    assert missing_of("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\n") == (
        "/run/flannel/subnet.env is missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ")
    assert missing_of(V4.replace("FLANNEL_IPMASQ=true\n", "")).endswith("is missing FLANNEL_IPMASQ")


def test_either_family_is_enough():
    parse_subnet_env(V4)
    parse_subnet_env(V6)
    # v4 network with only a v6 subnet is accepted too (reference rule)
    parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_IPV6_SUBNET=fd00::1/64\n"
                     "FLANNEL_MTU=1\nFLANNEL_IPMASQ=false\n")


def test_load_absent_and_directory(tmp_path):
    with pytest.raises(SubnetEnvError) as ei:
        flannel.load_subnet_env(str(tmp_path / "nope.env"))
    assert ei.value.kind == "absent" and "nope.env does not exist" in ei.value.msg
    with pytest.raises(SubnetEnvError) as ei:
        flannel.load_subnet_env(str(tmp_path))
    assert ei.value.kind == "unreadable"


def test_wait_returns_when_file_appears(tmp_path):
    path = str(tmp_path / "subnet.env")

    def write_later():
        time.sleep(0.3)
        with open(path, "w") as f:
            f.write(V4)
    t = threading.Thread(target=write_later)
    t.start()
    try:
        env = flannel.wait_subnet_env(path, 30)
    finally:
        t.join()
    assert env.subnet == "10.244.1.0/24"


def test_wait_gives_up_with_code_11(tmp_path):
    path = str(tmp_path / "subnet.env")
    with open(path, "w") as f:
        f.write("FLANNEL_NETWORK=10.244.0.0/16\n")
    with pytest.raises(errors.TryAgainLater) as ei:
        flannel.wait_subnet_env(path, 0.2)
    e = ei.value
    assert e.code == 11
    assert path in e.msg
    assert "missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ" in e.msg
    assert "waited 0.2 s" in e.msg and "flanneld" in e.details
    with pytest.raises(errors.TryAgainLater) as ei:
        flannel.wait_subnet_env(str(tmp_path / "absent.env"), 0)
    assert "absent.env does not exist" in ei.value.msg and "waited" not in ei.value.msg


# ------------------------------------------------------------ delegate


def test_reference_delegate_byte_for_byte():
    d = flannel.build_delegate(KUBE_FLANNEL, parse_subnet_env(V4))
    assert flannel.encode(d).decode() == REFERENCE_SAVED
    assert KUBE_FLANNEL["delegate"] == {"hairpinMode": True, "isDefaultGateway": True}  # not mutated


def test_delegate_v6_and_dual():
    d = flannel.build_delegate(KUBE_FLANNEL, parse_subnet_env(V6))
    assert d["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "fd00:10:244:1::/64"}]],
                         "routes": [{"dst": "fd00:10:244::/56"}]}
    d = flannel.build_delegate(KUBE_FLANNEL, parse_subnet_env(DUAL))
    assert flannel.encode(d["ipam"]).decode() == (
        '{"ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]],'
        '"routes":[{"dst":"10.244.0.0/16"},{"dst":"fd00:10:244::/56"}],"type":"host-local"}')


def test_ipmasq_false_means_bridge_masquerades():
    d = flannel.build_delegate(KUBE_FLANNEL, parse_subnet_env(V4.replace("=true", "=false")))
    assert d["ipMasq"] is True


def test_delegate_keys_override_defaults():
    conf = {"cniVersion": "1.0.0", "name": "n", "delegate": {
        "type": "bridge", "ipMasq": True, "mtu": 1400, "isGateway": False, "bridge": "br9",
        "cniVersion": "0.3.1"}}
    d = flannel.build_delegate(conf, parse_subnet_env(V4))
    assert d["ipMasq"] is True and d["mtu"] == 1400 and d["isGateway"] is False
    assert d["bridge"] == "br9" and d["cniVersion"] == "1.0.0"  # conf version always wins


def test_non_bridge_delegate_gets_no_isgateway():
    d = flannel.build_delegate({"name": "n", "delegate": {"type": "macvlan"}}, parse_subnet_env(V4))
    assert d["type"] == "macvlan" and "isGateway" not in d


def test_no_cniversion_stays_absent_and_runtime_config_passes():
    conf = {"name": "n", "runtimeConfig": {"portMappings": [{"hostPort": 80}]},
            "capabilities": {"portMappings": True}, "dns": {"nameservers": ["1.1.1.1"]},
            "args": {"cni": {}}}
    d = flannel.build_delegate(conf, parse_subnet_env(V4))
    assert "cniVersion" not in d
    assert d["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}
    assert not {"capabilities", "dns", "args"} & set(d)


def test_conf_ipam_is_the_base():
    conf = {"name": "n", "cniVersion": "1.0.0", "ipam": {
        "type": "host-local", "dataDir": "/tmp/x", "ranges": [[{"subnet": "192.168.0.0/24"}]],
        "routes": [{"dst": "192.168.7.9/16", "gw": "10.244.1.254", "junk": 1}, {"dst": "0.0.0.0/0"}]}}
    d = flannel.build_delegate(conf, parse_subnet_env(V4))
    assert d["ipam"] == {"type": "host-local", "dataDir": "/tmp/x",
                         "ranges": [[{"subnet": "10.244.1.0/24"}]],
                         "routes": [{"dst": "192.168.7.9/16", "gw": "10.244.1.254"},
                                    {"dst": "0.0.0.0/0"}, {"dst": "10.244.0.0/16"}]}
    assert conf["ipam"]["ranges"] == [[{"subnet": "192.168.0.0/24"}]]  # not mutated


def test_bad_ipam_route():
    with pytest.raises(errors.InvalidConfig) as ei:
        flannel.build_delegate({"name": "n", "ipam": {"routes": [{"dst": "nope"}]}}, parse_subnet_env(V4))
    assert "failed to read IPAM routes" in ei.value.msg and "ipam.routes[0]" in ei.value.msg


@pytest.mark.parametrize("delegate,text", [
    ({"name": "x"}, "'delegate' dictionary must not have 'name' field, it'll be set by flannel"),
    ({"ipam": {}}, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"),
    ({"type": 5}, "'delegate' dictionary, if present, must have (string) 'type' field"),
    ({"type": None}, "'delegate' dictionary, if present, must have (string) 'type' field"),
    ({"type": "../bin/sh"}, "delegate type '../bin/sh' is not a plain plugin name"),
])
def test_refused_delegate_blocks(delegate, text):
    with pytest.raises(errors.InvalidConfig) as ei:
        flannel.build_delegate({"name": "n", "delegate": delegate}, parse_subnet_env(V4))
    assert ei.value.msg == text and ei.value.code == 7


def test_release_config_uses_conf_ipam():
    r = flannel.release_config({"name": "cbr0", "cniVersion": "1.0.0",
                                "ipam": {"dataDir": "/tmp/d", "routes": [{"dst": "1.2.3.0/24"}]}})
    assert r == {"name": "cbr0", "cniVersion": "1.0.0",
                 "ipam": {"type": "host-local", "dataDir": "/tmp/d",
                          "ranges": [[{"subnet": flannel.PLACEHOLDER_SUBNET}]]}}


# ------------------------------------------------------------ saved files


def test_saved_states(tmp_path):
    d = str(tmp_path / "flannel")
    assert flannel.load_saved(d, "c1").state == "missing"
    path = flannel.save(d, "c1", REFERENCE_SAVED.encode())
    assert oct(os.stat(d).st_mode & 0o777) == "0o700"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    s = flannel.load_saved(d, "c1")
    assert s.state == "ok" and s.conf["type"] == "bridge" and s.data == REFERENCE_SAVED.encode()
    for content, state in ((b"", "empty"), (b" \n", "empty"), (b'{"cniVersion":', "corrupt"),
                           (b"[1]", "corrupt"), (b'{"name":"x"}', "corrupt"), (b'{"type":7}', "corrupt"),
                           (b'{"type":"../../bin/sh"}', "corrupt")):
        with open(path, "wb") as f:
            f.write(content)
        assert flannel.load_saved(d, "c1").state == state, content
    with pytest.raises(errors.InvalidConfig):
        flannel.saved_path(d, "../etc")


def test_read_all_saved_reports_every_state(tmp_path):
    d = str(tmp_path / "flannel")
    flannel.save(d, "c1", REFERENCE_SAVED.encode())
    flannel.save(d, "c2", b"")
    os.symlink("/etc/hostname", os.path.join(d, "c3"))
    problems = []
    got = [(s.cid, s.state, s.network) for s in flannel.read_all_saved([d, str(tmp_path / "none")], problems)]
    assert got == [("c1", "ok", json.loads(REFERENCE_SAVED)["name"]), ("c2", "empty", None),
                   ("c3", "corrupt", None)] and problems == []
    os.chmod(d, 0)
    try:
        if not os.access(d, os.R_OK):                               # not as root
            assert flannel.read_all_saved([d], problems) == [] and len(problems) == 1
    finally:
        os.chmod(d, 0o700)


def test_go_saved_file_is_read(tmp_path):
    """The Go plugin writes plain JSON (no newline) at <dataDir>/<cid>."""
    (tmp_path / "abc123").write_text(REFERENCE_SAVED)
    s = flannel.load_saved(str(tmp_path), "abc123")
    assert s.state == "ok" and s.conf == json.loads(REFERENCE_SAVED)


def test_saved_entries_skip_temps_and_dirs(tmp_path):
    for n in ("a", "b", ".pycni-tmp-1-x"):
        (tmp_path / n).write_text("{}")
    (tmp_path / "sub").mkdir()
    assert flannel.saved_entries(str(tmp_path)) == ["a", "b"]
    assert flannel.saved_entries(str(tmp_path / "none")) == []


def test_subnets_of_saved():
    assert flannel.subnets_of(json.loads(REFERENCE_SAVED)) == ["10.244.1.0/24"]
    assert flannel.subnets_of({"ipam": "x"}) == []


@pytest.mark.parametrize("conf,expected", [
    ({}, None),
    ({"cni.dev/valid-attachments": None}, set()),
    ({"cni.dev/valid-attachments": []}, set()),
    ({"cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]}, {"a"}),
])
def test_valid_attachments(conf, expected):
    assert flannel.valid_attachments(conf) == expected


@pytest.mark.parametrize("bad", [{"a": 1}, [{"containerID": "a"}, "junk", {"containerID": 5}]])
def test_valid_attachments_must_be_a_list_of_attachments(bad):
    # the same parser as every other plugin's GC: a malformed list frees nothing
    with pytest.raises(errors.InvalidConfig):
        flannel.valid_attachments({"cni.dev/valid-attachments": bad})


def test_alias_matches_our_bridge_s_ifalias():
    from cnilib.firewall.naming import veth_alias
    assert flannel.alias_matches(veth_alias("cbr0", "c1", "eth0"), "c1", "eth0", "cbr0")
    assert flannel.alias_matches(veth_alias("cbr0", "c1", "eth0", pod="ns/p"), "c1", "eth0", "cbr0")
    for other in (veth_alias("cbr1", "c1", "eth0"), veth_alias("cbr0", "c12", "eth0"),
                  veth_alias("cbr0", "c1", "eth1"), "", None, "cid=c1 if=eth0", "pycni"):
        assert not flannel.alias_matches(other, "c1", "eth0", "cbr0"), other
    net, cid = "n" * 128, "c" * 128
    long_alias = veth_alias(net, cid, "eth0")
    assert long_alias.startswith("pycni att=")          # too long for the plain form
    assert flannel.alias_matches(long_alias, cid, "eth0", net)
    assert not flannel.alias_matches(long_alias, cid[:-1] + "d", "eth0", net)


def test_version_path_is_light():
    from test_imports import HEAVY, _modules_after
    mods = _modules_after(
        "import os\nos.environ.update(CNI_COMMAND='VERSION', PYCNI_LOG='off')\n"
        "from cnilib.cni import skel\nimport plugins.flannel as p\n"
        "skel.execute(p.PLUGIN, os.environ, stdin_data=b'{\"cniVersion\":\"1.0.0\"}')")
    assert sorted(m for m in mods if m.split(".")[0] in HEAVY) == []


def test_a_saved_entry_that_is_a_symlink_is_corrupt_and_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text('{"type": "bridge"}')
    os.symlink(victim, tmp_path / "c1")
    saved = flannel.load_saved(str(tmp_path), "c1")
    assert saved.state == "corrupt" and "not a regular file" in saved.why


def _in_child(code, timeout=20):
    """Run ``code`` in a fresh interpreter: a regression that blocks in
    open() hangs the child, not the suite."""
    import subprocess
    import sys

    from cnitest import ROOT
    done = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r)\n%s" % (ROOT, code)],
                          capture_output=True, text=True, timeout=timeout)
    return done.stdout.strip()


def test_a_fifo_as_subnet_file_or_resolv_conf_is_refused_without_blocking(tmp_path):
    """Paths from the config are opened O_NONBLOCK and must be regular
    files: a FIFO there blocked every flannel and host-local exec."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    got = _in_child("from cnilib import flannel\ntry:\n    flannel.load_subnet_env(%r)\n"
                    "except flannel.SubnetEnvError as e:\n    print(e.kind, e.msg)" % fifo)
    assert got == "unreadable %s is not a regular file" % fifo
    got = _in_child("from cnilib.ipam import config\nfrom cnilib.base import errors\ntry:\n"
                    "    config.read_resolv_conf(%r)\nexcept errors.CniError as e:\n"
                    "    print(e.code, e.msg)" % fifo)
    assert got == "5 ipam.resolvConf %s is not a regular file" % fifo
