"""A private warm agent for one test: started on a temp socket, stopped after."""

import os
import subprocess
import sys
import time

import pytest
from cnitest import ROOT


def _start_agent(tmp_path, prefix=()):
    sock = str(tmp_path / "agent" / "agent.sock")
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen(list(prefix) + [sys.executable, "-m", "cnilib.agent.server", "--socket", sock],
                         env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    else:
        p.kill()
        pytest.fail("agent did not start: %s" % p.stderr.read().decode())
    return p, sock


def _stop_agent(p, sock):
    p.terminate()
    p.wait(timeout=10)
    assert not os.path.exists(sock)


@pytest.fixture
def agent(tmp_path, statedir):
    p, sock = _start_agent(tmp_path)
    yield sock
    _stop_agent(p, sock)


@pytest.fixture
def agent_private_mounts(tmp_path, statedir):
    """An agent in a mount namespace of its own that receives no mounts from
    ours: netns made after it started are mounted only where the caller is."""
    p, sock = _start_agent(tmp_path, ("unshare", "--mount", "--propagation", "private"))
    yield sock
    _stop_agent(p, sock)
