"""The optional warm agent: same results as in-process work, the caller's
netns, and a fallback to in-process work whenever the agent cannot or must
not do it: a caller that could not have done the work itself (issue 16
item 2), a worker whose caller is gone (3), an agent that is stopped or
wedged (4), a full agent and a silent client (16)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from bridge_env import ping
from cnitest import ROOT, assert_cni_error, read_text, run_plugin

pytestmark = pytest.mark.root

CONF = {"cniVersion": "1.0.0", "name": "lonet", "type": "loopback"}

# a wrapper that installs an allow-all seccomp filter (mode 2), then execs argv[1:]
SECCOMP_WRAP = r'''
import ctypes, os, sys
class F(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]
class P(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
insns = (F * 1)(F(0x06, 0, 0, 0x7fff0000))          # BPF_RET|BPF_K SECCOMP_RET_ALLOW
prog = P(1, insns)
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    sys.exit("seccomp: errno %d" % ctypes.get_errno())
assert "Seccomp:\t2" in open("/proc/self/status").read()
os.execv(sys.argv[1], sys.argv[1:])
'''
NO_CAPS = ("setpriv", "--inh-caps=-all", "--bounding-set=-all")


def _env(sock, **extra):
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "PYCNI_AGENT_SOCKET": sock, "PYCNI_LOG": os.environ["PYCNI_LOG"]}
    env.update(extra)
    return env


def _run(plugins, verb, ctr, host, sock, **extra):
    return run_plugin(os.path.join(plugins, "loopback"), verb, CONF, containerid="c1",
                      netns=ctr.path, ifname="lo", host_netns=host.name, extra_env=_env(sock, **extra))


def _exec(prefix, plugins, verb, ctr, host, sock, timeout=60, **extra):
    """loopback VERB as ``ip netns exec HOST PREFIX... loopback``: a caller
    whose credentials PREFIX changed.  Returns (rc, stdout)."""
    env = _env(sock, CNI_COMMAND=verb, CNI_CONTAINERID="c1", CNI_NETNS=ctr.path, CNI_IFNAME="lo",
               CNI_PATH=plugins, **extra)
    p = subprocess.run(["ip", "netns", "exec", host.name] + list(prefix)
                       + [os.path.join(plugins, "loopback")],
                       input=json.dumps(CONF).encode(), capture_output=True, env=env, timeout=timeout)
    return p.returncode, p.stdout.decode()


def _lo_up(ns):
    return "UP" in ns.links()["lo"]["flags"]


def _log_entries():
    """[(summary line, [detail lines])] of the suite's log."""
    out = []
    for line in read_text(os.environ["PYCNI_LOG"]).splitlines():
        if line.startswith("  "):
            out[-1][1].append(line.strip())
        else:
            out.append((line, []))
    return out


def _notes(verb="ADD"):
    """The agent notes of the last loopback VERB in the log."""
    for summary, details in reversed(_log_entries()):
        if " %s " % verb in summary:
            return [d for d in details if d.startswith("agent: ")]
    raise AssertionError("no %s in the log" % verb)


def _refused_like_in_process(prefix, plugins, ctr, host, agent, why):
    """ADD by a caller the agent must refuse: the same answer as in-process,
    the refusal logged in both logs."""
    via_agent = _exec(prefix, plugins, "ADD", ctr, host, agent.sock)
    notes = _notes()
    up = _lo_up(ctr)
    if up:
        _exec((), plugins, "DEL", ctr, host, "off")
    direct = _exec(prefix, plugins, "ADD", ctr, host, "off")
    assert via_agent == direct, (via_agent, direct)
    assert up == _lo_up(ctr)
    assert len(notes) == 1 and why in notes[0] and notes[0].endswith("working in-process"), notes
    assert "agent: refused " in agent.log() and why in agent.log(), agent.log()
    return via_agent


# ---------------------------------------------------------------- serving


def test_agent_serves_and_matches_in_process(plugins, agent, host, netns_factory, tmp_path):
    ctr = netns_factory(lo_up=False)
    via_agent = _run(plugins, "ADD", ctr, host, agent)
    assert via_agent.rc == 0, via_agent
    direct = _run(plugins, "ADD", ctr, host, "off")
    assert direct.json == via_agent.json
    assert oct(os.stat(agent).st_mode & 0o777) == "0o600"
    log = open(os.environ["PYCNI_LOG"]).read()
    assert log.count("loopback[") == 2
    assert "agent:" not in log


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
    assert any("died mid-request" in n for n in _notes()), _notes()


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


def _unit_capabilities():
    """The CapabilityBoundingSet of conf/pycni-agent.service, for setpriv."""
    with open(os.path.join(ROOT, "conf", "pycni-agent.service")) as f:
        for line in f:
            if line.startswith("CapabilityBoundingSet="):
                return [c[4:].lower() for c in line.split("=", 1)[1].split()]
    raise AssertionError("no CapabilityBoundingSet in the unit")


def test_the_units_capabilities_are_enough(node, agent_factory):
    """An agent held to the unit (its bounding set, no_new_privs) serves a
    bridge ADD and DEL with masquerade, and the pods reach each other."""
    caps = ",".join("+" + c for c in _unit_capabilities())
    a = agent_factory(prefix=("setpriv", "--no-new-privs", "--inh-caps=-all",
                              "--bounding-set=-all," + caps))
    conf = node.conf(isDefaultGateway=True, ipMasq=True)
    p, q = node.container(), node.container()
    env = {"PYCNI_AGENT_SOCKET": a.sock}
    rp = node.add(conf, p, cid="unit1", env=env)
    node.add(conf, q, cid="unit2", env=env)
    assert ping(q, rp["ips"][0]["address"].split("/")[0])
    for c, cid in ((p, "unit1"), (q, "unit2")):
        node.delete(conf, c, cid=cid, env=env)
    node.assert_clean()
    assert "agent:" not in read_text(os.environ["PYCNI_LOG"])       # all served
    assert "refused" not in a.log() and "cannot" not in a.log(), a.log()


def _wire_call(host, sock, plugin, conf, prefix=(), netns="/nonexistent", chroot=None):
    """wire.call from a Python caller in ``host`` (credentials changed by
    ``prefix``; chrooted into ``chroot`` after its imports).  Returns the
    printed Outcome and result."""
    code = ("import json, os, sys; from cnilib.agent import wire\n"
            "env = {'CNI_COMMAND': 'ADD', 'CNI_CONTAINERID': 'c1', 'CNI_NETNS': %r,\n"
            "       'CNI_IFNAME': 'eth0', 'CNI_PATH': '', 'PYCNI_AGENT_SOCKET': %r, 'PYCNI_LOG': %r}\n"
            "chroot = %r\n"
            "if chroot:\n"
            "    os.chroot(chroot); os.chdir('/')\n"
            "got = wire.call(%r, json.dumps(%r).encode(), env)\n"
            "out = got[1] if isinstance(got, tuple) else got.out\n"    # an older wire.call: (rc, out)
            "print(json.dumps({'outcome': repr(got), 'out': out.decode()}))"
            % (netns, sock, "off" if chroot else os.environ["PYCNI_LOG"], chroot, plugin, conf))
    out = host.run(*(list(prefix) + [sys.executable, "-c", code]),
                   env=dict(os.environ, PYTHONPATH=ROOT)).stdout
    got = json.loads(out)
    return got["outcome"], json.loads(got["out"]) if got["out"] else None


def test_worker_can_run_child_programs(agent_factory, host, ctr):
    # a worker must see its own children exit (nft, iptables-restore, a
    # delegate IPAM plugin), although the agent reaps its workers itself
    a = agent_factory(test_plugins=True)
    outcome, res = _wire_call(host, a.sock, "spawner", {"cniVersion": "1.0.0", "name": "n",
                                                        "type": "spawner"}, netns=ctr.path)
    assert "answered=True" in outcome or outcome.startswith("(0, "), outcome
    assert res["interfaces"][0]["name"] == "child-rc-0", res


# ------------------------------------ item 2: only a caller that could do it


@pytest.mark.parametrize("pidfd", ["auto", "open"])
def test_a_caller_without_capabilities_is_refused(plugins, agent_factory, host, netns_factory, pidfd):
    """uid 0 with no capabilities: before, the agent brought lo up for it."""
    a = agent_factory(args=["--peer-pidfd", pidfd] if pidfd != "auto" else [])
    ctr = netns_factory(lo_up=False)
    rc, out = _refused_like_in_process(NO_CAPS, plugins, ctr, host, a,
                                       "lacks CAP_NET_ADMIN, CAP_SYS_ADMIN")
    assert rc == 1 and not _lo_up(ctr), out


def test_a_caller_with_no_new_privs_is_refused(plugins, agent_factory, host, netns_factory):
    a = agent_factory()
    ctr = netns_factory(lo_up=False)
    rc, out = _refused_like_in_process(("setpriv", "--no-new-privs"), plugins, ctr, host, a,
                                       "no_new_privs")
    assert rc == 0 and _lo_up(ctr), out


def test_a_caller_under_seccomp_is_refused(plugins, agent_factory, host, netns_factory):
    a = agent_factory()
    ctr = netns_factory(lo_up=False)
    rc, out = _refused_like_in_process((sys.executable, "-c", SECCOMP_WRAP), plugins, ctr, host, a,
                                       "seccomp filter (mode 2)")
    assert rc == 0 and _lo_up(ctr), out


def test_a_caller_in_another_user_namespace_is_refused(plugins, agent_factory, host, netns_factory):
    """root of a user namespace mapped onto uid 0: all capabilities, but only there."""
    a = agent_factory()
    ctr = netns_factory(lo_up=False)
    rc, out = _refused_like_in_process(("unshare", "--user", "--map-root-user"), plugins, ctr, host,
                                       a, "another user namespace")
    assert rc == 1 and not _lo_up(ctr), out


def test_the_older_kernels_path_serves_a_capable_caller(plugins, agent_factory, host, netns_factory):
    """--peer-pidfd=open: pidfd_open of the SO_PEERCRED pid, as before Linux 6.5."""
    a = agent_factory(args=["--peer-pidfd", "open"])
    ctr = netns_factory(lo_up=False)
    rc, out = _exec(("setpriv", "--bounding-set=-sys_module"), plugins, "ADD", ctr, host, a.sock)
    assert rc == 0 and _lo_up(ctr), out
    assert _notes() == [] and "refused" not in a.log(), a.log()


def test_without_a_pidfd_nobody_is_served(plugins, agent_factory, host, netns_factory):
    a = agent_factory(args=["--peer-pidfd", "none"])
    ctr = netns_factory(lo_up=False)
    rc, out = _refused_like_in_process((), plugins, ctr, host, a, "no pidfd")
    assert rc == 0 and _lo_up(ctr), out


@pytest.mark.parametrize("pidfd", ["auto", "open"])
def test_a_caller_that_exited_is_never_trusted(agent_factory, pidfd):
    """The process that connected exits before the agent takes the
    connection (a full agent), leaving it to a child: whoever holds that pid
    later is not the caller, and the pidfd shows it; refused."""
    a = agent_factory(args=["--max-workers", "1", "--read-timeout", "30", "--peer-pidfd", pidfd])
    busy = socket.socket(socket.AF_UNIX)
    busy.connect(a.sock)
    assert _wait_for(lambda: len(a.workers()) == 1)
    r, w = os.pipe()
    connector = os.fork()
    if connector == 0:          # connects, hands the socket to a child, exits
        try:
            os.close(r)
            busy.close()
            s = socket.socket(socket.AF_UNIX)
            s.connect(a.sock)
            if os.fork() == 0:
                from cnilib.agent import wire
                try:
                    s.sendall(wire.encode_request("loopback", {"CNI_COMMAND": "ADD"}, b"{}"))
                except OSError:
                    pass        # refused before it was read; the refusal is there
                s.settimeout(20)
                got = b""
                while len(got) < 7:
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    got += chunk
                os.write(w, got[:200])
                os._exit(0)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(connector, 0)
    busy.close()                # the agent takes the orphaned connection now
    got = os.read(r, 300)
    os.close(r)
    assert got.startswith(b"PYCNI3R"), got
    assert "agent: refused" in a.log(), a.log()


def _nobodys_script(tmp_path):
    """An executable only its owner (nobody) may run: root needs CAP_DAC_OVERRIDE."""
    d = tmp_path / "nobody"
    d.mkdir()
    os.chmod(d, 0o755)
    path = str(d / "ipam-only-nobody-may-run")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o700)
    return path


def _caps_of(line):
    got = {}
    for ln in line["out"].splitlines():
        k, _, v = ln.partition(":")
        got[k] = int(v.strip(), 16)
    return got


def test_a_worker_runs_no_program_the_caller_could_not(agent_factory, host, ctr, tmp_path):
    """A caller without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH cannot exec a
    0700 file of another user; the worker that runs its delegate may not
    either, and that delegate holds no capability the caller lacks."""
    a = agent_factory(test_plugins=True)
    script = _nobodys_script(tmp_path)
    report = str(tmp_path / "report.jsonl")
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "spawner", "report": report,
            "run": [[script], ["grep", "^Cap", "/proc/self/status"]]}
    outcome, _ = _wire_call(host, a.sock, "spawner", conf, netns=ctr.path)
    assert "answered=True" in outcome or outcome.startswith("(0, "), outcome
    outcome, _ = _wire_call(host, a.sock, "spawner", conf, netns=ctr.path,
                            prefix=("setpriv", "--bounding-set=-dac_override,-dac_read_search"))
    assert "answered=True" in outcome or outcome.startswith("(0, "), outcome
    full, reduced = [], []
    with open(report) as f:
        lines = [json.loads(x) for x in f]
    full, reduced = lines[:2], lines[2:]
    assert full[0].get("rc") == 0, full             # a full-capability caller's worker may
    assert "rc" not in reduced[0] or reduced[0]["rc"] != 0, reduced
    dac = (1 << 1) | (1 << 2)
    caps = _caps_of(reduced[1])
    for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert not caps[k] & dac, (k, hex(caps[k]))
    assert _caps_of(full[1])["CapEff"] & dac == dac


def test_a_worker_takes_the_callers_root(agent_factory, host, tmp_path):
    """A chrooted caller's worker sees the caller's root, not the agent's."""
    root = tmp_path / "callers-root"
    root.mkdir()
    (root / "only-in-the-callers-root").write_text("")
    a = agent_factory(test_plugins=True)
    sock = str(root / "agent.sock")
    os.link(a.sock, sock)                  # the socket, seen from inside the root
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "prober", "probe": "/only-in-the-callers-root"}
    outcome, res = _wire_call(host, "/agent.sock", "prober", conf, chroot=str(root))
    assert "answered=True" in outcome or outcome.startswith("(0, "), outcome
    assert res["interfaces"][0]["name"] == "exists-True", res


# ------------------------------------------ item 3: a worker outlives its exec


def test_a_worker_stops_with_its_caller(plugins, agent_factory, host, netns_factory):
    """The runtime kills the plugin mid-ADD: the worker must not finish the
    ADD afterwards (before, it brought lo up after the runtime's DEL)."""
    a = agent_factory()
    ctr = netns_factory(lo_up=False)
    env = _env(a.sock, CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS=ctr.path, CNI_IFNAME="lo",
               CNI_PATH=plugins, PYCNI_FAILPOINTS="agent-worker=sleep:3")
    p = subprocess.Popen(["ip", "netns", "exec", host.name, os.path.join(plugins, "loopback")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    p.stdin.write(json.dumps(CONF).encode())
    p.stdin.close()
    workers = _wait_for(a.workers)
    time.sleep(1.0)             # into the failpoint, mid-ADD
    p.kill()
    p.wait()
    assert _wait_for(lambda: not any(os.path.exists("/proc/%d" % w) for w in workers), 2.0), \
        "the worker outlived its caller"
    r = _run(plugins, "DEL", ctr, host, a.sock)         # the runtime's DEL
    assert r.rc == 0, r
    time.sleep(3.5)                                     # past the held worker's wake-up
    assert not _lo_up(ctr)


def _wait_for(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.02)
    return fn()


# ------------------------------------ item 4: a stopped or wedged agent


def test_an_agent_that_never_answers(plugins, host, netns_factory, tmp_path, statedir):
    """A process that accepts and never answers: ADD finishes in-process
    within 10 s (before, it hung forever)."""
    sock = str(tmp_path / "wedged.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(sock)
    srv.listen(8)
    held = []

    def accept_and_hold():
        try:
            while True:
                held.append(srv.accept())
        except OSError:
            pass        # closed by the test
    t = threading.Thread(target=accept_and_hold, daemon=True)
    t.start()
    try:
        ctr = netns_factory(lo_up=False)
        t0 = time.monotonic()
        r = _run(plugins, "ADD", ctr, host, sock)
        took = time.monotonic() - t0
        assert r.rc == 0 and _lo_up(ctr), r
        assert took < 10, took
        assert _notes() == ["agent: it did not answer within 4 s; working in-process"], _notes()
    finally:
        srv.close()
        for c, _ in held:
            c.close()


def test_a_stopped_agent(plugins, agent_factory, host, netns_factory):
    """SIGSTOPped: ADD and DEL finish in-process within 10 s, and the agent,
    continued, does not replay their requests."""
    a = agent_factory()
    ctr = netns_factory(lo_up=False)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        for verb in ("ADD", "DEL"):
            t0 = time.monotonic()
            r = _run(plugins, verb, ctr, host, a.sock)
            assert r.rc == 0, r
            assert time.monotonic() - t0 < 10
            assert _lo_up(ctr) == (verb == "ADD")
            assert _notes(verb) == ["agent: it did not answer within 4 s; working in-process"]
    finally:
        os.kill(a.pid, signal.SIGCONT)
    time.sleep(1.0)         # it accepts the two dead connections now
    assert not _lo_up(ctr)
    assert _wait_for(lambda: not a.workers(), 3.0)
    r = _run(plugins, "ADD", ctr, host, a.sock)       # and serves again
    assert r.rc == 0 and _notes() == [], (r, _notes())


def test_a_wedged_worker_is_stopped(plugins, agent_factory, host, netns_factory):
    """A worker that stops beating (SIGSTOP) mid-ADD: the shim kills it and
    does the ADD itself, once."""
    a = agent_factory()
    ctr = netns_factory(lo_up=False)
    result = {}

    def add():
        t0 = time.monotonic()
        result["r"] = _run(plugins, "ADD", ctr, host, a.sock, PYCNI_FAILPOINTS="agent-worker=sleep:3")
        result["took"] = time.monotonic() - t0
    t = threading.Thread(target=add)
    t.start()
    workers = _wait_for(a.workers)
    time.sleep(1.0)             # the agent has sent W; the worker sleeps in the failpoint
    for w in workers:
        os.kill(w, signal.SIGSTOP)
    t.join(20)
    r = result["r"]
    assert r.rc == 0 and _lo_up(ctr), r
    assert result["took"] < 10, result
    notes = _notes()
    assert notes[0].startswith("agent: its worker %d went silent for 4 s; stopped it" % workers[0]), notes
    assert notes[1] == "agent: undid what the worker did of this ADD", notes
    assert not any(os.path.exists("/proc/%d/status" % w) for w in workers)


def test_a_request_waits_for_a_stuck_worker_of_its_attachment(plugins, host, netns_factory, tmp_path,
                                                               statedir):
    """A worker stuck with the attachment (here: its lock slot held, the
    agent gone): the exec waits SLOT_WAIT seconds, then fails with code 11
    (try again) rather than racing it; once the slot is free it works."""
    import fcntl

    from cnilib.agent import wire
    sock = str(tmp_path / "gone" / "agent.sock")
    os.makedirs(wire.slot_dir(sock))
    fd, _name = wire.open_slot(sock, "c1", "lo", {})
    fcntl.flock(fd, fcntl.LOCK_EX)
    ctr = netns_factory(lo_up=False)
    try:
        t0 = time.monotonic()
        r = _run(plugins, "ADD", ctr, host, sock)
        assert 3 <= time.monotonic() - t0 < 10
        err = assert_cni_error(r, 11)
        assert "an agent worker still holds this attachment" in err["msg"], err
        assert not _lo_up(ctr)
    finally:
        os.close(fd)
    r = _run(plugins, "ADD", ctr, host, sock)
    assert r.rc == 0 and _lo_up(ctr), r


# ----------------------------- item 16: a cap on workers, a deadline on reads


def test_workers_are_capped(plugins, agent_factory, host, netns_factory):
    """Two idle connections fill --max-workers 2: a third waits in the queue,
    its shim works in-process, and no third worker is forked."""
    a = agent_factory(args=["--max-workers", "2", "--read-timeout", "30"])
    idle = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX)
            s.connect(a.sock)
            idle.append(s)
        assert len(_wait_for(lambda: len(a.workers()) == 2 and a.workers())) == 2
        ctr = netns_factory(lo_up=False)
        most = []
        done = threading.Event()

        def sample():
            while not done.is_set():
                most.append(len(a.workers()))
                time.sleep(0.05)
        t = threading.Thread(target=sample)
        t.start()
        try:
            r = _run(plugins, "ADD", ctr, host, a.sock)
        finally:
            done.set()
            t.join()
        assert r.rc == 0 and _lo_up(ctr), r
        assert max(most) == 2, most
        assert _notes() == ["agent: it did not answer within 4 s; working in-process"]
        assert "2 workers busy" in a.log()
    finally:
        for s in idle:
            s.close()
    assert _wait_for(lambda: not a.workers(), 3.0)
    r = _run(plugins, "DEL", ctr, host, a.sock)
    assert r.rc == 0 and _notes("DEL") == [] and not _lo_up(ctr), r


@pytest.mark.parametrize("sent", [b"", b"PYCNI3", b"PYCNI3\0\0\0\x10\0\0\0\0loop"])
def test_every_read_has_a_deadline(agent_factory, sent):
    """A client that sends nothing, or stops mid-request, loses its worker
    after --read-timeout (before, the worker waited forever)."""
    a = agent_factory(args=["--read-timeout", "1"])
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(a.sock)
        s.sendall(sent)
        s.settimeout(6)
        t0 = time.monotonic()
        got = b""
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
        assert time.monotonic() - t0 < 3
        assert got.startswith(b"PYCNI3W") and got[11:].strip(b"H") == b"", got   # W, beats, the end
    finally:
        s.close()
    assert "dropped a request of pid %d: timed out" % os.getpid() in a.log(), a.log()
