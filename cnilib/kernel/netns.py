"""Network namespaces by path: validate, compare, enter and return.

A namespace is only ever *opened* (O_RDONLY, never O_CREAT: pyroute2's
default would mint a new netns for a vanished path).  ``NS_GET_NSTYPE``
proves the file is a network namespace; comparing (st_dev, st_ino) with
/proc/self/ns/net catches a CNI_NETNS that is the plugin's own namespace,
where a loopback DEL would take the host's ``lo`` down.

Python 3.11 has no os.setns, so setns comes from libc through _ctypes,
loaded only when a namespace is actually entered.
"""

import os

from cnilib.base import errors

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703


class NetNSGone(Exception):
    """The netns path does not exist (any more)."""


def open_netns(path):
    """Open ``path`` as a network namespace; return the fd.

    Raises NetNSGone when the path does not exist, InvalidNetNS when it is
    not a network namespace.
    """
    if not path.startswith("/"):
        raise errors.InvalidNetNS(
            "CNI_NETNS %r is not an absolute path" % path[:200],
            "expected a path such as /var/run/netns/<name> or /proc/<pid>/ns/net")
    if "\x00" in path:
        raise errors.InvalidNetNS("CNI_NETNS contains a NUL byte")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NetNSGone(path) from exc
    except OSError as exc:
        raise errors.InvalidNetNS(
            "cannot open CNI_NETNS %r: %s" % (path, exc.strerror),
            "expected a readable network namespace file") from exc
    try:
        import fcntl
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(fd)
        raise errors.InvalidNetNS(
            "CNI_NETNS %r is not a namespace file" % path,
            "found a file the kernel does not know as a namespace (%s); "
            "expected a network namespace such as /var/run/netns/<name>" % exc.strerror) from exc
    if nstype != CLONE_NEWNET:
        os.close(fd)
        raise errors.InvalidNetNS(
            "CNI_NETNS %r is not a network namespace" % path,
            "found a namespace of type 0x%x, expected a network namespace" % nstype)
    return fd


def is_own(fd):
    """True when ``fd`` is the netns this process runs in."""
    a = os.fstat(fd)
    b = os.stat("/proc/thread-self/ns/net")
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# Module state, and why it is safe: a libc function bound once per process,
# holding no answer about any request; the agent preloads it and its forked
# workers inherit a pointer that stays valid (same libc, same addresses).
_setns = None


def _libc_setns():
    """setns(2) from libc through _ctypes (the ctypes package costs ~2 ms more)."""
    import _ctypes

    class c_int(_ctypes._SimpleCData):
        _type_ = "i"

    class Fn(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = c_int
        _argtypes_ = (c_int, c_int)

    fn = Fn(_ctypes.dlsym(_ctypes.dlopen(None, os.RTLD_NOW), "setns"))

    def _setns(fd, nstype):
        if fn(fd, nstype) != 0:
            e = _ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return _setns


def setns(fd, nstype=CLONE_NEWNET):
    global _setns
    if _setns is None:
        _setns = os.setns if hasattr(os, "setns") else _libc_setns()
    _setns(fd, nstype)


class Enter:
    """Context manager: run the body inside the netns ``fd``, then return.

    Single-threaded use only (setns applies to the calling thread).
    """

    __slots__ = ("fd", "saved")

    def __init__(self, fd):
        self.fd = fd
        self.saved = None

    def __enter__(self):
        self.saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(self.fd)
        except BaseException:
            os.close(self.saved)
            raise
        return self

    def __exit__(self, *exc):
        try:
            setns(self.saved)
        finally:
            os.close(self.saved)
        return False
