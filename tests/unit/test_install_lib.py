"""Pure parts of pycni install: the ELF version reader (held to readelf),
the built-in conflists (held to conf/), names and text shown to operators."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from cnilib.ops import elf
from cnilib.ops.install import cli, common, host, state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _readelf_needs(path):
    """{library: {versions}} from ``readelf -V``'s "Version needs" section."""
    out = subprocess.run(["readelf", "-V", "-W", path], capture_output=True, text=True).stdout
    needs, lib, inside = {}, None, False
    for line in out.splitlines():
        if line.startswith("Version needs section"):
            inside = True
            continue
        if inside and line.startswith("Version") and "needs" not in line:
            inside = False
        if not inside:
            continue
        s = line.strip()
        if "File:" in s:
            lib = s.split("File:")[1].split()[0]
            needs.setdefault(lib, set())
        elif "Name:" in s and lib:
            needs[lib].add(s.split("Name:")[1].split()[0])
    return needs


def _readelf_defs(path):
    out = subprocess.run(["readelf", "-V", "-W", path], capture_output=True, text=True).stdout
    defs, inside = set(), False
    for line in out.splitlines():
        if line.startswith("Version definition section"):
            inside = True
            continue
        if inside and line.startswith("Version") and "definition" not in line:
            inside = False
        if inside and "Name:" in line and "Parent" not in line:
            defs.add(line.split("Name:")[1].split()[0])
    return defs


SAMPLES = [sys.executable, "/bin/ls", "/usr/bin/python3"] + sorted(
    glob.glob("/lib/x86_64-linux-gnu/lib[cmz].so.*"))[:4]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is not installed")
@pytest.mark.parametrize("path", [p for p in SAMPLES if os.path.exists(p)])
def test_version_needs_match_readelf(path):
    path = os.path.realpath(path)
    mine = {k: set(v) for k, v in elf.version_needs(path).items()}
    assert mine == _readelf_needs(path)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is not installed")
def test_libc_definitions_match_readelf():
    libc = elf.find_libc("/")
    assert libc is not None
    assert set(elf.version_defs(libc)) == _readelf_defs(libc)
    assert elf.glibc_provided("/") == max(t for t in map(elf.glibc_tuple, _readelf_defs(libc)) if t)
    rel = elf.glibc_release("/")
    ldd = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    assert ldd.endswith(rel)


def test_not_elf_is_empty(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"#!/bin/sh\n")
    assert elf.version_needs(str(p)) == {} and elf.glibc_needed(str(p)) is None
    p.write_bytes(b"\x7fELF\x02\x01" + b"\xff" * 10)
    assert elf.version_needs(str(p)) == {}
    assert elf.tree_glibc_needed(str(tmp_path)) == (None, None)


def test_glibc_tuple():
    assert elf.glibc_tuple("GLIBC_2.34") == (2, 34)
    assert elf.glibc_tuple("GLIBC_2.2.5") == (2, 2, 5)
    assert elf.glibc_tuple("GLIBC_PRIVATE") is None and elf.glibc_tuple("GCC_3.0") is None


def test_resolve_in_keeps_absolute_links_inside(tmp_path):
    r = tmp_path / "root"
    (r / "usr" / "lib").mkdir(parents=True)
    (r / "usr" / "lib" / "libc.so.6").write_bytes(b"x")
    os.symlink("/usr/lib", r / "lib")                 # absolute: must stay in the root
    os.symlink("../../etc/passwd", r / "usr" / "lib" / "esc")
    assert elf.resolve_in(str(r), "/lib/libc.so.6") == str(r / "usr" / "lib" / "libc.so.6")
    assert elf.resolve_in(str(r), "/lib/esc") is None     # /etc/passwd of the root: absent
    assert elf.find_libc(str(r)) == str(r / "usr" / "lib" / "libc.so.6")


@pytest.mark.parametrize("choice", sorted(common.BUILTIN_CONFLISTS))
def test_builtin_conflists_are_the_conf_files(choice):
    name, text = common.BUILTIN_CONFLISTS[choice]
    with open(os.path.join(ROOT, "conf", name)) as f:
        assert f.read() == text
    conf = json.loads(text)
    assert conf["name"] and conf["plugins"]


def test_clean_keeps_a_line_safe():
    assert common.clean("a\nb\x1b[31mc") == "a | b\\x1b[31mc"
    assert common.clean("x" * 500).endswith("...") and len(common.clean("x" * 500)) == 303


def test_copy_names():
    assert state.is_copy_of("0.1.0-abc", "0.1.0-abc")
    assert state.is_copy_of("0.1.0-abc.2", "0.1.0-abc")
    assert not state.is_copy_of("0.1.0-abcd", "0.1.0-abc")
    assert not state.is_copy_of("0.1.0-abc.x", "0.1.0-abc")


def test_group_failures():
    tree = "/opt/cni/bin/.pycni-versions/v"
    failed = [(n, "exit 255: [PYI-%d:ERROR] no GLIBC_2.35 for %s/%s" % (i, tree, n))
              for i, n in enumerate(("pycni", "bridge", "tuning"))] + [("flannel", "exit 1: other")]
    groups = host.group_failures(failed, tree)
    assert [g[0] for g in groups] == [["pycni", "bridge", "tuning"], ["flannel"]]


def test_conflist_choice_and_file(tmp_path):
    assert cli.load_conflist(network="flannel")[0] == "10-flannel.conflist"
    with pytest.raises(common.InstallError):
        cli.load_conflist(network="calico")
    p = tmp_path / "net.txt"
    p.write_text("{}")
    with pytest.raises(common.InstallError, match="must be named"):
        cli.load_conflist(str(p))
    p = tmp_path / "10-x.conflist"
    p.write_text('{"name": "x"}')
    with pytest.raises(common.InstallError, match="not a network config"):
        cli.load_conflist(str(p))
    p.write_text('{"name": "x", "type": "bridge"}')
    assert cli.load_conflist(str(p)) == ("10-x.conflist", b'{"name": "x", "type": "bridge"}')


def test_an_unexpected_failure_names_the_log(tmp_path, monkeypatch, capsys):
    """A bug in the installer is one FAILED line pointing at the suite's log
    (where its traceback went), not a traceback on the terminal."""
    def boom(self):
        raise ValueError("bug")
    monkeypatch.setattr(cli.Installer, "uninstall", boom)
    monkeypatch.setenv("PYCNI_LOG", str(tmp_path / "pycni.log"))
    assert cli.main(["--bin-dir", str(tmp_path), "--conf-dir", str(tmp_path)], verb="uninstall") == 1
    err = capsys.readouterr().err
    assert "FAILED: ValueError: bug" in err and str(tmp_path / "pycni.log") in err
    assert "Traceback" in (tmp_path / "pycni.log").read_text()
