"""The bench runs a form inside a root (--root): VERSION of both forms in
the Debian 11 root, timed by the exec timer and libcni running there."""

import json
import os
import subprocess
import sys

import pytest
from cnitest import DIST, ROOT

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_quick_version_run_in_the_debian11_root(tmp_path, distro_roots):
    distro_roots("11")
    if not (os.path.isdir(os.path.join(DIST, "py")) and os.path.isdir(os.path.join(DIST, "bin"))):
        pytest.skip("dist is not built (./build.sh)")
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "bench", "--root", "11", "--quick", "--only", "version", "--json", str(out)]
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    assert "in a Debian 11." in stdout and "glibc 2.31, python3 3.9.2" in stdout
    data = json.loads(out.read_text())
    assert data["machine"]["root"]["glibc"] == "2.31"
    rows = {(r["workload"], r["variant"]): r for r in data["rows"]}
    for variant in ("py", "bundle"):
        row = rows["VERSION exec (loopback)", variant]
        assert row["n"] == 10 and row["p50"] > 0 and not data["errors"], (row, data["errors"])
    assert not [k for k in rows if k[1] == "Go"]
    assert not [n for n in os.listdir("/var/run/netns") if n.startswith("pcbench%d-" % p.pid)]
    run_dir = os.path.dirname(os.path.dirname(data["variants"]["py"]["dir"]))
    assert run_dir.startswith("/tmp/pycni-bench-") and not os.path.exists(run_dir)   # its copies are gone
