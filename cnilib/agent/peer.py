"""Who is calling the agent, whether it may be served, and how a worker
takes its place.

A worker does a plugin's work for the process on the other end of the
socket, so it must never do more than that process could have done itself.
The caller is pinned by a pidfd taken before its request is read:

* SO_PEERPIDFD (Linux >= 6.5) names the process that called connect();
* before 6.5, pidfd_open() of the SO_PEERCRED pid, and then proof that the
  process behind that pidfd holds the other end of this very connection
  (one of the sockets in its /proc/<pid>/fd must have this connection as
  its peer, asked of sock_diag in its netns), so a pid that was reused
  after the caller exited is never trusted;
* without pidfds at all (Linux < 5.3), nobody is served.

Its credentials are read from /proc/<pid>/status and its namespace links,
then the pidfd must show the same process still alive (and, for a pidfd
opened by pid, with the start time read before), so every fact belongs to
the pinned process.

Served: a caller that is root (every uid 0) in the agent's user and pid
namespaces, with CAP_NET_ADMIN (every link, address, route and rule) and
CAP_SYS_ADMIN (setns into the container's netns) in its effective set, no
``no_new_privs``, no seccomp filter and the agent's LSM label.  Those
three restrict a process in ways a worker cannot be shown to share: a
seccomp filter can be neither read back (short of ptrace) nor reproduced
faithfully, a label is the policy's to give; no_new_privs alone could be
copied, but one rule for the three is easier to audit, and runtimes run
without them (containerd, CRI-O, podman), so such a caller works
in-process.  Everything else the worker copies (``adopt``): the caller's
gids, and its capability sets, the bounding set cut to the caller's
permitted set (root's exec gains the bounding set unless securebits say
otherwise, and securebits cannot be read from outside), so the IPAM or
delegate plugin a worker execs runs with no more than the caller's own exec
of it would.  Its root, cwd and mount namespace come from the server.
"""

import os
import socket
import struct

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
REQUIRED = (CAP_NET_ADMIN, CAP_SYS_ADMIN)
CAP_NAMES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
             "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
             "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
             "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
             "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
             "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
             "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")
# how the caller's pidfd is taken: "auto" (SO_PEERPIDFD, else pidfd_open);
# "open" and "none" force the older kernels' paths (tests, --peer-pidfd)
MODES = ("auto", "open", "none")
MAX_FDS = 4096      # a caller holding more is not scanned for its socket


class Refused(Exception):
    """The caller is not served; the message says why (for both logs)."""

    pid = None


def cap_names(mask):
    return ", ".join("CAP_" + (CAP_NAMES[i] if i < len(CAP_NAMES) else str(i))
                     for i in range(64) if mask >> i & 1)


def parse_status(text):
    """The fields of /proc/<pid>/status that decide, as numbers."""
    got = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        val = val.strip()
        if key in ("Uid", "Gid"):
            got[key.lower()] = tuple(int(v) for v in val.split())
        elif key == "Groups":
            got["groups"] = tuple(int(v) for v in val.split())
        elif key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            got[key[3:].lower()] = int(val, 16)
        elif key in ("NoNewPrivs", "Seccomp", "Seccomp_filters"):
            got[key.lower()] = int(val)
    for k in ("uid", "gid", "inh", "prm", "eff", "bnd"):
        if k not in got:
            raise ValueError("no %s line" % k)
    got.setdefault("groups", ())
    got.setdefault("amb", 0)
    got.setdefault("nonewprivs", 0)
    got.setdefault("seccomp", 0)
    return got


def start_time(stat):
    """Field 22 of /proc/<pid>/stat (clock ticks after boot); the command
    name in parentheses may hold spaces and parentheses itself."""
    return int(stat[stat.rindex(b")") + 2:].split()[19])


class Creds:
    """One process's identity and privileges, as read from /proc."""

    __slots__ = ("pid", "status", "userns", "pidns", "label", "start")

    def __init__(self, pid, status, userns, pidns, label, start=None):
        self.pid, self.status, self.userns, self.pidns = pid, status, userns, pidns
        self.label, self.start = label, start

    def __getattr__(self, name):
        try:
            return self.status[name]
        except KeyError:
            raise AttributeError(name) from None


def _read(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def _label(proc):
    """The LSM label (AppArmor profile, SELinux context), or None without an LSM."""
    try:
        return _read(proc + "/attr/current").rstrip(b"\0\n").decode("utf-8", "replace")
    except OSError:
        return None


def _ns(proc, kind):
    st = os.stat("%s/ns/%s" % (proc, kind))
    return (st.st_dev, st.st_ino)


def read_creds(pid, label=True):
    """Creds of ``pid`` (0: this process); ``label=False`` skips the LSM
    label (a kernel without an LSM has none for anyone)."""
    proc = "/proc/%d" % pid if pid else "/proc/self"
    return Creds(pid, parse_status(_read(proc + "/status").decode("ascii", "replace")),
                 _ns(proc, "user"), _ns(proc, "pid"), _label(proc) if label else None)


def self_view():
    """The agent's own identity, what callers are compared with."""
    return read_creds(0)


def verdict(caller, agent):
    """Why ``caller`` is refused (a sentence), or None when it is served."""
    if any(caller.uid) or len(caller.uid) != 4:
        return "it runs as uid %s, not root" % "/".join(map(str, caller.uid))
    if caller.userns != agent.userns:
        return "it is in another user namespace (its capabilities are not the node's)"
    if caller.pidns != agent.pidns:
        return "it is in another pid namespace"
    missing = 0
    for cap in REQUIRED:
        if not caller.eff >> cap & 1:
            missing |= 1 << cap
    if missing:
        return "it lacks %s (a plugin needs them in-process)" % cap_names(missing)
    if caller.nonewprivs:
        return "it runs with no_new_privs (a worker could not be held to it)"
    if caller.seccomp:
        return "it runs under a seccomp filter (mode %d), which a worker cannot take on" % caller.seccomp
    if caller.label != agent.label:
        return "its security label %r is not the agent's %r" % ((caller.label or "")[:100],
                                                                (agent.label or "")[:100])
    return None


# ---------------------------------------------------------------- the pidfd


def alive(pidfd):
    """True while the process behind ``pidfd`` has not exited."""
    import select
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return not p.poll(0)


def _fdinfo_pid(pidfd):
    for line in _read("/proc/self/fdinfo/%d" % pidfd).splitlines():
        if line.startswith(b"Pid:"):
            return int(line[4:])
    raise OSError("no Pid line in the pidfd's fdinfo")


def peer_pid(conn):
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)[0]


def pin(conn, mode="auto"):
    """(pidfd, pid, by_pid) of the process that connected ``conn``: by_pid
    when the pidfd was opened from SO_PEERCRED's pid rather than given by
    the kernel.  Refused when it cannot be pinned."""
    if mode == "none":
        raise Refused("no pidfd to pin the caller with (the agent runs with --peer-pidfd=none)")
    if mode == "auto":
        try:
            pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError as exc:
            import errno
            if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
                raise Refused("cannot take its pidfd: %s" % exc.strerror) from exc
            if exc.errno == errno.EINVAL:   # 6.5+: the caller is gone already
                raise Refused("it exited before it was served") from exc
        else:
            try:
                pid = _fdinfo_pid(pidfd)
            except (OSError, ValueError) as exc:
                os.close(pidfd)
                raise Refused("cannot read its pidfd: %s" % exc) from exc
            if pid <= 0:
                os.close(pidfd)
                raise Refused("it exited, or is not visible in the agent's pid namespace")
            return pidfd, pid, False
    pid = peer_pid(conn)
    if pid <= 0:
        raise Refused("SO_PEERCRED names no process")
    try:
        pidfd = os.pidfd_open(pid)
    except AttributeError:
        raise Refused("this Python has no os.pidfd_open") from None
    except OSError as exc:
        raise Refused("cannot pin pid %d with pidfd_open: %s" % (pid, exc.strerror)) from exc
    try:
        if not holds_peer_of(pid, conn, pidfd):
            raise Refused("pid %d does not hold the other end of the connection (a reused pid?)" % pid)
    except BaseException:
        os.close(pidfd)
        raise
    return pidfd, pid, True


def _diag_peer(nl, ino):
    """The peer inode of unix socket ``ino`` (sock_diag, UNIX_DIAG_PEER), or
    None when ``ino`` is no unix socket of the diag socket's netns."""
    req = struct.pack("=BBHIII2I", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino, 0x4, 0xFFFFFFFF, 0xFFFFFFFF)
    nl.send(struct.pack("=IHHII", 16 + len(req), 20, 1, ino & 0xFFFFFFFF, 0) + req)  # SOCK_DIAG_BY_FAMILY
    data = nl.recv(65536)
    length, typ = struct.unpack_from("=IH", data)
    if typ != 20 or length > len(data):
        return None         # NLMSG_ERROR: not a unix socket here
    off = 32                # nlmsghdr + unix_diag_msg
    while off + 4 <= length:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        if atype == 2 and alen >= 8:        # UNIX_DIAG_PEER
            return struct.unpack_from("=I", data, off + 4)[0]
        off += (alen + 3) & ~3
    return None


def holds_peer_of(pid, conn, pidfd):
    """True when process ``pid`` holds the socket at the other end of ``conn``.

    An accepted socket is in no sock_diag table, but the connecting one is,
    in the netns it was made in: each socket ``pid`` holds is looked up
    from the caller's netns, and one whose peer is ``conn`` settles it."""
    from cnilib.kernel import netns
    mine = os.fstat(conn.fileno()).st_ino
    d = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(d)
    except OSError as exc:
        raise Refused("cannot list pid %d's files: %s" % (pid, exc.strerror)) from exc
    if len(fds) > MAX_FDS:
        raise Refused("pid %d holds %d files (more than %d are not scanned)" % (pid, len(fds), MAX_FDS))
    inodes = []
    for fd in fds:
        try:
            link = os.readlink(d + "/" + fd)
        except OSError:
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            inodes.append(int(link[8:-1]))
    if not inodes:
        return False
    try:
        ns = os.open("/proc/%d/ns/net" % pid, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused("cannot open pid %d's netns: %s" % (pid, exc.strerror)) from exc
    try:
        if not alive(pidfd):
            raise Refused("pid %d exited" % pid)
        with netns.Enter(ns):
            nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 4)  # SOCK_DIAG
    except OSError as exc:
        raise Refused("cannot ask sock_diag in pid %d's netns: %s" % (pid, exc)) from exc
    finally:
        os.close(ns)
    try:
        nl.settimeout(2.0)
        return any(_diag_peer(nl, ino) == mine for ino in inodes)
    except OSError as exc:
        raise Refused("sock_diag failed: %s" % exc) from exc
    finally:
        nl.close()


def identify(conn, agent, mode="auto"):
    """Pin the caller of ``conn``, read its credentials, and decide.
    Returns (pidfd, Creds) or raises Refused.  Every /proc read happens
    while the pidfd shows the process alive, so no fact belongs to another
    process that reused its pid; a pidfd opened by pid also needs the same
    start time before and after."""
    pidfd, pid, by_pid = pin(conn, mode)
    try:
        proc = "/proc/%d" % pid
        try:
            start = start_time(_read(proc + "/stat")) if by_pid else None
            caller = read_creds(pid, label=agent.label is not None)
            caller.start = start
            again = start_time(_read(proc + "/stat")) if by_pid else None
        except (OSError, ValueError) as exc:
            raise Refused("cannot read pid %d's credentials: %s" % (pid, exc)) from exc
        if again != start or not alive(pidfd):
            raise Refused("pid %d changed while it was read (it exited)" % pid)
        why = verdict(caller, agent)
        if why:
            raise Refused(why)
    except BaseException as exc:
        os.close(pidfd)
        if isinstance(exc, Refused):
            exc.pid = pid
        raise
    return pidfd, caller


# ------------------------------------------------------- becoming the caller

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


_LIBC = []


def _libc():
    if not _LIBC:
        import ctypes
        _LIBC.extend((ctypes, ctypes.CDLL(None, use_errno=True)))
    return _LIBC[0], _LIBC[1]


def _check(ctypes, rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


def targets(caller, mine):
    """The worker's capability sets: the caller's, never above the agent's."""
    bnd = caller.bnd & caller.prm & mine.bnd
    prm = caller.prm & mine.prm
    eff = caller.eff & prm
    inh = caller.inh & (mine.inh | mine.prm) & (mine.inh | bnd)
    amb = caller.amb & prm & inh
    return {"bnd": bnd, "prm": prm, "eff": eff, "inh": inh, "amb": amb}


def plan(caller, mine):
    """What ``adopt`` must change to hold this process (credentials
    ``mine``) to ``caller``: None when nothing (a caller with the agent's
    sets or more, and its gids), else the target sets."""
    want = targets(caller, mine)
    if (mine.gid[:3] == caller.gid[:3] and sorted(mine.groups) == sorted(caller.groups)
            and all(getattr(mine, k) == v for k, v in want.items())):
        return None
    return want


def adopt(caller, mine, want, status_fd):
    """Make this (single-threaded) process no more privileged than
    ``caller``: its gids, then the capability sets ``want`` (from
    ``plan``).  ``mine`` holds this process's credentials and ``status_fd``
    its /proc/thread-self/status, both taken before it entered the caller's
    root (which may lack /proc).  Raises OSError when a set cannot be
    matched, and checks the result."""
    rgid, egid, sgid, _fsgid = caller.gid
    if mine.gid[:3] != (rgid, egid, sgid) or sorted(mine.groups) != sorted(caller.groups):
        os.setgroups(list(caller.groups))
        os.setresgid(rgid, egid, sgid)
    ctypes, libc = _libc()
    ul = ctypes.c_ulong

    def prctl(*args):
        return libc.prctl(*[ul(a) for a in args + (0,) * (5 - len(args))])
    for cap in range(mine.bnd.bit_length()):
        if mine.bnd >> cap & 1 and not want["bnd"] >> cap & 1:
            _check(ctypes, prctl(PR_CAPBSET_DROP, cap), "dropping CAP_%s from the bounding set"
                   % (CAP_NAMES[cap] if cap < len(CAP_NAMES) else cap))
    if mine.amb:
        _check(ctypes, prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL), "clearing the ambient set")
    hdr = ctypes.create_string_buffer(struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0), 8)
    data = b"".join(struct.pack("=III", want["eff"] >> s & 0xFFFFFFFF, want["prm"] >> s & 0xFFFFFFFF,
                                want["inh"] >> s & 0xFFFFFFFF) for s in (0, 32))
    _check(ctypes, libc.capset(hdr, ctypes.create_string_buffer(data, len(data))), "capset")
    for cap in range(want["amb"].bit_length()):
        if want["amb"] >> cap & 1:
            _check(ctypes, prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap), "raising an ambient capability")
    now = parse_status(os.pread(status_fd, 65536, 0).decode("ascii", "replace"))
    for k, v in want.items():
        if now[k] != v:
            raise OSError("the worker's Cap%s is %x, expected %x" % (k.capitalize(), now[k], v))
    if now["gid"][:3] != (rgid, egid, sgid) or sorted(now["groups"]) != sorted(caller.groups):
        raise OSError("the worker's gids are %s, expected %s" % (now["gid"], caller.gid))
