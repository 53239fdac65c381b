"""bench/kernel_growth.py runs end to end on a few pods, with the py
form's bridge exec'd in its quiet states, and leaves no namespace behind
(its figures are for bench runs, never asserted here)."""

import os
import subprocess
import sys

import pytest
from cnitest import ROOT


@pytest.mark.root
def test_kernel_growth_runs_and_cleans_up():
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    py = os.path.join(ROOT, "dist", "py")
    if not os.path.isfile(os.path.join(py, "bridge")):
        pytest.skip("dist/py is not built (./build.sh)")
    p = subprocess.run([sys.executable, "-m", "bench.kernel_growth", "--pods", "4", "--skip", "garp",
                        "--plugins", py], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert "pods 1-1 vs 4-4" in p.stdout and "quiet, empty bridge vs 4 pods" in p.stdout
    assert "skipped: garp" in p.stdout
    assert "exec'd bridge + host-local ADD, %s: quiet, empty bridge vs 4 pods" % py in p.stdout
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not [n for n in after - before if "-kg-" in n]
