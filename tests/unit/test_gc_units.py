"""conf/pycni-gc.service and .timer: what they run, when, and that the
packages ship them without enabling them.  ``systemd-analyze verify``
checks both files where systemd is installed (the ExecStart pointed at the
built pycni, since /usr/libexec/cni/pycni exists only on an installed node)."""

import configparser
import os
import re
import shlex
import shutil
import subprocess

import pytest
from cnitest import DIST, ROOT

CONF = os.path.join(ROOT, "conf")


def unit(name):
    p = configparser.ConfigParser(strict=True, interpolation=None)
    p.optionxform = str
    with open(os.path.join(CONF, name)) as f:
        p.read_file(f)
    return p


def test_the_service_runs_gc_auto_once_per_start():
    s = unit("pycni-gc.service")
    assert s["Service"]["Type"] == "oneshot"
    assert shlex.split(s["Service"]["ExecStart"]) == ["/usr/libexec/cni/pycni", "gc", "--auto"]
    # the node's namespaces: a private /run or network would hide the pods (gc then refuses)
    for key in ("PrivateTmp", "PrivateNetwork", "PrivateMounts", "ProtectSystem", "NetworkNamespacePath"):
        assert key not in s["Service"], key
    caps = s["Service"]["CapabilityBoundingSet"].split()
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"} <= set(caps)
    assert "Install" not in s        # started by the timer only
    assert "containerd.service" in s["Unit"]["After"]


def test_the_timer_runs_the_service_and_is_installed_by_timers_target():
    t = unit("pycni-gc.timer")
    assert "Unit" not in t["Timer"]          # the service of the same name
    assert t["Timer"]["OnBootSec"] and t["Timer"]["OnUnitInactiveSec"]
    assert t["Install"]["WantedBy"] == "timers.target"


def test_the_packages_ship_both_units_and_enable_nothing():
    with open(os.path.join(ROOT, "build.sh")) as f:
        text = f.read()
    deb = text[text.index("build_deb() {"):text.index("build_rpm() {")]
    rpm = text[text.index("build_rpm() {"):text.index("# ---", text.index("build_rpm() {"))]
    for body in (deb, rpm):
        assert "pycni-agent.service pycni-gc.service pycni-gc.timer" in body
    assert "/usr/lib/systemd/system/pycni-gc.timer" in rpm
    assert not re.search(r"systemctl\s+(enable|start)", text)


def test_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    pycni = os.path.join(DIST, "py", "pycni")
    if not os.path.exists(pycni):
        pytest.skip("dist/py is not built (./build.sh)")
    for name in ("pycni-gc.service", "pycni-gc.timer"):
        with open(os.path.join(CONF, name)) as f:
            text = f.read().replace("/usr/libexec/cni/pycni", pycni)
        (tmp_path / name).write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "pycni-gc.service"),
                        str(tmp_path / "pycni-gc.timer")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
