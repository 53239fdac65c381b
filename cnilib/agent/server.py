"""``pycni agent``: a warm process the exec'd plugins hand their work to.

The thick-plugin model Multus uses, made optional: when the agent runs,
every plugin exec becomes a ~9 ms shim (cnilib.agent.wire) and the work runs
in a worker forked from a process that already has the schemas and every
plugin loaded; when it does not run, the plugins do the work
themselves.  Nothing about the result differs.

* The agent pins each caller by a pidfd and checks it before anything of
  its request is read (cnilib.agent.peer: root, CAP_NET_ADMIN and
  CAP_SYS_ADMIN, no no_new_privs, no seccomp filter, the agent's user and
  pid namespaces and LSM label); any other caller gets a reason and its
  shim works in-process.  The socket is 0600 in a 0700 directory besides.
* One worker per served connection, forked, at most ``--max-workers`` at
  a time: further connections wait in the listen queue (a full queue
  answers connect() at once), and their shims stop waiting after a few
  seconds and work in-process.  setns is per-thread and a crash stays in
  its worker.  The agent sends W with the worker's pidfd, so a shim can
  stop a worker that went silent and wait until it is gone.
* A worker takes the caller's place: its mount namespace, root, working
  directory and network namespace (so CNI_NETNS, CNI_PATH and every state
  path resolve as they would for an exec), then its gids and capability
  sets (never more than the caller: the delegate plugins it execs get no
  more either); it takes the caller's CNI_* / PYCNI_* environment and
  stdin and runs the same skel.execute an exec would.
* Every read has a deadline (``--read-timeout``).  A worker leads its own
  process group, which the kernel SIGKILLs the moment the caller's end of
  the socket closes or shuts down (O_ASYNC with F_SETSIG), so a worker and
  what it started stop as promptly as the work of a killed exec would; it
  also stops when the caller's pidfd shows it gone, and beats every second
  (SIGALRM) so its shim can tell a working worker from a stopped one.
* Requests for one attachment wait for each other (wire's lock slots), so
  the runtime's DEL after an ADD it killed starts once that ADD's worker is
  gone.
"""

import os
import select
import signal
import socket
import sys
import time

from cnilib.agent import peer, wire
from cnilib.base import paths

# what the workers would otherwise import per request (the plugins import
# lazily, on the verb's path): loaded once here, before any worker enters a
# caller's mount namespace, where another copy of the code may be installed.
# tests/unit/test_layers.py holds it to what the plugins can reach.
PRELOAD = ("cnilib.kernel.netlink", "cnilib.kernel.link", "cnilib.kernel.route", "cnilib.kernel.brport",
           "cnilib.kernel.nftables", "cnilib.kernel.conntrack", "cnilib.cni.validate",
           "cnilib.cni.schemacheck", "cnilib.cni._schemas", "cnilib.cni.invoke", "cnilib.cni.types",
           "cnilib.kernel.netns", "cnilib.kernel.sysctl", "cnilib.base.proc", "cnilib.base.fsutil",
           "cnilib.cni.args", "cnilib.base.paths", "cnilib.base.jsonio", "cnilib.cni.version",
           "cnilib.bridge.netconf", "cnilib.bridge.links", "cnilib.bridge.iface",
           "cnilib.firewall.masquerade", "cnilib.firewall.macspoof", "cnilib.firewall.portmap",
           "cnilib.firewall.portmap_rules", "cnilib.firewall.forward", "cnilib.flannel", "cnilib.tuning",
           "cnilib.firewall.nft", "cnilib.firewall.iptables", "cnilib.firewall.shared",
           "cnilib.firewall.records", "cnilib.firewall.naming",
           "cnilib.ipam.config", "cnilib.ipam.allocator", "cnilib.ipam.store", "cnilib.base.addr",
           "ipaddress", "hashlib", "fcntl", "ctypes")
MAX_WORKERS = 16
READ_TIMEOUT = 5.0
WORKER_SLOT_WAIT = 10.0     # a worker waits this long for another request of its attachment
STOP_WAIT = 30.0            # on SIGTERM, for the workers still running


def preload(log=print):
    """Import everything a worker could need, and warm the schema validators."""
    import importlib

    from cnilib.cni.registry import PLUGINS
    for mod in PRELOAD + tuple(PLUGINS.values()):
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            log("agent: cannot preload %s: %s" % (mod, exc))
    from cnilib.kernel import netlink
    try:
        netlink.msgclass("ifinfmsg")    # bridge VLAN requests are packed with pyroute2's
    except ImportError as exc:
        log("agent: cannot preload pyroute2's ifinfmsg: %s" % exc)
    from cnilib.kernel import netns
    try:
        netns.setns(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))  # loads ctypes/libc
    except OSError:
        pass
    peer._libc()


CLONE_NEWNS = 0x00020000


def _enter_caller(caller, pidfd):
    """Take the caller's view of the node: its mount namespace, root and
    working directory (so CNI_NETNS, CNI_PATH, dataDir and every state path
    resolve as they would for an exec: a runtime in a private mount
    namespace, or under ``ip netns exec``, sees netns mounts the agent's
    namespace does not have; a chrooted one sees only its root), then its
    network namespace."""
    from cnilib.kernel import netns
    flags = os.O_RDONLY | os.O_CLOEXEC
    proc = "/proc/%d/" % caller.pid
    fds = []
    try:
        for what in ("ns/net", "ns/mnt"):
            fds.append(os.open(proc + what, flags))
        for what in ("root", "cwd"):
            fds.append(os.open(proc + what, flags | os.O_DIRECTORY))
        if not peer.alive(pidfd):
            raise peer.Refused("it exited while it was being served")
        net, mnt, root, cwd = fds
        if os.fstat(mnt).st_ino != os.stat("/proc/self/ns/mnt").st_ino:
            netns.setns(mnt, CLONE_NEWNS)
        os.fchdir(root)
        os.chroot(".")
        os.fchdir(cwd)
        netns.setns(net)
    finally:
        for fd in fds:
            os.close(fd)


class _Link:
    """The worker's side of the connection: heartbeats from SIGALRM from its
    first moment, and the one answer, sent after the beats have stopped (a
    beat in the middle of a frame would tear it).  The agent already sent
    MAGIC and W."""

    def __init__(self, conn):
        self.conn = conn
        self.pidfd = None       # the caller's, once pinned
        signal.signal(signal.SIGALRM, self._beat)
        signal.setitimer(signal.ITIMER_REAL, wire.BEAT_EVERY, wire.BEAT_EVERY)
        self.beating = True

    def _beat(self, signum, frame):
        if not self.beating:
            return
        if self.pidfd is not None and _gone(self.conn, self.pidfd):
            _die()
        try:
            self.conn.send(wire.BEAT, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        except OSError:
            _die()

    def send(self, data):
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.beating = False
        self.conn.settimeout(wire.SILENCE)
        self.conn.sendall(data)


def _gone(conn, pidfd, timeout=0.0):
    """True once the caller has exited or hung up (shut its side down)."""
    p = select.poll()
    p.register(conn.fileno(), select.POLLRDHUP)
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(int(timeout * 1000)))


def _die():
    """The caller is gone: stop this worker and whatever it started, now,
    as a SIGKILL of the caller would have stopped in-process work."""
    try:
        if os.getpgid(0) == os.getpid():    # never the agent's group
            os.killpg(0, signal.SIGKILL)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


F_SETSIG = 10


def _die_with(conn):
    """Let the kernel SIGKILL this worker's process group the moment the
    caller's end of ``conn`` closes or shuts down (O_ASYNC with F_SETSIG):
    no Python code has to run for it, so a worker stops as promptly as the
    in-process work of a killed exec would."""
    import fcntl
    fd = conn.fileno()
    if os.getpgid(0) != os.getpid():
        raise OSError("the worker leads no process group of its own")
    fcntl.fcntl(fd, fcntl.F_SETOWN, -os.getpid())
    fcntl.fcntl(fd, F_SETSIG, signal.SIGKILL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)


def _say(log, msg):
    try:
        log(msg)
    except Exception:
        pass


def _serve_one(conn, pidfd, caller, agent, opts, log):
    """One connection, in a forked worker: the agent has pinned and checked
    its caller (``pidfd``, ``caller``) and sent W."""
    link = _Link(conn)
    link.pidfd = pidfd
    deadline = time.monotonic() + opts.read_timeout
    try:
        plugin, env, stdin = wire.read_request(conn, deadline=deadline)
    except (ValueError, OSError) as exc:
        _say(log, "agent: dropped a request of pid %d: %s" % (caller.pid, _printable(str(exc))))
        return
    slot, slot_name = wire.open_slot(opts.socket, env.get("CNI_CONTAINERID", ""),
                                     env.get("CNI_IFNAME", ""), env)
    want = peer.plan(caller, agent)     # a worker's credentials are the agent's
    status = None
    try:
        if want is not None:
            status = os.open("/proc/thread-self/status", os.O_RDONLY | os.O_CLOEXEC)
        _enter_caller(caller, pidfd)
        if want is not None:
            peer.adopt(caller, agent, want, status)
        _die_with(conn)
    except (OSError, peer.Refused) as exc:
        _say(log, "agent: cannot serve pid %d: %s" % (caller.pid, _printable(str(exc))))
        link.send(wire.encode_refusal("the worker cannot take its place: %s" % exc, first=False))
        return
    finally:
        if status is not None:
            os.close(status)
    if _gone(conn, pidfd):      # the caller left before O_ASYNC was set: do nothing
        _die()
    if slot is not None:
        if not wire.lock_slot(slot, WORKER_SLOT_WAIT):
            link.send(wire.encode_refusal("another request for this attachment (slot %s) is still "
                                          "running" % slot_name, first=False))
            return
        env[wire.SLOT_ENV] = ",".join(sorted(wire.held_slots(env) | {slot_name}))
    from cnilib.base import failpoint
    from cnilib.cni import skel
    from cnilib.cni.registry import PLUGINS
    os.environ.clear()
    os.environ.update(env)
    failpoint.reset()
    failpoint.hit("agent-worker")
    modname = PLUGINS.get(plugin)
    if modname is None:
        raise ValueError("unknown plugin %r" % plugin)
    mod = sys.modules.get(modname) or __import__(modname, fromlist=["PLUGIN"])
    rc, out = skel.execute(mod.PLUGIN, env, stdin_data=stdin)
    if slot is not None:
        os.close(slot)      # the work is done: the attachment's next request may start
    link.send(wire.encode_done(rc, out))


def _printable(s):
    return "".join(c if c.isprintable() else "?" for c in s)[:500]


def _worker(conn, pidfd, caller, agent, opts, log):
    """Child side: one request, then exit."""
    # the agent ignores SIGTERM/SIGINT its own way; a worker keeps the
    # defaults, and SIGCHLD's default lets it see its children's exit status
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.setpgid(0, 0)    # its own process group: stopped with what it started
        _serve_one(conn, pidfd, caller, agent, opts, log)
    except BaseException:
        pass    # no answer: the shim works in-process (undoing a partial ADD first)
    finally:
        os._exit(0)


class Options:
    def __init__(self, socket_path, max_workers=MAX_WORKERS, read_timeout=READ_TIMEOUT,
                 peer_pidfd="auto"):
        self.socket = socket_path
        self.max_workers = max_workers
        self.read_timeout = read_timeout
        self.peer_pidfd = peer_pidfd


def serve(path, log=print, max_workers=MAX_WORKERS, read_timeout=READ_TIMEOUT, peer_pidfd="auto"):
    """Listen on ``path`` until SIGTERM/SIGINT."""
    if not hasattr(os, "pidfd_open"):
        log("agent: this Python has no os.pidfd_open; the agent cannot pin its callers")
        return 1
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as exc:
        log("agent: pidfd_open fails (%s): the kernel is older than 5.3; not serving" % exc.strerror)
        return 1
    opts = Options(path, max_workers, read_timeout, peer_pidfd)
    d = os.path.dirname(path)
    os.makedirs(d, 0o700, exist_ok=True)
    os.chmod(d, 0o700)
    os.makedirs(wire.slot_dir(path), 0o700, exist_ok=True)
    # bound and listening under a temporary name, then renamed into place:
    # a plugin that finds the socket can connect (between bind and listen
    # it would be refused and do its work in-process for nothing)
    staging = path + ".new"
    for p in (path, staging):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    preload(log)
    agent = peer.self_view()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        srv.bind(staging)
    finally:
        os.umask(old)
    os.chmod(staging, 0o600)
    srv.listen(64)
    os.rename(staging, path)
    srv.setblocking(False)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # workers are reaped through their pidfds
    signal.set_wakeup_fd(wake_w)
    workers = {}        # pidfd -> pid
    log("agent: serving on %s (pid %d, at most %d workers)" % (path, os.getpid(), max_workers))
    full = False
    try:
        while not stopping:
            p = select.poll()
            p.register(wake_r, select.POLLIN)
            if len(workers) < max_workers:
                p.register(srv.fileno(), select.POLLIN)
                full = False
            elif not full:
                full = True
                log("agent: %d workers busy; new connections wait" % len(workers))
            for fd in workers:
                p.register(fd, select.POLLIN)
            for fd, _ev in p.poll():
                if fd == wake_r:
                    try:
                        os.read(wake_r, 512)
                    except OSError:
                        pass
                elif fd in workers:
                    _reap(workers, fd)
                elif len(workers) < max_workers:
                    _accept(srv, workers, agent, opts, log, (wake_r, wake_w))
    finally:
        srv.close()
        try:
            os.unlink(path)
        except OSError:
            pass
        deadline = time.monotonic() + STOP_WAIT
        while workers and time.monotonic() < deadline:
            p = select.poll()
            for fd in workers:
                p.register(fd, select.POLLIN)
            for fd, _ev in p.poll(200):
                _reap(workers, fd)
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
    log("agent: stopped")
    return 0


def _reap(workers, fd):
    pid = workers.pop(fd)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    os.close(fd)


def _accept(srv, workers, agent, opts, log, pipe):
    try:
        conn, _ = srv.accept()
    except (BlockingIOError, InterruptedError):
        return
    except OSError as exc:
        log("agent: accept failed: %s" % exc)
        time.sleep(0.05)    # EMFILE and the like: do not spin
        return
    try:
        _fork_worker(srv, conn, workers, agent, opts, log, pipe)
    finally:
        conn.close()


def _fork_worker(srv, conn, workers, agent, opts, log, pipe):
    # the caller is pinned and checked here, before its request is read:
    # warm, a few dozen microseconds, where a fresh worker takes ~1 ms
    try:
        pidfd, caller = peer.identify(conn, agent, opts.peer_pidfd)
    except peer.Refused as why:
        log("agent: refused %s: %s" % ("pid %d" % why.pid if why.pid else "a caller",
                                       _printable(str(why))))
        _send_now(conn, wire.encode_refusal(str(why)))
        return
    except OSError as exc:
        log("agent: cannot pin a caller: %s" % exc)
        return
    try:
        try:
            child = os.fork()
        except OSError as exc:
            log("agent: cannot fork a worker: %s" % exc)
            return
        if child == 0:
            signal.set_wakeup_fd(-1)
            srv.close()
            for fd in list(workers) + list(pipe):
                os.close(fd)
            conn.setblocking(True)
            _worker(conn, pidfd, caller, agent, opts, log)
    finally:
        os.close(pidfd)
    try:
        wfd = os.pidfd_open(child)      # not reaped yet: it is this child
    except OSError as exc:
        # untracked, it could outgrow the cap: it goes (it has not said W,
        # so its shim counts on no work having been done)
        log("agent: cannot take a worker's pidfd: %s" % exc)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        return
    workers[wfd] = child
    # W, with the worker's pidfd: its shim can stop it (and wait for it)
    # should it go silent; sent from here, off the worker's path
    _send_now(conn, wire.encode_hello(child), wfd)


def _send_now(conn, data, fd=None):
    """A small frame into the empty socket buffer: never waits."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder, signed=True))] if fd else []
    try:
        conn.sendmsg([data], anc, socket.MSG_DONTWAIT)
    except OSError:
        pass        # the caller left already; a worker sees that


def main(argv):
    import argparse
    p = argparse.ArgumentParser(prog="pycni agent",
                                description="Serve plugin execs from a warm process (optional).")
    p.add_argument("--socket", default=None,
                   help="unix socket path (default $PYCNI_AGENT_SOCKET or %s)" % paths.AGENT_SOCKET)
    p.add_argument("--max-workers", type=int, default=MAX_WORKERS,
                   help="workers at a time; more connections wait (default %(default)s)")
    p.add_argument("--read-timeout", type=float, default=READ_TIMEOUT,
                   help="seconds a worker waits for its whole request (default %(default)s)")
    p.add_argument("--peer-pidfd", choices=peer.MODES, default="auto",
                   help="how callers are pinned: auto (SO_PEERPIDFD, else pidfd_open), or "
                        "force the older kernels' paths (testing)")
    args = p.parse_args(argv)
    if args.max_workers < 1 or not args.read_timeout > 0:
        p.error("--max-workers and --read-timeout must be positive")
    path = args.socket or wire.socket_path()
    if path == "off":
        print("pycni agent: PYCNI_AGENT_SOCKET=off; give --socket", file=sys.stderr)
        return 2
    return serve(path, log=lambda m: print(m, file=sys.stderr, flush=True),
                 max_workers=args.max_workers, read_timeout=args.read_timeout,
                 peer_pidfd=args.peer_pidfd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
