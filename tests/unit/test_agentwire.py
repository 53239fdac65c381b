"""The agent's wire format and the shim's side of it: what the shim sends is
what the worker reads, every wait is bounded, and each way a hand-over can
end (answered, refused, died, no answer, a silent worker) is told apart.
Also the pure parts of the caller checks (cnilib.agent.peer).  No root:
fake agents on a temp socket."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from cnilib.agent import peer, wire


def _roundtrip(plugin, env, stdin):
    a, b = socket.socketpair()
    try:
        a.sendall(wire.encode_request(plugin, env, stdin))
        return wire.read_request(b)
    finally:
        a.close()
        b.close()


def test_request_roundtrip_keeps_cni_env_and_stdin():
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a=b",
           "CNI_NETNS": "/var/run/netns/ü", "PYCNI_LOG": "/tmp/x\udcff.log",
           "PATH": "/usr/sbin:/usr/bin", "CNI_EMPTY": "",
           "HOME": "/root", "SSH_AUTH_SOCK": "/tmp/agent"}
    plugin, got, stdin = _roundtrip("bridge", env, b'{"cniVersion":"1.0.0"}')
    assert plugin == "bridge"
    assert stdin == b'{"cniVersion":"1.0.0"}'
    assert got == {k: v for k, v in env.items() if k not in ("HOME", "SSH_AUTH_SOCK")}


def test_request_without_stdin_or_env():
    assert _roundtrip("loopback", {}, b"") == ("loopback", {}, b"")


@pytest.mark.parametrize("magic", [b"PYCNI1", b"PYCNI2"])
def test_an_older_frame_is_refused(magic):
    a, b = socket.socketpair()
    try:
        a.sendall(magic + b"\0" * 8)
        with pytest.raises(ValueError):
            wire.read_request(b)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("sent", [b"", b"PYC", wire.MAGIC + b"\0\0\0\x10\0\0\0\0loop"])
def test_reading_a_request_has_a_deadline(sent):
    """A sender that stops mid-request (or never starts) costs the worker
    the deadline, not forever."""
    a, b = socket.socketpair()
    try:
        a.sendall(sent)
        t0 = time.monotonic()
        with pytest.raises(socket.timeout):
            wire.read_request(b, deadline=time.monotonic() + 0.2)
        assert time.monotonic() - t0 < 1
    finally:
        a.close()
        b.close()


def test_a_torn_request_is_refused():
    a, b = socket.socketpair()
    try:
        a.sendall(wire.MAGIC + b"\0\0\0\x10\0\0\0\0loop")
        a.close()
        with pytest.raises(ValueError):
            wire.read_request(b, deadline=time.monotonic() + 1)
    finally:
        b.close()


def test_agent_preload_finds_every_module_it_names():
    from cnilib.agent import server
    msgs = []
    server.preload(msgs.append)
    assert msgs == []
    assert "pyroute2.netlink.rtnl.ifinfmsg" in sys.modules     # the VLAN requests' encoder


# ------------------------------------------------- the shim against fakes


class FakeAgent:
    """A unix socket whose accepted connections ``script(conn)`` answers."""

    def __init__(self, tmp_path, script):
        self.path = str(tmp_path / "agent.sock")
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(self.path)
        self.srv.listen(8)
        self.script = script
        self.seen = []
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _serve(self):
        try:
            conn, _ = self.srv.accept()
        except OSError:
            return
        try:
            self.seen.append(wire.read_request(conn, deadline=time.monotonic() + 5))
            self.script(conn)
        except OSError:
            pass
        finally:
            time.sleep(0.05)
            conn.close()

    def close(self):
        self.srv.close()
        self.t.join(10)


@pytest.fixture
def fake(tmp_path):
    made = []

    def make(script):
        a = FakeAgent(tmp_path, script)
        made.append(a)
        return a
    yield make
    for a in made:
        a.close()


def _call(path, **env):
    e = {"PYCNI_AGENT_SOCKET": path, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
    e.update(env)
    t0 = time.monotonic()
    got = wire.call("bridge", b'{"cniVersion":"1.0.0"}', e)
    return got, time.monotonic() - t0


def _hello(conn, pidfd):
    conn.sendmsg([wire.encode_hello(4242)],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, pidfd.to_bytes(4, sys.byteorder))])


def test_no_agent_at_all(tmp_path):
    got, took = _call(str(tmp_path / "nothing.sock"))
    assert not got.answered and got.note is None and not got.partial
    got, _ = _call("off")
    assert not got.answered and got.note is None


def test_a_stale_socket_says_so(tmp_path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "stale.sock"))
    s.close()
    got, _ = _call(str(tmp_path / "stale.sock"))
    assert not got.answered and "has no listener" in got.note


def test_answered_with_heartbeats(fake):
    me = os.pidfd_open(os.getpid())

    def script(conn):
        _hello(conn, me)
        for _ in range(3):
            conn.sendall(wire.BEAT)
        conn.sendall(wire.encode_done(1, b'{"code": 7}\n'))
    a = fake(script)
    got, _ = _call(a.path)
    os.close(me)
    assert got.answered and got.rc == 1 and got.out == b'{"code": 7}\n'
    plugin, env, stdin = a.seen[0]
    assert plugin == "bridge" and env["CNI_CONTAINERID"] == "c1" and stdin == b'{"cniVersion":"1.0.0"}'


def test_a_refusal_is_not_a_partial_add(fake):
    a = fake(lambda conn: conn.sendall(wire.encode_refusal("it lacks CAP_NET_ADMIN\x1b[2J\n")))
    got, _ = _call(a.path)
    assert not got.answered and not got.partial
    assert got.note == "it refused: it lacks CAP_NET_ADMIN?[2J?"


def test_a_worker_that_dies_after_starting_left_a_partial_add(fake):
    me = os.pidfd_open(os.getpid())
    a = fake(lambda conn: _hello(conn, me))
    got, _ = _call(a.path)
    os.close(me)
    assert not got.answered and got.partial and got.note == "its worker 4242 died mid-request"


def test_closed_without_a_word_did_nothing(fake):
    a = fake(lambda conn: None)
    got, _ = _call(a.path)
    assert not got.answered and not got.partial and "without an answer" in got.note


def test_no_answer_is_waited_for_a_bounded_time(fake, monkeypatch):
    monkeypatch.setattr(wire, "ANSWER", 0.3)
    hung_up = []

    def script(conn):
        conn.settimeout(5)
        hung_up.append(conn.recv(1))       # the shim shuts its side down when it gives up
    a = fake(script)
    got, took = _call(a.path)
    assert not got.answered and not got.partial and got.note == "it did not answer within 0.3 s"
    assert took < 1.5
    a.t.join(5)
    assert hung_up == [b""]


def test_a_silent_worker_is_killed_and_waited_for(fake, monkeypatch):
    """After W the worker must beat; one that stops (SIGSTOP, wedged) is
    killed through the pidfd it sent, and the shim waits until it is gone."""
    monkeypatch.setattr(wire, "SILENCE", 0.3)
    child = subprocess.Popen(["sleep", "30"])
    fd = os.pidfd_open(child.pid)

    def script(conn):
        _hello(conn, fd)
        conn.sendall(wire.BEAT)
        conn.settimeout(5)
        conn.recv(1)
    a = fake(script)
    try:
        got, took = _call(a.path)
        assert not got.answered and got.partial
        assert got.note == "its worker 4242 went silent for 0.3 s; stopped it"
        assert child.wait(timeout=2) == -9
        assert took < 2
    finally:
        child.kill()
        child.wait()
        os.close(fd)


def test_a_worker_may_refuse_after_starting(fake):
    me = os.pidfd_open(os.getpid())

    def script(conn):
        _hello(conn, me)
        conn.sendall(wire.BEAT + wire.encode_refusal("another request is running", first=False))
    a = fake(script)
    got, _ = _call(a.path)
    os.close(me)
    assert not got.answered and not got.partial
    assert got.note == "its worker refused: another request is running"


def test_a_full_queue_falls_back_at_once(tmp_path):
    """A listen queue that is full answers connect() with EAGAIN: no wait."""
    path = str(tmp_path / "full.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(0)
    queued = []
    try:
        for _ in range(4):
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            try:
                c.connect(path)
            except BlockingIOError:
                c.close()
                break
            queued.append(c)
        got, took = _call(path)
        assert not got.answered and got.note == "its queue is full", got
        assert took < 1
    finally:
        for c in queued:
            c.close()
        srv.close()


# ------------------------------------------------------------ lock slots


def test_slots_are_stable_and_spread():
    assert wire.slot_of("c1", "eth0") == wire.slot_of("c1", "eth0")
    got = {wire.slot_of("pod%d" % i, "eth0") for i in range(400)}
    assert len(got) > 300 and all(0 <= s < wire.SLOTS for s in got)


def test_a_slot_serializes_one_attachment(tmp_path):
    sock = str(tmp_path / "agent.sock")
    assert wire.open_slot(sock, "c1", "eth0", {}) == (None, None)     # no agent ever ran here
    os.mkdir(wire.slot_dir(sock), 0o700)
    a, name = wire.open_slot(sock, "c1", "eth0", {})
    b, name2 = wire.open_slot(sock, "c1", "eth0", {})
    try:
        assert name == name2 == "%03x" % wire.slot_of("c1", "eth0")
        assert wire.lock_slot(a, 0.1)
        t0 = time.monotonic()
        assert not wire.lock_slot(b, 0.1)
        assert 0.1 <= time.monotonic() - t0 < 1
        assert wire.open_slot(sock, "", "eth0", {}) == (None, None)    # GC, STATUS
        # a delegate of the holder does not wait for its own ancestor
        assert wire.open_slot(sock, "c1", "eth0", {wire.SLOT_ENV: "00a," + name}) == (None, None)
        os.close(a)
        a = None
        assert wire.lock_slot(b, 0.1)
    finally:
        for fd in (a, b):
            if fd is not None:
                os.close(fd)


def test_a_planted_slot_symlink_is_not_followed(tmp_path):
    sock = str(tmp_path / "agent.sock")
    os.mkdir(wire.slot_dir(sock), 0o700)
    target = tmp_path / "elsewhere"
    os.symlink(str(target), os.path.join(wire.slot_dir(sock), "%03x" % wire.slot_of("c1", "eth0")))
    assert wire.open_slot(sock, "c1", "eth0", {}) == (None, None)
    assert not target.exists()


# ------------------------------------------------------- the caller checks

STATUS = """Name:\tcontainerd
Umask:\t0022
State:\tS (sleeping)
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
Groups:\t0 10
NoNewPrivs:\t0
Seccomp:\t0
Seccomp_filters:\t0
CapInh:\t0000000000000000
CapPrm:\t000001ffffffffff
CapEff:\t000001ffffffffff
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000000000
"""


def _creds(**over):
    st = peer.parse_status(STATUS)
    st.update(over.pop("status", {}))
    kw = dict(pid=7, status=st, userns=(4, 1), pidns=(4, 2), label="")
    kw.update(over)
    return peer.Creds(**kw)


def test_parse_status():
    st = peer.parse_status(STATUS)
    assert st["uid"] == (0, 0, 0, 0) and st["groups"] == (0, 10)
    assert st["eff"] == 0x1FFFFFFFFFF and st["inh"] == 0 and st["nonewprivs"] == 0 and st["seccomp"] == 0
    with pytest.raises(ValueError):
        peer.parse_status("Name:\tx\n")


def test_start_time_survives_a_hostile_command_name():
    stat = b"42 (evil) 1 2 3 (x) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0"
    assert peer.start_time(stat) == 987654


@pytest.mark.parametrize("over,why", [
    ({}, None),
    ({"status": {"uid": (0, 0, 0, 1000)}}, "uid 0/0/0/1000, not root"),
    ({"userns": (4, 9)}, "another user namespace"),
    ({"pidns": (4, 9)}, "another pid namespace"),
    ({"status": {"eff": 0x1FFFFFFFFFF & ~(1 << 12)}}, "lacks CAP_NET_ADMIN ("),
    ({"status": {"eff": 0}}, "lacks CAP_NET_ADMIN, CAP_SYS_ADMIN"),
    ({"status": {"eff": (1 << 12) | (1 << 21)}}, None),            # the two are enough
    ({"status": {"nonewprivs": 1}}, "no_new_privs"),
    ({"status": {"seccomp": 2}}, "seccomp filter (mode 2)"),
    ({"label": "unconfined_u:system_r:container_runtime_t"}, "security label"),
])
def test_verdict(over, why):
    agent = _creds()
    got = peer.verdict(_creds(**over), agent)
    if why is None:
        assert got is None
    else:
        assert why in got, got


def test_the_worker_never_holds_more_than_the_caller_or_the_agent():
    agent = _creds(status={"prm": 0xFF, "eff": 0xFF, "bnd": 0xFFF, "inh": 0})
    caller = _creds(status={"prm": 0xF0F, "eff": 0x00F, "bnd": 0xFF0F, "inh": 0x3, "amb": 0x1})
    t = peer.targets(caller, agent)
    assert t["prm"] == 0x0F and t["eff"] == 0x0F
    assert t["bnd"] == 0xF0F & 0xFF0F & 0xFFF           # cut to the caller's permitted set
    assert t["inh"] == 0x3 and t["amb"] == 0x1
    for k in t:
        assert t[k] & ~getattr(caller, k) == 0


def test_cap_names():
    assert peer.cap_names((1 << 12) | (1 << 21)) == "CAP_NET_ADMIN, CAP_SYS_ADMIN"
    assert peer.cap_names(1 << 45) == "CAP_45"
