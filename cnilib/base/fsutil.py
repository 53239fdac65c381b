"""Crash-safe files: atomic writes, bounded locks, checked names.

Every state file the suite writes goes through ``write_atomic``: a temp file
created O_EXCL|O_NOFOLLOW with mode 0600 in the same directory, fsync'd,
renamed over the target, and the directory fsync'd.  A crash leaves either
the old file or the new one, never a torn one; a leftover temp file is
ignored by readers (its name starts with '.') and swept by ``sweep_temps``.
"""

import errno
import fcntl
import os
import time

from cnilib.base import errors

TMP_PREFIX = ".pycni-tmp-"


def check_component(name, what="name"):
    """Refuse a file-name component that could escape its directory."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\x00" in name or len(name.encode("utf-8", "surrogateescape")) > 255
            or name.startswith(TMP_PREFIX)):
        raise errors.InvalidConfig("%s %r cannot be used as a file name" % (what, str(name)[:80]),
                                   "expected at most 255 bytes, without '/', NUL, '.' or '..'")
    return name


def check_path(path, what):
    """Refuse a configured path no system call can take (a NUL byte), as a
    config error rather than a ValueError from deep inside the plugin."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise errors.InvalidConfig("%s %r is not a usable path" % (what, str(path)[:120]),
                                   "expected a file system path without NUL bytes")
    return path


def ensure_dir(path, mode=0o700):
    """Create ``path`` (and parents) if needed; refuse a symlink or non-directory."""
    try:
        os.makedirs(path, mode, exist_ok=True)
    except FileExistsError as exc:
        raise errors.IOFailure("%s exists and is not a directory" % path) from exc
    except OSError as exc:
        raise errors.IOFailure("cannot create directory %s: %s" % (path, exc.strerror)) from exc
    st = os.lstat(path)
    import stat as _stat
    if not _stat.S_ISDIR(st.st_mode):
        raise errors.IOFailure("%s is not a directory (found a symlink or file)" % path,
                               "expected a directory owned by root; remove what is there")
    if st.st_mode & 0o002:
        raise errors.IOFailure("state directory %s is world-writable" % path,
                               "expected mode 0700/0755; run chmod o-w %s" % path)
    parent = os.path.dirname(os.path.abspath(path))
    pst = os.stat(parent)
    if pst.st_mode & 0o002 and not pst.st_mode & _stat.S_ISVTX:
        # anyone could swap the state directory for a link of their own
        raise errors.IOFailure("state directory %s is in %s, which is world-writable" % (path, parent),
                               "expected a parent writable by root only (or sticky, as /tmp); "
                               "run chmod o-w %s" % parent)
    return path


def write_atomic(path, data, mode=0o600, durable=True):
    """Replace ``path`` with ``data`` atomically (see module docstring).

    ``durable=False`` skips both fsyncs: the rename is still atomic for
    every reader and for a crash of the writer, and only a power loss can
    lose the file, which is right for records of kernel state that a
    reboot loses too (each fsync costs a few ms under load)."""
    if isinstance(data, str):
        data = data.encode()
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, "%s%d-%s" % (TMP_PREFIX, os.getpid(), os.urandom(4).hex()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(d)


def fsync_dir(d):
    try:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_file(path, limit=1 << 20):
    """Contents of ``path`` (not following a final symlink), or None if missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def try_read(path, problems, limit=1 << 20):
    """Contents of ``path`` for a reader that must not stop: None when it is
    missing, or unreadable (a symlink, not followed, or a directory count as
    unreadable), the reason then appended to ``problems``."""
    try:
        data = read_file(path, limit)
    except OSError as exc:
        problems.append("cannot read %s: %s" % (path, exc.strerror))
        return None
    return data


def try_listdir(d, problems):
    """Sorted names in ``d``; [] when it is missing or no directory, and when
    it cannot be listed, the reason then appended to ``problems``."""
    try:
        return sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        problems.append("cannot list %s: %s" % (d, exc.strerror))
        return []


def remove(path):
    """Unlink; True if it existed."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def sweep_temps(d, older_than=60.0):
    """Remove temp files a crashed writer left in ``d``."""
    now = time.time()
    try:
        names = os.listdir(d)
    except OSError:
        return 0
    n = 0
    for name in names:
        if name.startswith(TMP_PREFIX):
            p = os.path.join(d, name)
            try:
                if now - os.lstat(p).st_mtime > older_than:
                    os.unlink(p)
                    n += 1
            except OSError:
                pass
    return n


def open_lock(path, what="lock"):
    """The fd of lock file ``path``, created 0600 if missing; a symlink
    planted there is not followed but refused (code 5, naming the path)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        why = "a symlink is there" if exc.errno == errno.ELOOP else exc.strerror
        raise errors.IOFailure("cannot open %s %s: %s" % (what, path, why),
                               "expected a regular file the suite creates; remove what is there") from exc


class Flock:
    """Exclusive flock on ``path``, waited for at most ``timeout`` seconds.

    A process killed while holding it releases it (the kernel drops flocks
    with the file), so a crash never wedges the next caller.  Timing out is
    TryAgainLater (code 11): the runtime retries.
    """

    def __init__(self, path, timeout=30.0, what="lock", log=None):
        self.path, self.timeout, self.what, self.log = path, timeout, what, log
        self.fd = None
        self.since = None

    def __enter__(self):
        self.fd = open_lock(self.path, self.what)
        start = time.monotonic()
        deadline = start + self.timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.since = time.monotonic()
                if self.log is not None:
                    self.log.debug("%s taken after %.1f ms", self.what, (self.since - start) * 1000)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                    os.close(self.fd)
                    raise errors.IOFailure("cannot lock %s: %s" % (self.path, exc.strerror)) from exc
            if time.monotonic() >= deadline:
                os.close(self.fd)
                self.fd = None
                raise errors.TryAgainLater(
                    "%s %s is still held after %.0f s" % (self.what, self.path, self.timeout),
                    "another plugin process holds it; the runtime should retry")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            if self.log is not None:
                self.log.debug("%s released after %.1f ms", self.what, (time.monotonic() - self.since) * 1000)
        return False
