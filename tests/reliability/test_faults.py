"""Fault injection: SIGKILL at every failpoint of the ADD (and DEL) paths.

The failpoints are read from the code (every ``failpoint.hit("...")`` in
cnilib/ and plugins/), so a new one is covered by the next run.  Which
network's ADD or DEL passes a failpoint is learnt by running both with
``PYCNI_FAILPOINTS=*=trace``; a failpoint that neither passes fails the test
(a dead failpoint, or a path the chains here do not drive).

For each failpoint on an ADD path: ADD killed there, DEL, DEL again; then
the node must hold exactly what it held before the ADD (state files, links,
addresses, routes, nftables ruleset, iptables rules, the pod's interfaces),
and a new ADD and its DEL must work.  On a DEL path: ADD, DEL killed there,
DEL twice, the same checks.  Delegates run in-process (the default) and,
in the py form, exec'd (PYCNI_NO_INPROCESS=1), so a kill can take down the
delegate alone and leave its caller to clean up.
"""

import json
import os

import pytest
from relnode import NETWORKS, PY_ONLY, count, diff, failpoints_in_code

pytestmark = pytest.mark.root

FAILPOINTS = failpoints_in_code()
NOT_HERE = {"agent-worker": "the agent's worker dies (tests/integration/test_agent.py)",
            "agent-fallback": "the shim works in-process (tests/integration/test_agent.py)"}
# code that runs as a delegate in each network: exec'ing it instead of running
# it in-process changes which process a kill takes down
DELEGATED = {"cbr0": ("plugins/bridge.py", "plugins/host_local.py", "cnilib/ipam/"),
             "bnet": ("plugins/host_local.py", "cnilib/ipam/")}
MODES = {"inproc": {}, "exec": {"PYCNI_NO_INPROCESS": "1"}}
WARM = {}


def traces(node):
    """{network: {"ADD": [...], "DEL": [...]}}: the failpoints each verb
    passes, learnt once per node; the first ADD/DEL also warms the node up
    (the bridge, shared chains and lock files that outlive an attachment)."""
    if "traces" not in node.__dict__:
        got = {}
        for net in NETWORKS:
            node.traced()
            env = {"PYCNI_FAILPOINTS": "*=trace"}
            node.add(net, "trace1", env=env)
            add = node.traced()
            node.delete(net, "trace1", env=env)
            got[net] = {"ADD": add, "DEL": node.traced()}
        node.settle()
        node.traces = got
    return node.traces


def baseline(node):
    """The node's state before a scenario: the last one's end state if it
    ended clean, else a fresh snapshot (one test's leak fails that test only)."""
    base = node.__dict__.pop("clean", None)
    return base if base is not None else node.snapshot()


def assert_back_to(node, base, cid, what):
    node.settle()
    now = node.snapshot(pods=[cid])
    want = dict(base, **{"pod %s links" % cid: {("lo", "", "")}, "pod %s addrs" % cid:
                         {("lo", "127.0.0.1/8"), ("lo", "::1/128")}})
    assert diff(want, now) == {}, "leaked after %s" % what


def kill_add(node, net, point, mode_env):
    base = baseline(node)
    cid = "fault1"
    r = node.pycni("add", net, cid, env=dict(mode_env, PYCNI_FAILPOINTS="%s=kill" % point))
    assert r.rc != 0, r
    assert r.rc == -9 or "exit status -9" in r.stderr, r      # killed, not an orderly error
    for _ in range(2):
        node.delete(net, cid, env=mode_env)
    assert_back_to(node, base, cid, "ADD killed at %s, then DEL twice" % point)
    again = node.add(net, cid, env=mode_env)
    assert again["ips"], again
    node.delete(net, cid, env=mode_env)
    assert_back_to(node, base, cid, "the ADD and DEL after the crash")
    node.clean = base
    count("SIGKILLs survived (ADD killed, DEL x2, no leak, ADD again)")


def kill_del(node, net, point, mode_env):
    base = baseline(node)
    cid = "fault2"
    node.add(net, cid, env=mode_env)
    r = node.pycni("del", net, cid, env=dict(mode_env, PYCNI_FAILPOINTS="%s=kill" % point))
    assert r.rc != 0, r
    for _ in range(2):
        node.delete(net, cid, env=mode_env)
    assert_back_to(node, base, cid, "DEL killed at %s, then DEL twice" % point)
    node.add(net, cid, env=mode_env)
    node.delete(net, cid, env=mode_env)
    assert_back_to(node, base, cid, "the ADD and DEL after the crash")
    node.clean = base
    count("SIGKILLs survived (DEL killed, DEL x2, no leak, ADD again)")


@pytest.mark.parametrize("point", sorted(FAILPOINTS))
def test_kill_at_failpoint_then_del_twice_then_add(mnode, mform, point):
    if point in NOT_HERE:
        pytest.skip(NOT_HERE[point])
    t = traces(mnode)
    adds = [net for net in NETWORKS if point in t[net]["ADD"]]
    dels = [net for net in NETWORKS if point in t[net]["DEL"]]
    assert adds or dels, "failpoint %s (%s) is passed by no ADD or DEL of %s" % (
        point, ", ".join(FAILPOINTS[point]), "/".join(NETWORKS))
    run = kill_add if adds else kill_del
    # the bundle runs the same code: one network is enough to see it crash alike
    for net in (adds or dels)[:None if mform == "py" else 1]:
        modes = ["inproc"]
        if mform == "py" and any(f.startswith(DELEGATED[net]) for f in FAILPOINTS[point]):
            modes.append("exec")
        for mode in modes:
            run(mnode, net, point, MODES[mode])


def test_the_add_paths_pass_the_failpoints_the_issue_names(mnode):
    """after IPAM, after the veth, after addresses, after rules, around each
    state write: in bridge, flannel and portmap ADD (and host-local's leases)."""
    t = traces(mnode)
    add = set(t["cbr0"]["ADD"]) | set(t["bnet"]["ADD"])
    for point in ("bridge.add.after_ipam", "bridge.add.after_veth", "bridge.add.after_addrs",
                  "bridge.add.after_rules", "flannel-before-save", "flannel-after-save",
                  "flannel-after-delegate-add", "portmap-after-rules", "portmap-ipt-after-family",
                  "hostlocal-before-lease-link", "hostlocal-after-lease-write",
                  "hostlocal-after-last-reserved", "runner-before-cache-write",
                  "runner-after-cache-write", "fw-record-before-write", "fw-record-after-write"):
        assert point in add, point
    # flannel's ADD order: save, delegate (bridge: IPAM, veth, addresses), then portmap
    order = t["cbr0"]["ADD"]
    assert order.index("flannel-after-save") < order.index("bridge.add.after_ipam") \
        < order.index("flannel-after-delegate-add") < order.index("portmap-after-rules")


ORPHANS = ["bridge.add.after_veth", "bridge.add.after_addrs", "bridge.add.after_rules",
           "flannel-after-delegate-add", "portmap-after-rules", "tuning-after-link"]


@PY_ONLY
@pytest.mark.parametrize("point", ORPHANS)
def test_gc_frees_what_a_killed_add_left_without_any_del(rnode, point):
    """user-pain #27: the runtime never DELs a crashed ADD; GC with a valid
    list that does not name it frees its veth, lease, rules and files, and
    leaves the live attachment alone."""
    t = traces(rnode)
    for net in NETWORKS:
        rnode.add(net, "keep-" + net)
    base = rnode.snapshot()
    for net in [n for n in NETWORKS if point in t[n]["ADD"]]:
        r = rnode.pycni("add", net, "orphan1", env={"PYCNI_FAILPOINTS": "%s=kill" % point})
        assert r.rc != 0, r
        vf = os.path.join(rnode.tmp, "valid.json")
        with open(vf, "w") as f:
            json.dump([{"containerID": "keep-" + net, "ifname": "eth0"}], f)
        r = rnode.pycni("gc", net, extra=["--valid", vf])
        assert r.rc == 0, r
        rnode.settle(live=2)
        assert diff(base, rnode.snapshot()) == {}, "GC left the orphan of %s on %s" % (point, net)
        count("killed ADDs freed by GC alone")
