"""Network namespaces by path: validate, compare, enter and return.

A namespace is only ever *opened* (O_RDONLY, never O_CREAT: pyroute2's
default would mint a new netns for a vanished path), and only once an
O_PATH look has shown a file on nsfs, so a FIFO or a device named as a
namespace is refused without blocking or waking a driver.
``NS_GET_NSTYPE`` proves the file is a network namespace; comparing (st_dev, st_ino) with
/proc/self/ns/net catches a CNI_NETNS that is the plugin's own namespace,
where a loopback DEL would take the host's ``lo`` down.

Python 3.11 has no os.setns, so setns comes from libc through _ctypes,
loaded only when a namespace is actually entered.
"""

import os
import stat

from cnilib.base import errors

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703


class NetNSGone(Exception):
    """The netns path does not exist (any more)."""


def _nsfs_dev():
    """st_dev of nsfs (every namespace file lives on that one internal
    file system), or None where /proc is not mounted."""
    try:
        return os.stat("/proc/thread-self/ns/net").st_dev
    except OSError:
        return None


def _shown(path):
    from cnilib.base.text import printable
    return '"%s"' % printable(path[:200])


def open_netns(path):
    """Open ``path`` as a network namespace; return the fd.

    Raises NetNSGone when the path does not exist, InvalidEnvironment
    (code 4: CNI_NETNS is wrong) when it is not a network namespace.

    Nothing but a namespace file is ever opened for reading: the path is
    first opened O_PATH (which neither blocks on a FIFO nor wakes a device
    driver), checked to be a regular file on nsfs, and only then reopened
    through /proc/self/fd.  A FIFO used to block the open for ever (the
    plugin hung until the runtime killed it), and a device's open has side
    effects of its own (a watchdog starts counting).
    """
    if not path.startswith("/"):
        raise errors.InvalidEnvironment(
            "CNI_NETNS %s is not an absolute path" % _shown(path),
            "expected a path such as /var/run/netns/<name> or /proc/<pid>/ns/net")
    if "\x00" in path:
        raise errors.InvalidEnvironment("CNI_NETNS contains a NUL byte")
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NetNSGone(path) from exc
    except OSError as exc:
        raise errors.InvalidEnvironment(
            "cannot open CNI_NETNS %s: %s" % (_shown(path), exc.strerror),
            "expected a readable network namespace file") from exc
    try:
        st = os.fstat(pfd)
        dev = _nsfs_dev()
        if not stat.S_ISREG(st.st_mode) or (dev is not None and st.st_dev != dev):
            raise errors.InvalidEnvironment(
                "CNI_NETNS %s is not a namespace file" % _shown(path),
                "found %s; expected a network namespace such as /var/run/netns/<name> or "
                "/proc/<pid>/ns/net" % _kind(st.st_mode, dev is not None and st.st_dev != dev))
        try:
            fd = os.open("/proc/self/fd/%d" % pfd, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # no /proc: the path itself, without blocking, and the same inode
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            again = os.fstat(fd)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                raise errors.InvalidEnvironment("CNI_NETNS %s changed while it was opened"
                                                % _shown(path)) from None
    except OSError as exc:
        raise errors.InvalidEnvironment(
            "cannot open CNI_NETNS %s: %s" % (_shown(path), exc.strerror),
            "expected a readable network namespace file") from exc
    finally:
        os.close(pfd)
    try:
        import fcntl
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(fd)
        raise errors.InvalidEnvironment(
            "CNI_NETNS %s is not a namespace file" % _shown(path),
            "found a file the kernel does not know as a namespace (%s); "
            "expected a network namespace such as /var/run/netns/<name>" % exc.strerror) from exc
    if nstype != CLONE_NEWNET:
        os.close(fd)
        raise errors.InvalidEnvironment(
            "CNI_NETNS %s is not a network namespace" % _shown(path),
            "found a namespace of type 0x%x, expected a network namespace" % nstype)
    return fd


def _kind(mode, other_fs):
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if other_fs:
        return "a file outside nsfs"
    return "a file that is no namespace"


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
