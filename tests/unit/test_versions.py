"""Result conversion between every pair of spec versions, against golden files.

Regenerate the expected files with ``PYCNI_REGEN_GOLDEN=1 pytest
tests/unit/test_versions.py`` and review the diff: the rules are libcni's
converters (cnilib/cni/types.py docstring).
"""

import json
import os

import pytest

from cnilib.base import errors
from cnilib.cni import version
from cnilib.cni.invoke import parse_result
from cnilib.cni.types import Result

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "results")
VERSIONS = version.SUPPORTED


def _load(name):
    with open(os.path.join(GOLDEN, name)) as f:
        return json.load(f)


@pytest.mark.parametrize("src", VERSIONS)
@pytest.mark.parametrize("dst", VERSIONS)
def test_convert_golden(src, dst):
    res = parse_result(_load("src-%s.json" % src), src)
    out = res.to_dict(dst)
    path = os.path.join(GOLDEN, "%s-to-%s.json" % (src, dst))
    if os.environ.get("PYCNI_REGEN_GOLDEN"):
        with open(path, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
            f.write("\n")
    with open(path) as f:
        assert out == json.load(f)


def test_spec_verified_example_to_020():
    """The 1.1.0 -> 0.2.0 conversion cni-spec.md records as verified with libcni."""
    out = parse_result(_load("src-1.1.0.json"), "1.1.0").to_dict("0.2.0")
    assert out == {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1",
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "192.168.0.0/16"}]},
        "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0"}]},
        "dns": {"nameservers": ["10.1.0.1"], "search": ["example.com"]},
    }


def test_110_to_040_keeps_route_extras_and_drops_interface_extras():
    out = parse_result(_load("src-1.1.0.json"), "1.1.0").to_dict("0.4.0")
    assert [ip["version"] for ip in out["ips"]] == ["4", "4", "6"]
    assert all(ip["interface"] == 2 for ip in out["ips"])
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400,
                                "priority": 10, "table": 0, "scope": 0}
    assert out["interfaces"][2] == {"name": "eth0", "mac": "99:88:77:66:55:44",
                                    "sandbox": "/var/run/netns/blue"}


def test_no_ip_cannot_go_to_02x():
    res = Result(interfaces=[{"name": "lo"}])
    with pytest.raises(errors.IncompatibleVersion) as ei:
        res.to_dict("0.2.0")
    assert ei.value.code == 1


def test_ipv4_mapped_counts_as_v4():
    res = Result(ips=[{"address": "::ffff:10.0.0.1/120"}])
    assert res.to_dict("0.4.0")["ips"][0]["version"] == "4"


def test_prevresult_without_version_takes_config_version():
    prev = {"ips": [{"version": "4", "address": "10.0.0.2/24"}]}
    res = parse_result(prev, "0.4.0")
    assert res.ips == [{"address": "10.0.0.2/24"}]


def test_prevresult_unknown_version_is_code_1():
    with pytest.raises(errors.IncompatibleVersion):
        parse_result({"cniVersion": "9.9.9", "ips": []}, "1.0.0")


def test_prevresult_bad_shape_is_decoding_failure():
    with pytest.raises(errors.DecodingFailure) as ei:
        parse_result({"cniVersion": "1.0.0", "ips": [{"address": 5}]}, "1.0.0")
    assert "ips[0].address" in ei.value.msg


@pytest.mark.parametrize("v,bad,where", [
    ("1.0.0", {"ips": [{"address": "banana"}]}, "ips[0].address"),
    ("1.0.0", {"ips": [{"address": "10.0.0.2"}]}, "ips[0].address"),
    ("1.0.0", {"ips": [{"address": "10.0.0.2/33"}]}, "ips[0].address"),
    ("1.0.0", {"ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1/24"}]}, "ips[0].gateway"),
    ("1.1.0", {"routes": [{"dst": "default"}]}, "routes[0].dst"),
    ("0.4.0", {"routes": [{"dst": "0.0.0.0/0", "gw": "gw.example"}]}, "routes[0].gw"),
    ("0.2.0", {"ip4": {"ip": "banana/24"}}, "ips[0].address"),
    ("0.2.0", {"ip4": {"ip": "10.0.0.2/24", "routes": [{"dst": "10.9.0.0/16x"}]}}, "routes[0].dst"),
])
def test_an_address_that_does_not_parse_is_a_decoding_failure(v, bad, where):
    """Go's types unmarshal every address and route; ours were kept as
    strings, so portmap read "banana" as no address and mapped nothing."""
    with pytest.raises(errors.DecodingFailure) as ei:
        parse_result(dict(bad, cniVersion=v), v, "prevResult")
    assert ei.value.code == 6 and ("prevResult.%s" % where) in ei.value.msg


def test_what_go_takes_as_a_string_stays_one():
    res = parse_result({"cniVersion": "1.0.0", "ips": [{"address": "fd00::2/64", "gateway": "fd00::1"}],
                        "routes": [{"dst": "::/0"}], "dns": {"nameservers": ["fe80::1%eth0", "ns"]},
                        "interfaces": [{"name": "eth0", "mac": "not checked"}]}, "1.0.0")
    assert res.dns["nameservers"] == ["fe80::1%eth0", "ns"] and res.ips[0]["address"] == "fd00::2/64"


def test_interface_index_negative_dropped():
    res = parse_result({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24",
                                                        "interface": -1}]}, "0.4.0")
    assert "interface" not in res.ips[0]


@pytest.mark.parametrize("v,fam", [("0.1.0", "02x"), ("0.2.0", "02x"), ("0.3.0", "04x"),
                                   ("0.4.0", "04x"), ("1.0.0", "1x"), ("1.1.0", "1x")])
def test_family(v, fam):
    assert version.family(v) == fam


def test_verb_gates():
    version.check_verb("CHECK", "0.4.0")
    version.check_verb("GC", "1.1.0")
    for verb, v in (("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "0.4.0")):
        with pytest.raises(errors.IncompatibleVersion) as ei:
            version.check_verb(verb, v)
        assert verb in ei.value.msg


def test_highest():
    assert version.highest(["0.3.1", "1.0.0", "1.1.0", "2.0.0"]) == "1.1.0"
    assert version.highest(["0.3.1", "bogus"]) == "0.3.1"
    assert version.highest([]) is None


@pytest.mark.filterwarnings("ignore:Support for `\\[tool.setuptools\\]`")
def test_suite_version_is_read_from_one_place():
    # pyproject.toml takes it from cnilib/cni/version.py; nothing else spells it
    pyproject = os.path.join(os.path.dirname(__file__), "..", "..", "pyproject.toml")
    text = open(pyproject).read()
    assert 'dynamic = ["version"]' in text
    assert 'version = { attr = "cnilib.cni.version.SUITE_VERSION" }' in text
    assert "\nversion = " not in text.split("[tool.setuptools.dynamic]")[0]
    setuptools = pytest.importorskip("setuptools.config.pyprojecttoml")
    conf = setuptools.read_configuration(pyproject)
    assert conf["project"]["version"] == version.SUITE_VERSION
