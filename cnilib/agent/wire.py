"""The warm agent's wire format and the plugins' side of it (the shim).

An exec'd plugin first tries the agent's unix socket; when nobody listens
(the common case without an agent) that costs one failed connect(), ~20 us,
and the plugin does the work itself.  When the agent answers, the plugin is
a thin shim: it forwards argv[0], its environment and stdin, and prints what
the agent's worker sends back.

Frames (all big-endian):
  request   b"PYCNI2" | u32 header length | u32 stdin length | header | stdin
            header = plugin name, then each "NAME=value" of the env, NUL-
            separated, UTF-8 with surrogateescape (what the environment held;
            no JSON: its import is a millisecond of the shim's start)
  response  b"PYCNI2" | i32 exit code | u32 stdout length | stdout
A worker of an older agent refuses the new magic without answering, so the
shim falls back to in-process work during an upgrade.
A connection closed before a whole response means the worker died mid-way.
"""

import _socket
import _struct
import os

MAGIC = b"PYCNI2"
# env vars a worker needs from the caller (the rest of the caller's env is
# not the agent's business)
ENV_PREFIXES = ("CNI_", "PYCNI_")
ENV_NAMES = ("PATH",)
_REQ = _struct.Struct("!II")
_RESP = _struct.Struct("!iI")


def socket_path(env=None):
    env = os.environ if env is None else env
    got = env.get("PYCNI_AGENT_SOCKET")
    if got:
        return got
    from cnilib.base import paths
    return paths.AGENT_SOCKET


MAX_INPUT = 1 << 20      # the same cap as cnilib.cni.skel.MAX_STDIN


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


def _recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
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


def read_request(s, limit=1 << 21):
    magic = _recv_exact(s, len(MAGIC))
    if magic != MAGIC:
        raise ValueError("not a pycni agent request")
    hlen, slen = _REQ.unpack(_recv_exact(s, _REQ.size))
    if hlen > limit or slen > limit:
        raise ValueError("request too large")
    parts = _recv_exact(s, hlen).decode("utf-8", "surrogateescape").split("\0")
    env = {}
    for item in parts[1:]:
        k, sep, v = item.partition("=")
        if sep:
            env[k] = v
    stdin = _recv_exact(s, slen) if slen else b""
    return parts[0], env, stdin


def encode_response(rc, out):
    return MAGIC + _RESP.pack(rc, len(out)) + out


def call(plugin, stdin, env=None):
    """Hand one CNI exec to the agent.

    Returns (rc, stdout) when the agent answered, None when no agent is
    listening, and "died" when one accepted the request but the connection
    closed before a whole response arrived.
    """
    env = os.environ if env is None else env
    path = socket_path(env)
    if path == "off":
        return None
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            s.connect(path)
        except OSError:
            return None
        try:
            s.sendall(encode_request(plugin, env, stdin))
            s.shutdown(_socket.SHUT_WR)
            head = _recv_exact(s, len(MAGIC) + _RESP.size)
            if head is None or head[:len(MAGIC)] != MAGIC:
                return "died"
            rc, n = _RESP.unpack(head[len(MAGIC):])
            out = _recv_exact(s, n) if n else b""
            if out is None:
                return "died"
            return rc, out
        except OSError:
            return "died"
    finally:
        s.close()
