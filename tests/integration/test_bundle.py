"""dist/bin as the build leaves it: built in the Debian 11 root, within the
glibc floor, and lean at start-up."""

import os
import subprocess
import sys

import pytest
from cnitest import DIST, ROOT

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


def test_start_up_skips_the_inspect_and_multiprocessing_hooks(bundle):
    """The build drops PyInstaller's inspect and multiprocessing runtime
    hooks (~25 ms of every exec): their names are not in the executable's
    archive, while the hook kept beside them is."""
    with open(os.path.join(bundle, "pycni"), "rb") as f:
        data = f.read()
    assert b"pyi_rth_pkgutil" in data
    assert b"pyi_rth_inspect" not in data and b"pyi_rth_multiprocessing" not in data
