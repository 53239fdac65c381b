"""./build.sh install / uninstall into a directory, both forms."""

import os
import subprocess

import pytest
from cnitest import ROOT

pytestmark = pytest.mark.root
FORMS = {"py": "py", "bin": "bundle"}


def _build_sh(*args):
    return subprocess.run([os.path.join(ROOT, "build.sh")] + list(args), capture_output=True,
                          text=True, timeout=120)


def _version(path):
    p = subprocess.run([path], env={"CNI_COMMAND": "VERSION", "PYCNI_LOG": "off"},
                       input=b'{"cniVersion":"1.0.0"}', capture_output=True, timeout=30)
    return p.returncode, p.stdout


def test_install_backs_up_and_uninstall_restores(form, tmp_path):
    d = tmp_path / "cni" / "bin"
    d.mkdir(parents=True)
    # what a node already has: a Go plugin we replace, one we do not ship
    (d / "bridge").write_bytes(b"\x7fELF old go bridge")
    (d / "macvlan").write_bytes(b"\x7fELF go macvlan")
    for p in (d / "bridge", d / "macvlan"):
        os.chmod(p, 0o755)
    r = _build_sh("install", "--form", FORMS[form], str(d))
    assert r.returncode == 0, r.stderr
    for name in ("bridge", "host-local", "flannel", "portmap", "loopback", "firewall", "tuning"):
        rc, out = _version(str(d / name))
        assert rc == 0 and b'"cniVersion":"1.0.0"' in out, (name, out)
    p = subprocess.run([str(d / "pycni"), "--version"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "pycni" in p.stdout
    assert (d / ".pycni-backup" / "bridge").read_bytes() == b"\x7fELF old go bridge"
    assert (d / "macvlan").read_bytes() == b"\x7fELF go macvlan"        # untouched
    # a second install keeps the original backup, not our own bridge
    assert _build_sh("install", "--form", FORMS[form], str(d)).returncode == 0
    assert (d / ".pycni-backup" / "bridge").read_bytes() == b"\x7fELF old go bridge"
    r = _build_sh("uninstall", str(d))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(d)) == ["bridge", "macvlan"]
    assert (d / "bridge").read_bytes() == b"\x7fELF old go bridge"


def test_installed_copy_is_relocatable(form, tmp_path):
    d = tmp_path / "a"
    assert _build_sh("install", "--form", FORMS[form], str(d)).returncode == 0
    moved = tmp_path / "b"
    os.rename(d, moved)
    rc, out = _version(str(moved / "host-local"))
    assert rc == 0, out
    # and through a symlink from another dir, as some nodes link /opt/cni/bin
    other = tmp_path / "c"
    other.mkdir()
    os.symlink(moved / "loopback", other / "loopback")
    rc, out = _version(str(other / "loopback"))
    assert rc == 0, out
