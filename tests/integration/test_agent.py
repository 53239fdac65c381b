"""The optional warm agent: same results as in-process work, the caller's
netns, uid-0 only, and a fallback when a worker dies mid-request."""

import os
import socket
import subprocess
import sys
import time

import pytest
from cnitest import ROOT, assert_cni_error, run_plugin

pytestmark = pytest.mark.root

CONF = {"cniVersion": "1.0.0", "name": "lonet", "type": "loopback"}


def _run(plugins, verb, ctr, host, sock, **extra):
    env = {"PYCNI_AGENT_SOCKET": sock}
    env.update(extra)
    return run_plugin(os.path.join(plugins, "loopback"), verb, CONF, containerid="c1",
                      netns=ctr.path, ifname="lo", host_netns=host.name, extra_env=env)


def test_agent_serves_and_matches_in_process(plugins, agent, host, netns_factory, tmp_path):
    ctr = netns_factory(lo_up=False)
    via_agent = _run(plugins, "ADD", ctr, host, agent)
    assert via_agent.rc == 0, via_agent
    direct = _run(plugins, "ADD", ctr, host, "off")
    assert direct.json == via_agent.json
    assert oct(os.stat(agent).st_mode & 0o777) == "0o600"
    log = open(os.environ["PYCNI_LOG"]).read()
    assert log.count("loopback[") == 2


def test_agent_acts_in_callers_netns(plugins, agent, host):
    # the caller runs in `host`: through the agent, CNI_NETNS=host is still "own netns"
    r = run_plugin(os.path.join(plugins, "loopback"), "DEL", CONF, containerid="c1",
                   netns=host.path, ifname="lo", host_netns=host.name,
                   extra_env={"PYCNI_AGENT_SOCKET": agent})
    assert_cni_error(r, 8)
    assert "UP" in host.links()["lo"]["flags"]


def test_agent_resolves_paths_in_callers_mount_namespace(plugins, agent_private_mounts, host,
                                                         netns_factory):
    # containerd's netns mounts (or `ip netns exec`'s view) need not exist in
    # the agent's mount namespace: the worker must see the caller's
    ctr = netns_factory(lo_up=False)
    r = _run(plugins, "ADD", ctr, host, agent_private_mounts,
             PYCNI_FAILPOINTS="agent-fallback=error")
    assert r.rc == 0, r
    assert "UP" in ctr.links()["lo"]["flags"]
    r = _run(plugins, "DEL", ctr, host, agent_private_mounts)
    assert r.rc == 0, r
    assert "UP" not in ctr.links()["lo"]["flags"]


def test_worker_death_falls_back(plugins, agent, host, netns_factory):
    ctr = netns_factory(lo_up=False)
    # the failpoint kills the agent's worker; the shim then does the work itself
    r = _run(plugins, "ADD", ctr, host, agent, PYCNI_FAILPOINTS="agent-worker=kill")
    assert r.rc == 0, r
    assert "UP" in ctr.links()["lo"]["flags"]


def test_non_root_refused(agent):
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(agent)
            except PermissionError:
                os._exit(0)       # the 0600 socket already keeps others out
            os._exit(3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_worker_can_run_child_programs(tmp_path, statedir, host, ctr):
    # a worker must see its own children exit (nft, iptables-restore, a
    # delegate IPAM plugin), although the agent itself ignores SIGCHLD
    sock = str(tmp_path / "agent2" / "agent.sock")
    boot = ("import sys; sys.path.insert(0, %r)\n"
            "from cnilib.cni import registry\n"
            "registry.PLUGINS['spawner'] = 'agent_spawn_plugin'\n"
            "from cnilib.agent import server\n"
            "sys.exit(server.main(['--socket', %r]))" % (os.path.join(ROOT, "tests"), sock))
    p = subprocess.Popen([sys.executable, "-c", boot], env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        else:
            pytest.fail("agent did not start: %s" % p.stderr.read().decode())
        call = ("from cnilib.agent import wire; import sys\n"
                "env = {'CNI_COMMAND': 'ADD', 'CNI_CONTAINERID': 'c1', 'CNI_NETNS': %r,\n"
                "       'CNI_IFNAME': 'eth0', 'CNI_PATH': '', 'PYCNI_AGENT_SOCKET': %r, 'PYCNI_LOG': %r}\n"
                "conf = b'{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"spawner\"}'\n"
                "print(wire.call('spawner', conf, env))"
                % (ctr.path, sock, os.environ["PYCNI_LOG"]))
        out = host.run(sys.executable, "-c", call, env=dict(os.environ, PYTHONPATH=ROOT)).stdout
        assert "child-rc-0" in out, out
    finally:
        p.terminate()
        p.wait(timeout=10)
