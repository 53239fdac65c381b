"""A private warm agent for one test: started on a temp socket, stopped after."""

import os
import signal
import subprocess
import sys
import time

import pytest
from cnitest import ROOT, read_text

# an agent with the test plugins (tests/agent_spawn_plugin.py, agent_probe_plugin.py)
BOOT = ("import sys; sys.path.insert(0, %r)\n"
        "from cnilib.cni import registry\n"
        "registry.PLUGINS['spawner'] = 'agent_spawn_plugin'\n"
        "registry.PLUGINS['prober'] = 'agent_probe_plugin'\n"
        "from cnilib.agent import server\n"
        "sys.exit(server.main(sys.argv[1:]))" % os.path.join(ROOT, "tests"))


class Agent:
    """A running ``pycni agent`` (from the source tree) and its log (stderr)."""

    def __init__(self, tmp_path, prefix=(), args=(), test_plugins=False, name="agent"):
        self.sock = str(tmp_path / name / "agent.sock")
        self.log_path = str(tmp_path / (name + ".log"))
        env = dict(os.environ, PYTHONPATH=ROOT)
        main = ["-c", BOOT] if test_plugins else ["-m", "cnilib.agent.server"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(list(prefix) + [sys.executable] + main + ["--socket", self.sock]
                                         + list(args), env=env, stdout=subprocess.DEVNULL, stderr=log,
                                         cwd=ROOT)
        for _ in range(200):
            if os.path.exists(self.sock):
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        else:
            self.proc.kill()
            self.proc.wait()
        if not os.path.exists(self.sock):
            pytest.fail("agent did not start: %s" % self.log())

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return read_text(self.log_path)

    def workers(self):
        """Pids of the agent's live workers (its children; unshare's grandchildren)."""
        pids, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            try:
                with open("/proc/%d/task/%d/children" % (p, p)) as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                kids = []
            pids += kids
            todo += kids
        return [p for p in pids if _is_python(p)]

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.workers():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _is_python(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().startswith("python")
    except OSError:
        return False


def _start_agent(tmp_path, prefix=()):
    a = Agent(tmp_path, prefix)
    return a.proc, a.sock


def _stop_agent(p, sock):
    p.terminate()
    p.wait(timeout=40)
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


@pytest.fixture
def agent_factory(tmp_path, statedir):
    """Start agents with options: ``agent_factory(args=[...], test_plugins=True)``."""
    made = []

    def make(**kw):
        kw.setdefault("name", "agent%d" % len(made))
        a = Agent(tmp_path, **kw)
        made.append(a)
        return a
    yield make
    for a in made:
        a.stop()
