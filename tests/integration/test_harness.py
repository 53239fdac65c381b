"""The test harness itself: no network namespace a test made outlives its
run, whether the run passes, fails, is stopped (SIGTERM) or is killed
(SIGKILL, then the next session sweeps it).  An earlier run stopped from
outside left its ``pt*`` namespaces on the shared machine."""

import os
import signal
import subprocess
import sys
import textwrap

import cnitest
import pytest

pytestmark = pytest.mark.root

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exists(name):
    return os.path.exists("/run/netns/" + name)


def test_a_killed_run_s_namespaces_are_swept_by_the_next_session():
    prog = textwrap.dedent("""
        import os, signal, sys
        sys.path.insert(0, %r)
        import cnitest
        ns = cnitest.Netns()
        print(ns.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """ % TESTS)
    p = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60)
    name = p.stdout.strip()
    assert p.returncode == -signal.SIGKILL and name, p
    try:
        assert exists(name)
        assert name in cnitest.sweep_dead_registries()
        assert not exists(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_a_stopped_run_tears_its_fixtures_down(tmp_path):
    (tmp_path / "test_stopped.py").write_text(textwrap.dedent("""
        import time

        def test_hangs(ctr):
            print("NETNS", ctr.name, flush=True)
            time.sleep(120)
    """))
    env = dict(os.environ, PYTHONPATH=TESTS)
    argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "conftest", "-p", "no:cacheprovider",
            "--rootdir", str(tmp_path), str(tmp_path / "test_stopped.py")]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         cwd=str(tmp_path))
    name = None
    try:
        for line in p.stdout:
            if line.startswith("NETNS "):
                name = line.split()[1]
                break
        assert name and exists(name)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
        assert not exists(name)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if name:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
