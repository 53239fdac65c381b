"""bench/kernel_growth.py runs end to end on a few pods and leaves no
namespace behind (its figures are for bench runs, never asserted here)."""

import os
import subprocess
import sys

import pytest
from cnitest import ROOT


@pytest.mark.root
def test_kernel_growth_runs_and_cleans_up():
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    p = subprocess.run([sys.executable, "-m", "bench.kernel_growth", "--pods", "4", "--skip", "garp"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "pods 1-1 vs 4-4" in p.stdout and "quiet, empty bridge vs 4 pods" in p.stdout
    assert "skipped: garp" in p.stdout
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not [n for n in after - before if "-kg-" in n]
