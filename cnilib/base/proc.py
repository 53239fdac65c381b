"""Run a helper program (a delegate plugin, nft, iptables-restore) cheaply.

``subprocess`` costs several milliseconds to import; posix_spawn with pipes
and poll does the same job here.  No shell is ever involved: argv is a list
and the executable is resolved against a fixed search path.
"""

import os
import select
import time

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Completed:
    __slots__ = ("argv", "rc", "out", "err")

    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err

    def err_text(self, limit=2000):
        return self.err.decode("utf-8", "replace").strip()[:limit]


def which(name, path=None):
    """Full path of ``name`` on ``path`` (default $PATH + the system dirs)."""
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    dirs = (path if path is not None else (os.environ.get("PATH", "") + ":" + SYSTEM_PATH)).split(":")
    for d in dirs:
        if not d:
            continue
        p = d + "/" + name
        if os.access(p, os.X_OK) and not os.path.isdir(p):
            return p
    return None


def run(argv, stdin=b"", env=None, timeout=60.0):
    """Run argv[0] (resolved on PATH) and return Completed(rc, out, err).

    Raises FileNotFoundError when the program does not exist and
    TimeoutError (after killing it) when it runs past ``timeout``.
    """
    return start(argv, stdin, env, timeout).wait()


def start(argv, stdin=b"", env=None, timeout=60.0):
    """Start argv[0] and return a Pending at once; ``.wait()`` collects it
    exactly as ``run`` would.

    Lets a plugin overlap a helper's work with its own: an nftables commit
    that deletes objects and a veth deletion each wait ~15 ms for the
    kernel (an RCU grace period), and they can wait together.
    """
    exe = which(argv[0])
    if exe is None:
        raise FileNotFoundError(2, "executable not found: %s" % argv[0])
    if env is None:
        env = dict(os.environ)
        env.setdefault("PATH", SYSTEM_PATH)
        env["LC_ALL"] = "C"
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(exe, argv, env, file_actions=[
            (os.POSIX_SPAWN_DUP2, in_r, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ])
    except BaseException:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    os.close(in_r)
    os.close(out_w)
    os.close(err_w)
    return Pending(argv, pid, in_w, out_r, err_r, bytes(stdin), time.monotonic() + timeout, timeout)


class Pending:
    """A started helper; ``wait()`` feeds the rest of its stdin, drains its
    output and reaps it."""

    def __init__(self, argv, pid, in_w, out_r, err_r, stdin, deadline, timeout):
        self.argv, self.pid = argv, pid
        self.in_w, self.out_r, self.err_r = in_w, out_r, err_r
        self.data = memoryview(stdin)
        self.deadline, self.timeout = deadline, timeout
        if self.data:
            # small inputs (an nft script) fit in the pipe: hand them over now
            os.set_blocking(in_w, False)
            try:
                n = os.write(in_w, self.data[:65536])
            except (BlockingIOError, BrokenPipeError):
                n = 0
            self.data = self.data[n:]
        if not self.data:
            os.close(in_w)
            self.in_w = -1

    def wait(self):
        argv, pid, in_w, data = self.argv, self.pid, self.in_w, self.data
        out, err = [], []
        poller = select.poll()
        fds = {self.out_r: out, self.err_r: err}
        for fd in fds:
            poller.register(fd, select.POLLIN)
        if in_w >= 0:
            poller.register(in_w, select.POLLOUT)
        try:
            while fds or in_w >= 0:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    raise TimeoutError("%s ran longer than %.0f s and was killed"
                                       % (argv[0], self.timeout))
                for fd, _ev in poller.poll(left * 1000):
                    if fd == in_w:
                        try:
                            n = os.write(in_w, data[:65536])
                        except BrokenPipeError:
                            n = len(data)
                        data = data[n:]
                        if not data:
                            poller.unregister(in_w)
                            os.close(in_w)
                            in_w = -1
                        continue
                    chunk = os.read(fd, 65536)
                    if chunk:
                        fds[fd].append(chunk)
                    else:
                        poller.unregister(fd)
                        os.close(fd)
                        del fds[fd]
        finally:
            for fd in list(fds):
                os.close(fd)
            if in_w >= 0:
                os.close(in_w)
            self.in_w = -1
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        return Completed(argv, rc, b"".join(out), b"".join(err))
