"""The warm agent's wire format and the plugins' side of it (the shim).

An exec'd plugin first tries the agent's unix socket; when nobody listens
(the common case without an agent) that costs one failed connect(), ~20 us,
and the plugin does the work itself.  When the agent answers, the plugin is
a thin shim: it forwards argv[0], its environment and stdin, and prints what
the agent's worker sends back.

Frames (all big-endian):
  request  b"PYCNI3" | u32 header length | u32 stdin length | header | stdin
           header = plugin name, then each "NAME=value" of the env, NUL-
           separated, UTF-8 with surrogateescape (what the environment held;
           no JSON: its import is a millisecond of the shim's start)
  answer   b"PYCNI3", then frames of one type byte each:
           R u32 n | reason   refused, nothing was done: work in-process
           W u32 pid          a worker was forked for it (the agent sends
                              this, the worker's pidfd riding along as
                              SCM_RIGHTS, so the shim can stop it)
           H                  the worker's heartbeat, every BEAT_EVERY s
           D i32 rc | u32 n | stdout   done
           R may follow W (nothing was done); W, H and D come once each.
Every wait is bounded: connect (a full queue answers EAGAIN at once), the
first frame within ANSWER s, then a frame at least every SILENCE s.  A shim
that gives up shuts its side down, which makes the kernel SIGKILL the
worker's process group (and a worker that had not started yet checks for
that before it does anything), kills a worker whose W it has through the
pidfd, waits for it to be gone, and then works in-process; so does one
whose worker died after W, undoing a partial ADD first.  A worker accepted
late (an agent that was stopped) finds its shim gone and does nothing.

Requests for one attachment (container ID, ifname) are serialized by a lock
slot next to the socket, taken by workers and by shims that work
in-process after the agent answered: the runtime's DEL after a killed ADD
waits until the ADD's worker is gone.  PYCNI_AGENT_SLOTS names the slots
the process's ancestors hold (a delegate exec'd by a worker), which it
must not wait for.

An older agent refuses the new magic without answering and a new agent's
W/R frame is garbage to an older shim, so during an upgrade the shim works
in-process.
"""

import _socket
import _struct
import os
import time

MAGIC = b"PYCNI3"
# env vars a worker needs from the caller (the rest of the caller's env is
# not the agent's business)
ENV_PREFIXES = ("CNI_", "PYCNI_")
ENV_NAMES = ("PATH",)
_REQ = _struct.Struct("!II")
_U32 = _struct.Struct("!I")
_DONE = _struct.Struct("!iI")
REFUSED, HELLO, BEAT, DONE = b"R", b"W", b"H", b"D"
# bounds, in seconds: an ADD against a stopped or wedged agent finishes
# in-process within ANSWER (+ KILL_WAIT + SLOT_WAIT in the worst case)
CONNECT = 2.0
ANSWER = 4.0
SILENCE = 4.0
BEAT_EVERY = 1.0
KILL_WAIT = 2.0
SLOT_WAIT = 3.0
SLOTS = 1024
SLOT_ENV = "PYCNI_AGENT_SLOTS"
MAX_INPUT = 1 << 20      # the same cap as cnilib.cni.skel.MAX_STDIN


def socket_path(env=None):
    env = os.environ if env is None else env
    got = env.get("PYCNI_AGENT_SOCKET")
    if got:
        return got
    from cnilib.base import paths
    return paths.AGENT_SOCKET


def read_input(fd):
    """Stdin, up to one byte over the cap (the skel refuses anything over
    it), or None when it cannot be read (the skel then reports that)."""
    chunks, total = [], 0
    while total <= MAX_INPUT:
        try:
            b = os.read(fd, 65536)
        except OSError:
            return None
        if not b:
            break
        total += len(b)
        chunks.append(b)
    return b"".join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _recv_exact(s, n, deadline=None):
    """n bytes, or None at EOF; socket.timeout past ``deadline``."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _socket.timeout("timed out")
            s.settimeout(left)
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def encode_request(plugin, env, stdin):
    parts = [plugin]
    parts += ["%s=%s" % (k, v) for k, v in env.items()
              if (k.startswith(ENV_PREFIXES) or k in ENV_NAMES) and "\0" not in k + v]
    hdr = "\0".join(parts).encode("utf-8", "surrogateescape")
    return MAGIC + _REQ.pack(len(hdr), len(stdin)) + hdr + stdin


def read_request(s, limit=1 << 21, deadline=None):
    """(plugin, env, stdin); ValueError for a foreign or torn request,
    socket.timeout past ``deadline`` (a slow or silent sender)."""
    magic = _recv_exact(s, len(MAGIC), deadline)
    if magic != MAGIC:
        raise ValueError("not a pycni agent request")
    head = _recv_exact(s, _REQ.size, deadline)
    if head is None:
        raise ValueError("torn request")
    hlen, slen = _REQ.unpack(head)
    if hlen > limit or slen > limit:
        raise ValueError("request too large")
    raw = _recv_exact(s, hlen, deadline)
    stdin = _recv_exact(s, slen, deadline) if slen else b""
    if raw is None or stdin is None:
        raise ValueError("torn request")
    parts = raw.decode("utf-8", "surrogateescape").split("\0")
    env = {}
    for item in parts[1:]:
        k, sep, v = item.partition("=")
        if sep:
            env[k] = v
    return parts[0], env, stdin


def encode_refusal(reason, first=True):
    text = reason.encode("utf-8", "replace")[:2000]
    return (MAGIC if first else b"") + REFUSED + _U32.pack(len(text)) + text


def encode_hello(pid):
    return MAGIC + HELLO + _U32.pack(pid)


def encode_done(rc, out):
    return DONE + _DONE.pack(rc, len(out)) + out


# ------------------------------------------------------------ the shim side


class Outcome:
    """What became of a hand-over.  ``answered``: rc and out are the
    plugin's.  Otherwise the plugin works in-process; ``partial`` when a
    worker may have done part of the work (undo it first), ``note`` says why
    (None when there is simply no agent)."""

    __slots__ = ("answered", "rc", "out", "partial", "note")

    def __init__(self, answered=False, rc=0, out=b"", partial=False, note=None):
        self.answered, self.rc, self.out, self.partial, self.note = answered, rc, out, partial, note

    def __repr__(self):
        return "Outcome(answered=%r, rc=%r, partial=%r, note=%r)" % (
            self.answered, self.rc, self.partial, self.note)


class _Reader:
    """Frames off the socket, each read by a deadline, collecting any file
    descriptors that ride along (the worker's pidfd)."""

    def __init__(self, s):
        self.s, self.buf, self.fds = s, b"", []

    def _recv(self, flags=0):
        space = _socket.CMSG_SPACE(4 * 4)
        data, anc, _flags, _addr = self.s.recvmsg(65536, space, flags | _socket.MSG_CMSG_CLOEXEC)
        for level, typ, payload in anc:
            if level == _socket.SOL_SOCKET and typ == _socket.SCM_RIGHTS:
                n = len(payload) // 4
                self.fds += list(_struct.unpack("%di" % n, payload[:n * 4]))
        return data

    def take(self, n, deadline):
        """n bytes, or None at EOF; socket.timeout past ``deadline``."""
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _socket.timeout("timed out")
            self.s.settimeout(left)
            data = self._recv()
            if not data:
                return None
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def drain(self):
        """Whatever is already there, without waiting (the fds count)."""
        try:
            self.s.setblocking(False)
            while self._recv(_socket.MSG_DONTWAIT):
                pass
        except OSError:
            pass

    def close(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def _stop_worker(rd):
    """Kill the worker whose pidfd arrived, and wait (bounded) until it is gone."""
    import _signal
    import select
    for fd in rd.fds:
        try:
            _signal.pidfd_send_signal(fd, 9)
        except (OSError, AttributeError):
            continue
        p = select.poll()
        p.register(fd, select.POLLIN)
        p.poll(int(KILL_WAIT * 1000))


def _give_up(s, rd, note, partial):
    """Leave: tell the worker (it stops on seeing the hang-up), stop any
    worker that has started, then let the caller work in-process."""
    try:
        s.shutdown(_socket.SHUT_WR)
    except OSError:
        pass
    rd.drain()
    if rd.fds:
        _stop_worker(rd)
        partial = True
    return Outcome(partial=partial, note=note)


def call(plugin, stdin, env=None):
    """Hand one CNI exec to the agent; returns an Outcome."""
    env = os.environ if env is None else env
    path = socket_path(env)
    if path == "off":
        return Outcome()
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    rd = _Reader(s)
    try:
        s.settimeout(CONNECT)
        try:
            s.connect(path)
        except (FileNotFoundError, NotADirectoryError):
            return Outcome()
        except ConnectionRefusedError:
            return Outcome(note="its socket %s has no listener" % path)
        except (BlockingIOError, _socket.timeout):
            return Outcome(note="its queue is full")
        except OSError as exc:
            return Outcome(note="cannot connect: %s" % exc.strerror)
        deadline = time.monotonic() + ANSWER
        try:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            s.sendall(encode_request(plugin, env, stdin))
        except _socket.timeout:
            return _give_up(s, rd, "it did not take the request within %g s" % ANSWER, False)
        except OSError:
            pass        # the worker may have refused before reading: its reason is there
        worker = None
        try:
            head = rd.take(len(MAGIC) + 1, deadline)
            if head is None or head[:len(MAGIC)] != MAGIC:
                return _give_up(s, rd, "it closed the connection without an answer", False)
            kind = head[len(MAGIC):]
            if kind == REFUSED:
                return Outcome(note="it refused: %s" % _reason(rd, deadline))
            pid = rd.take(4, deadline) if kind == HELLO else None
            if pid is None:
                return _give_up(s, rd, "it answered %r" % kind, False)
            worker = _U32.unpack(pid)[0]
            while True:
                deadline = time.monotonic() + SILENCE
                kind = rd.take(1, deadline)
                if kind == BEAT:
                    continue
                if kind == DONE:
                    head = rd.take(_DONE.size, deadline)
                    if head is not None:
                        rc, n = _DONE.unpack(head)
                        out = rd.take(n, deadline) if n else b""
                        if out is not None:
                            return Outcome(answered=True, rc=rc, out=out)
                    kind = None
                if kind == REFUSED:
                    return Outcome(note="its worker refused: %s" % _reason(rd, deadline))
                if kind is None:
                    return Outcome(partial=True, note="its worker %d died mid-request" % worker)
                return _give_up(s, rd, "its worker %d sent %r" % (worker, kind), True)
        except _socket.timeout:
            if worker is None:
                return _give_up(s, rd, "it did not answer within %g s" % ANSWER, False)
            return _give_up(s, rd, "its worker %d went silent for %g s; stopped it"
                            % (worker, SILENCE), True)
        except OSError as exc:
            return _give_up(s, rd, "the connection failed: %s" % exc.strerror, worker is not None)
    finally:
        rd.close()
        s.close()


def _reason(rd, deadline):
    try:
        head = rd.take(4, deadline)
        text = rd.take(_U32.unpack(head)[0], deadline) if head else None
    except OSError:
        text = None
    if not text:
        return "no reason given"
    return "".join(c if c.isprintable() else "?" for c in text.decode("utf-8", "replace"))


# ------------------------------------------------------------ lock slots


def slot_of(cid, ifname):
    """The lock slot of an attachment: FNV-1a of "cid\\0ifname" (no hashlib:
    the shim's start), modulo SLOTS."""
    h = 0x811C9DC5
    for b in (cid + "\0" + ifname).encode("utf-8", "surrogateescape"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % SLOTS


def slot_dir(sock):
    return os.path.join(os.path.dirname(sock), "slots")


def held_slots(env):
    return set(v for v in env.get(SLOT_ENV, "").split(",") if v)


def open_slot(sock, cid, ifname, env):
    """(fd, name) of the lock slot for this attachment, or (None, None) when
    there is none to take: no container ID, no agent ever ran here, or an
    ancestor holds it."""
    if not cid:
        return None, None
    name = "%03x" % slot_of(cid, ifname)
    if name in held_slots(env):
        return None, None
    try:
        # the directory is the agent's (0700, beside its socket); only the
        # last component could be a planted link
        fd = os.open(os.path.join(slot_dir(sock), name),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return None, None
    return fd, name


def lock_slot(fd, wait):
    """flock ``fd`` within ``wait`` seconds; False when that ran out."""
    import fcntl
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
