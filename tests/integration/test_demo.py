"""The README's main job: ``pycni demo`` on built-in defaults, both forms."""

import os
import subprocess

import pytest

pytestmark = pytest.mark.root


def _netns():
    """The demo's namespaces (other test sessions may add their own meanwhile)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {w for w in out.split() if w.startswith("pycni-demo-")}


# the machine's CNI state the demo must leave alone (its nodes get temp dirs)
MACHINE_STATE = ("/run/flannel", "/var/lib/cni", "/etc/cni/net.d", "/var/log/pycni")


def _machine_state():
    out = {}
    for top in MACHINE_STATE:
        for d, _dirs, files in os.walk(top):
            for f in files:
                st = os.lstat(os.path.join(d, f))
                out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


def test_demo(plugins, tmp_path):
    before = _netns()
    state = _machine_state()
    env = dict(os.environ, PYCNI_LOG=str(tmp_path / "outer.log"))
    p = subprocess.run([os.path.join(plugins, "pycni"), "demo"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for needle in ("0% packet loss", "instance 1", "8472", "answered: hello from node1 pod1",
                   "pycni check cbr0", ": ok", "no lease, saved file or veth left behind",
                   "the machine is as it was"):
        assert needle in out, (needle, out)
    assert _netns() == before
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "flannel.1" not in links and "cni0" not in links
    assert _machine_state() == state
