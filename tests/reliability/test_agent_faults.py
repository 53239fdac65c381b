"""The warm agent under fault injection (issue 16 item 3).

A runtime kills a plugin that runs too long (containerd's timeout is a
SIGKILL) and then runs the network's DEL.  With the agent, the killed exec
is only a shim: the work runs in an agent worker.  Here a failpoint holds
that worker (``sleep``) mid-ADD, the plugin exec the runner started is
SIGKILLed there, the runtime's DEL runs, and the held worker's wake-up is
waited out.  The node must then hold exactly what it held before the ADD
(no veth, address, lease, rule or file: no more than a killed in-process
ADD leaves once DEL ran), no worker may be left, and a second pod's ADD
must get an address no one else holds.  Before the fix the worker finished
the ADD after the DEL: a veth, an address and a lease stayed, and the
address could go to the next pod.

The held points are the ADD paths' failpoints in the code a worker runs
(bridge, flannel, host-local in-process, tuning); one more run holds a
bridge exec'd by flannel's worker (PYCNI_NO_INPROCESS=1), itself served by
a second worker: killing the flannel exec must stop both.
"""

import os
import signal
import subprocess
import sys
import time

import cnitest
import pytest
from relnode import ROOT, NetnsSet, RelNode, count, diff

pytestmark = pytest.mark.root

HOLD = 1.0
EXEC = {"PYCNI_NO_INPROCESS": "1"}
# (network, held failpoint, extra env)
CASES = [
    ("bnet", "bridge.add.after_ipam", {}),
    ("bnet", "bridge.add.after_veth", {}),
    ("bnet", "bridge.add.after_addrs", {}),
    ("bnet", "bridge.add.after_rules", {}),
    ("bnet", "tuning-after-link", {}),
    ("cbr0", "flannel-after-save", {}),
    ("cbr0", "bridge.add.after_ipam", {}),
    ("cbr0", "bridge.add.after_veth", {}),
    ("cbr0", "flannel-after-delegate-add", {}),
    ("cbr0", "bridge.add.after_veth", EXEC),
]


class Agent:
    def __init__(self, tmp):
        self.sock = os.path.join(tmp, "agent", "agent.sock")
        self.log = os.path.join(tmp, "agent.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cnilib.agent.server", "--socket", self.sock],
                                         env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            assert time.monotonic() < deadline and self.proc.poll() is None, cnitest.read_text(self.log)
            time.sleep(0.05)

    def workers(self):
        return _children(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=40)


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@pytest.fixture(scope="module")
def anode(tmp_path_factory):
    if "py" not in cnitest.forms() or not os.path.isdir(cnitest.plugin_dir("py")):
        pytest.skip("dist/py is not built, or not a form under test")
    tmp = tmp_path_factory.mktemp("agent-node")
    made = NetnsSet()
    agent = None
    try:
        node = RelNode(cnitest.plugin_dir("py"), tmp, made)
        agent = Agent(str(tmp))
        node.agent = agent
        node.agent_env = {"PYCNI_AGENT_SOCKET": agent.sock}
        # the bridges, shared chains and lock files; the order of the failpoints
        node.traces = {}
        for net in ("bnet", "cbr0"):
            for mode in ({}, EXEC):
                env = dict(node.agent_env, PYCNI_FAILPOINTS="*=trace", **mode)
                node.traced()
                node.add(net, "warm", env=env)
                node.traces[net, bool(mode)] = node.traced()
                node.delete(net, "warm", env=env)
        node.traced()
        node.settle()
        yield node
    finally:
        if agent is not None:
            agent.stop()
        made.close()


def _traced(node):
    try:
        with open(node.trace) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def _hold_and_kill(node, net, cid, point, extra):
    """ADD through the runner with the worker held at ``point``; SIGKILL the
    plugin exec the runner is waiting for once the worker got there.
    Returns when the hold started."""
    order = node.traces[net, bool(extra)]
    assert order.index(point) > 0, order
    before = order[order.index(point) - 1]
    node.traced()
    env = node.env(CAP_ARGS=node.cap_args(cid))
    env.update(node.agent_env, PYCNI_FAILPOINTS="%s=sleep:%g,*=trace" % (point, HOLD), **extra)
    argv = ["ip", "netns", "exec", node.host.name, os.path.join(node.plugins, "pycni"), "add", net,
            node.pod(cid).path, "--container-id", cid, "--ifname=eth0"]
    runner = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while before not in _traced(node):
        assert runner.poll() is None, runner.communicate()
        assert time.monotonic() < deadline, "the ADD never reached %s" % before
        time.sleep(0.005)
    held = time.monotonic()
    time.sleep(0.05)                                    # into the sleep at ``point``
    plugin = _children(runner.pid)
    assert plugin, "the runner has no plugin running"
    os.kill(plugin[0], signal.SIGKILL)
    out, err = runner.communicate(timeout=30)
    assert runner.returncode != 0, (out, err)
    return held


@pytest.mark.parametrize("net,point,extra", CASES,
                         ids=["%s-%s%s" % (c[0], c[1], "-exec" if c[2] else "") for c in CASES])
def test_a_worker_stops_with_the_plugin_exec_the_runtime_killed(anode, net, point, extra):
    node = anode
    base = node.snapshot()
    held = _hold_and_kill(node, net, "held1", point, extra)
    node.delete(net, "held1", env=dict(node.agent_env, **extra))      # the runtime's DEL
    time.sleep(max(0.0, held + HOLD + 0.5 - time.monotonic()))        # the held worker's wake-up
    node.settle()
    want = dict(base, **{"pod held1 links": {("lo", "", "")},
                         "pod held1 addrs": {("lo", "127.0.0.1/8"), ("lo", "::1/128")}})
    assert diff(want, node.snapshot(pods=["held1"])) == {}, "left after the killed ADD and its DEL"
    assert node.agent.workers() == [], "a worker outlived its exec"
    # the next pod gets an address nobody else holds, and leaves nothing either
    res = node.add(net, "next1", env=node.agent_env)
    mine = {ip["address"].split("/")[0] for ip in res["ips"]}
    leases = sorted(f.split("/")[2] for f in node.leases(net)
                    if f.count("/") == 2 and not f.split("/")[2].startswith("."))
    assert leases == sorted(mine), leases
    held_addrs = {a.split("/")[0] for _n, a in node.addrs(node.pod("held1"))}
    assert not mine & held_addrs
    node.delete(net, "next1", env=node.agent_env)
    node.settle()
    assert diff(base, node.snapshot()) == {}, "left after the next pod's ADD and DEL"
    node.pod("held1").delete()
    node.pods.pop("held1")
    count("agent workers held mid-ADD, their exec killed, nothing left")
