"""dist/bin as the build leaves it: built in the Debian 11 root, within the
glibc floor, and lean at start-up."""

import os
import shutil
import subprocess
import sys
import zlib

import pytest
from cnitest import DIST, ROOT, run_plugin

BIN = os.path.join(DIST, "bin")


@pytest.fixture(scope="module")
def bundle():
    if not os.path.isfile(os.path.join(BIN, "pycni")):
        pytest.skip("dist/bin is not built (./build.sh)")
    return BIN


def test_within_the_glibc_floor(bundle):
    """What ./build.sh checks before it calls the bundle built."""
    p = subprocess.run([sys.executable, "-m", "tools.elfcheck", "--glibc", "2.31", bundle], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "runs on glibc >= 2." in p.stdout


def test_carries_debian_11s_python(bundle):
    assert os.path.isfile(os.path.join(bundle, ".pycni", "libpython3.9.so.1.0"))
    assert not [f for f in os.listdir(os.path.join(bundle, ".pycni")) if f.startswith("libpython3.1")]


def test_start_up_runs_no_runtime_hook_and_no_archive(bundle):
    """The build drops PyInstaller's inspect, multiprocessing and pkgutil
    runtime hooks (~12 ms of every exec) and builds without a PYZ archive
    (--noarchive): the executable's own archive holds the bootstrap and our
    entry script only, our modules are .pyc files under .pycni/, and the
    bootstrap's ctypes module is our lazy one."""
    with open(os.path.join(bundle, "pycni"), "rb") as f:
        data = f.read()
    for hook in (b"pyi_rth_pkgutil", b"pyi_rth_inspect", b"pyi_rth_multiprocessing"):
        assert hook not in data
    assert b"CtypesFinder" in zlib_members(data)
    internal = os.path.join(bundle, ".pycni")
    assert os.path.isfile(os.path.join(internal, "cnilib", "main.pyc"))
    assert os.path.isfile(os.path.join(internal, "plugins", "bridge.pyc"))
    assert not os.path.exists(os.path.join(internal, "base_library.zip"))


def zlib_members(data):
    """The bytes of every zlib stream in ``data`` (the executable's archive
    compresses each member on its own), joined."""
    out = []
    for i in range(len(data) - 1):
        if data[i] == 0x78 and data[i + 1] in (0x01, 0x5E, 0x9C, 0xDA):
            try:
                out.append(zlib.decompressobj().decompress(data[i:]))
            except zlib.error:
                continue
    return b"".join(out)


@pytest.mark.root
@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_version_opens_neither_ctypes_nor_pkgutil(bundle, tmp_path):
    """What the bundle's start imports, read from the files a VERSION exec
    opens: our entry and the skel, never ctypes (imported on first use
    only) or pkgutil (its hook is gone)."""
    trace = tmp_path / "trace"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION", "PYCNI_LOG": "off"}
    p = subprocess.run(["strace", "-f", "-e", "trace=openat", "-o", str(trace),
                        os.path.join(bundle, "loopback")], input=b"{}", capture_output=True, env=env,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    opened = trace.read_text()
    assert "/.pycni/cnilib/cni/skel.pyc" in opened
    assert "/ctypes/" not in opened and "pkgutil" not in opened and "/typing.pyc" not in opened


PROBE = """#!/bin/sh
env > "$(dirname "$0")/env.$CNI_COMMAND"
echo '{"cniVersion":"1.0.0","ips":[{"address":"10.66.0.2/24"}]}'
"""


@pytest.mark.root
@pytest.mark.parametrize("caller", [None, "/opt/vendor/lib"])
def test_children_get_the_callers_library_path(bundle, host, ctr, tmp_path, caller):
    """The bootloader points LD_LIBRARY_PATH at .pycni (Debian 11's libz,
    libssl, ...); a delegated plugin, nft or iptables must not load those:
    they get what the runtime gave the bundle."""
    probe = tmp_path / "bin" / "envprobe"
    probe.parent.mkdir()
    probe.write_text(PROBE)
    probe.chmod(0o755)
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "bridge", "bridge": "brenv", "ipMasq": True,
            "ipam": {"type": "envprobe"}}
    extra = {"PYCNI_STATE_DIR": str(tmp_path / "state"), "PYCNI_RUN_DIR": str(tmp_path / "run"),
             "PYCNI_LOG": "off"}
    if caller:
        extra["LD_LIBRARY_PATH"] = caller
    r = run_plugin(os.path.join(bundle, "bridge"), "ADD", conf, containerid="c1", netns=ctr.path,
                   ifname="eth0", path=str(probe.parent), host_netns=host.name, extra_env=extra)
    assert r.rc == 0, r
    env = dict(line.split("=", 1) for line in (probe.parent / "env.ADD").read_text().splitlines()
               if "=" in line)
    assert env.get("LD_LIBRARY_PATH") == caller and "LD_LIBRARY_PATH_ORIG" not in env


@pytest.mark.root
def test_the_bundle_execd_again_sets_itself_up(bundle, host, ctr, tmp_path):
    """A delegate that is the bundle itself (flannel exec'ing bridge, not
    running it in process) starts as a fresh bundle: it finds its own
    libraries (libffi for ctypes, which bridge's setns needs) although the
    caller's loader path was given back to children."""
    subnet = tmp_path / "subnet.env"
    subnet.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\n"
                      "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel", "subnetFile": str(subnet),
            "dataDir": str(tmp_path / "flannel"), "ipam": {"dataDir": str(tmp_path / "ipam")}}
    extra = {"PYCNI_STATE_DIR": str(tmp_path / "state"), "PYCNI_RUN_DIR": str(tmp_path / "run"),
             "PYCNI_LOG": "off", "PYCNI_NO_INPROCESS": "1"}
    kw = dict(containerid="c1", netns=ctr.path, ifname="eth0", path=bundle, host_netns=host.name,
              extra_env=extra)
    r = run_plugin(os.path.join(bundle, "flannel"), "ADD", conf, **kw)
    assert r.rc == 0, r
    assert r.json["ips"][0]["address"] == "10.244.9.2/24"
    r = run_plugin(os.path.join(bundle, "flannel"), "DEL", conf, **kw)
    assert r.rc == 0, r
