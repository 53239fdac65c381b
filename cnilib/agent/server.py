"""``pycni agent``: a warm process the exec'd plugins hand their work to.

The thick-plugin model Multus uses, made optional: when the agent runs,
every plugin exec becomes a ~7 ms shim (cnilib.agent.wire) and the work runs
in a worker forked from a process that already has the schemas and every
plugin loaded; when it does not run, the plugins do the work
themselves.  Nothing about the result differs.

* One worker per request, forked: setns is per-thread and a crash stays in
  its worker.  The worker enters the caller's network namespace (the
  caller's pid from SO_PEERCRED, its /proc/<pid>/ns/net), takes the
  caller's CNI_* / PYCNI_* environment and stdin, and runs the same
  skel.execute an exec would.
* Only uid 0 is served, on a 0600 socket in a 0700 directory.
* If a worker dies mid-request the shim sees the connection close without a
  response and falls back to doing the work itself (after undoing a partial
  ADD), so a request converges instead of running twice.
"""

import os
import signal
import socket
import struct
import sys

from cnilib.agent import wire
from cnilib.base import paths

# what the workers would otherwise import per request (the plugins import
# lazily, on the verb's path): loaded once here, before any worker enters a
# caller's mount namespace, where another copy of the code may be installed
PRELOAD = ("cnilib.kernel.netlink", "cnilib.kernel.nftables", "cnilib.cni.validate",
           "cnilib.cni.schemacheck", "cnilib.cni._schemas", "cnilib.cni.invoke", "cnilib.cni.types",
           "cnilib.kernel.netns", "cnilib.kernel.sysctl", "cnilib.base.proc", "cnilib.base.fsutil",
           "cnilib.cni.args", "cnilib.base.paths", "cnilib.base.jsonio", "cnilib.cni.version",
           "cnilib.bridge.netconf", "cnilib.bridge.links", "cnilib.bridge.iface",
           "cnilib.firewall.masquerade", "cnilib.firewall.macspoof", "cnilib.flannel", "cnilib.tuning",
           "cnilib.firewall.nft", "cnilib.firewall.iptables", "cnilib.firewall.shared",
           "cnilib.firewall.records", "cnilib.firewall.naming",
           "cnilib.ipam.config", "cnilib.ipam.allocator", "cnilib.ipam.store", "cnilib.base.addr",
           "ipaddress", "hashlib")


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


def _peer(conn):
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)  # pid, uid, gid


CLONE_NEWNS = 0x00020000


def _enter_caller(pid, netns):
    """Take the caller's view of the node: its mount namespace and working
    directory (so CNI_NETNS, CNI_PATH, dataDir and every state path resolve
    as they would for an exec: a runtime in a private mount namespace, or
    under ``ip netns exec``, sees netns mounts the agent's namespace does not
    have), then its network namespace."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    net = os.open("/proc/%d/ns/net" % pid, flags)
    mnt = cwd = None
    try:
        if os.stat("/proc/%d/ns/mnt" % pid).st_ino != os.stat("/proc/self/ns/mnt").st_ino:
            mnt = os.open("/proc/%d/ns/mnt" % pid, flags)
            cwd = os.open("/proc/%d/cwd" % pid, flags | os.O_DIRECTORY)
            netns.setns(mnt, CLONE_NEWNS)
            os.fchdir(cwd)
        netns.setns(net)
    finally:
        for fd in (net, mnt, cwd):
            if fd is not None:
                os.close(fd)


def _worker(conn):
    """Child side: one request, in the caller's netns, then exit."""
    # the agent ignores SIGCHLD (the kernel reaps its workers); a worker that
    # kept that would lose its own children's exit status (waitpid: ECHILD),
    # so nft, iptables-restore and exec'd delegates would all "fail"
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    from cnilib.base import failpoint
    from cnilib.cni import skel
    from cnilib.cni.registry import PLUGINS
    from cnilib.kernel import netns
    rc, out = 1, b""
    try:
        pid, uid, _gid = _peer(conn)
        plugin, env, stdin = wire.read_request(conn)
        os.environ.clear()
        os.environ.update(env)
        failpoint.reset()
        failpoint.hit("agent-worker")
        _enter_caller(pid, netns)
        modname = PLUGINS.get(plugin)
        if modname is None:
            raise ValueError("unknown plugin %r" % plugin)
        mod = sys.modules.get(modname) or __import__(modname, fromlist=["PLUGIN"])
        rc, out = skel.execute(mod.PLUGIN, env, stdin_data=stdin)
        conn.sendall(wire.encode_response(rc, out))
    except Exception:
        # no response: the shim falls back to in-process work
        pass
    finally:
        os._exit(0)


def serve(path, log=print):
    """Listen on ``path`` until SIGTERM/SIGINT."""
    d = os.path.dirname(path)
    os.makedirs(d, 0o700, exist_ok=True)
    os.chmod(d, 0o700)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    preload(log)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        srv.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    srv.listen(128)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # workers are reaped by the kernel
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        srv.close()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log("agent: serving on %s (pid %d)" % (path, os.getpid()))
    try:
        while not stopping:
            try:
                conn, _ = srv.accept()
            except OSError:
                if stopping:
                    break
                continue
            try:
                _pid, uid, _gid = _peer(conn)
                if uid != 0:
                    log("agent: refused a connection from uid %d" % uid)
                    conn.close()
                    continue
                child = os.fork()
            except OSError as exc:
                log("agent: cannot serve a request: %s" % exc)
                conn.close()
                continue
            if child == 0:
                srv.close()
                _worker(conn)
            conn.close()
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    log("agent: stopped")
    return 0


def main(argv):
    import argparse
    p = argparse.ArgumentParser(prog="pycni agent",
                                description="Serve plugin execs from a warm process (optional).")
    p.add_argument("--socket", default=None,
                   help="unix socket path (default $PYCNI_AGENT_SOCKET or %s)" % paths.AGENT_SOCKET)
    args = p.parse_args(argv)
    path = args.socket or wire.socket_path()
    if path == "off":
        print("pycni agent: PYCNI_AGENT_SOCKET=off; give --socket", file=sys.stderr)
        return 2
    return serve(path, log=lambda m: print(m, file=sys.stderr, flush=True))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
