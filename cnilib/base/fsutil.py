"""Crash-safe files: atomic writes, bounded locks, checked names.

Every state file the suite writes goes through ``write_atomic``: a temp file
created O_EXCL|O_NOFOLLOW with mode 0600 in the same directory, fsync'd,
renamed over the target, and the directory fsync'd.  A crash leaves either
the old file or the new one, never a torn one; a leftover temp file is
ignored by readers (its name starts with '.') and swept by ``sweep_temps``.

State paths never go through a link planted below the directory a config
names.  What is trusted, and what is not:

  * the configured directory (a dataDir, the result cache dir, the suite's
    run and state dirs) is resolved once, by the kernel, when ``open_root``
    opens it: links on the way to it and in its own name are followed, as an
    operator may have moved /var/lib/cni to another disk behind a symlink
    (the kernel's fs.protected_symlinks keeps a link in a sticky
    world-writable dir such as /tmp from being followed by root);
  * everything below it, every directory and file the suite keeps there, is
    opened relative to its parent's fd with O_NOFOLLOW (``Dir``): a symlink
    at any component is never followed but refused with ``NotFollowed``
    (code 5, naming it) and left where it is.  Unlinking a name removes the
    link itself, never what it points at; ``Dir.read`` opens regular files
    only and never blocks on a FIFO.
"""

import errno
import fcntl
import os
import stat
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
    """Create the directory ``path`` (and parents) if needed, as one the
    suite keeps (not a configured one): a link or anything but a directory
    at ``path`` is refused, and so are a world-writable ``path`` and one in
    a world-writable parent that is not sticky.  Returns ``path``.  A
    configured directory, which may be a link an operator made, is
    ``ensure_root``'s."""
    try:
        os.makedirs(path, mode, exist_ok=True)
    except FileExistsError as exc:
        raise errors.IOFailure("%s exists and is not a directory" % path) from exc
    except OSError as exc:
        raise errors.IOFailure("cannot create directory %s: %s" % (path, exc.strerror)) from exc
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise errors.IOFailure("%s is not a directory (found a symlink or file)" % path,
                               "expected a directory owned by root; remove what is there")
    open_root(path, create=True, mode=mode).close()       # the mode checks
    return path


def ensure_root(path, mode=0o700):
    """Create the configured directory ``path`` (and parents) if needed and
    check it as ``open_root`` does (it may be a link); returns ``path``."""
    open_root(path, create=True, mode=mode).close()
    return path


def _write_close(fd, data, durable):
    """All of ``data`` into the new temp file ``fd`` (fsync'ed when
    ``durable``), then close it, whatever happens."""
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


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
        _write_close(fd, data, durable)
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
    """Contents of ``path`` (not following a final symlink), or None if missing.

    Opened without blocking and read only when it is a regular file: a FIFO
    planted where a state file goes (a lease, a saved config, a record)
    blocked the open until a writer came, and with it every exec that
    scans the directory.  Anything but a regular file is an OSError
    (EISDIR for a directory, EINVAL otherwise), as a symlink is (ELOOP)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
            raise OSError(code, "not a regular file" if code == errno.EINVAL else os.strerror(code), path)
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
    """Remove temp files a crashed writer left in the configured directory
    ``d`` (never through a link: see ``Dir.sweep_temps``)."""
    try:
        held = open_root(d)
    except errors.CniError:
        return 0
    if held is None:
        return 0
    with held:
        return held.sweep_temps(older_than)


def open_lock(path, what="lock", dir_fd=None):
    """The fd of lock file ``path`` (a name in the directory open on
    ``dir_fd`` when given), created 0600 if missing; a symlink planted there
    is not followed but refused (code 5, naming the path)."""
    name = os.path.basename(path) if dir_fd is not None else path
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                     0o600, dir_fd=dir_fd)
    except OSError as exc:
        why = "a symlink is there" if exc.errno == errno.ELOOP else exc.strerror
        raise errors.IOFailure("cannot open %s %s: %s" % (what, path, why),
                               "expected a regular file the suite creates; remove what is there") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise errors.IOFailure("cannot open %s %s: it is no regular file" % (what, path),
                               "expected a regular file the suite creates; remove what is there")
    return fd


def _printable(text, limit=200):
    """``text`` with everything but printable ASCII escaped (names read
    from /proc belong to whoever runs there), cut to ``limit``."""
    out = "".join(c if " " <= c <= "~" and c != "\\" else "\\x%02x" % ord(c) if ord(c) < 256
                  else "\\u%04x" % ord(c) for c in text)
    return out[:limit]


def lock_holder(fd, locks="/proc/locks", proc="/proc"):
    """Who holds the flock on the file open on ``fd``: "pid N (comm)", or
    None when /proc/locks does not say (another pid namespace, a lock
    released meanwhile).  Only held locks count, not waiters (``->``)."""
    st = os.fstat(fd)
    want = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open(locks) as f:
            table = f.read()
    except OSError:
        return None
    for line in table.splitlines():
        f = line.split()
        if len(f) < 6 or f[1] != "FLOCK" or f[5] != want:
            continue
        pid = f[4]
        if not pid.isdigit() or pid == "0":
            return None
        try:
            with open(os.path.join(proc, pid, "comm"), "rb") as c:
                comm = c.read(64).decode("utf-8", "replace").rstrip("\n")
        except OSError:
            return "pid %s" % pid
        return "pid %s (%s)" % (pid, _printable(comm, 32))
    return None


class Flock:
    """Exclusive flock on ``path``, waited for at most ``timeout`` seconds.

    A process killed while holding it releases it (the kernel drops flocks
    with the file), so a crash never wedges the next caller.  Timing out is
    TryAgainLater (code 11): the runtime retries.
    """

    def __init__(self, path, timeout=30.0, what="lock", log=None, dir_fd=None):
        self.path, self.timeout, self.what, self.log = path, timeout, what, log
        self.dir_fd = dir_fd
        self.fd = None
        self.since = None

    def __enter__(self):
        self.fd = open_lock(self.path, self.what, self.dir_fd)
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
                holder = lock_holder(self.fd)
                os.close(self.fd)
                self.fd = None
                raise errors.TryAgainLater(
                    "%s %s is still held after %g s%s"
                    % (self.what, self.path, self.timeout, " by " + holder if holder else ""),
                    "another process holds it; the runtime should retry")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            if self.log is not None:
                self.log.debug("%s released after %.1f ms", self.what, (time.monotonic() - self.since) * 1000)
        return False


# ------------------------------------------------------------ directories held by fd


class NotFollowed(errors.IOFailure):
    """A symlink (or anything but a directory) where the suite keeps a
    directory of its own, below a configured one: refused, not followed,
    left where it is.  ``path`` names it."""

    def __init__(self, path, found):
        super().__init__("%s is %s: not followed, left alone" % (path, found),
                         "the suite keeps a directory of its own there and never follows a link "
                         "below the configured directory; if nobody made it on purpose, "
                         "remove it (rm %s)" % path)
        self.path = path


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SUBDIR = _DIR | os.O_NOFOLLOW
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _what_is(st):
    if st is None:
        return "gone"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISREG(st.st_mode):
        return "a regular file"
    return "not a directory"


def _check_mode(fd, path):
    """Refuse a world-writable directory: anyone could plant names in it."""
    if os.fstat(fd).st_mode & 0o002:
        raise errors.IOFailure("state directory %s is world-writable" % path,
                               "expected mode 0700/0755; run chmod o-w %s" % path)


def try_roots(paths, problems):
    """(path, Dir) for each of the directories ``paths`` that exists, held
    open in turn (``open_root``), for a reader that must not stop: one
    refused is skipped, the reason appended to ``problems``."""
    for path in paths:
        try:
            root = open_root(path)
        except errors.CniError as exc:
            problems.append(exc.msg)
            continue
        if root is not None:
            with root:
                yield path, root


def open_root(path, create=False, mode=0o755, what="state directory"):
    """The configured directory ``path`` held open (a ``Dir``), resolved once
    with every link on the way followed (see the module docstring); None
    when it does not exist and ``create`` is false.

    With ``create`` (a writer is about to keep state there) it is made with
    its parents if needed, and refused when it or its parent could be
    written by anyone: a world-writable directory, or one inside a
    world-writable parent that is not sticky (as /tmp is)."""
    check_path(path, what)
    if create:
        try:
            os.makedirs(path, mode, exist_ok=True)
        except FileExistsError as exc:
            raise errors.IOFailure("%s exists and is not a directory" % path) from exc
        except OSError as exc:
            raise errors.IOFailure("cannot create directory %s: %s" % (path, exc.strerror)) from exc
    try:
        fd = os.open(path, _DIR)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not create:
            return None         # nothing of ours can be there
        raise errors.IOFailure("cannot open directory %s: %s" % (path, exc.strerror)) from exc
    except OSError as exc:
        raise errors.IOFailure("cannot open directory %s: %s" % (path, exc.strerror)) from exc
    d = Dir(fd, path)
    if create:
        try:
            _check_mode(fd, path)
            pst = os.stat("..", dir_fd=fd)
            if pst.st_mode & 0o002 and not pst.st_mode & stat.S_ISVTX:
                parent = os.path.dirname(os.path.realpath(path))
                # anyone could swap the state directory for a link of their own
                raise errors.IOFailure(
                    "state directory %s is in %s, which is world-writable" % (path, parent),
                    "expected a parent writable by root only (or sticky, as /tmp); "
                    "run chmod o-w %s" % parent)
        except BaseException:
            d.close()
            raise
    return d


def open_dirs(root, names, create=False, mode=0o755, what="state directory"):
    """``open_root(root)``, then each of ``names`` below it in turn
    (``Dir.sub``); None when one does not exist and ``create`` is false."""
    d = open_root(root, create, mode, what)
    for name in names:
        if d is None:
            return None
        try:
            sub = d.sub(name, create, mode)
        finally:
            d.close()
        d = sub
    return d


class Dir:
    """A directory held open on ``fd``: every name below it is taken
    relative to that fd, without following a link.  ``path`` is for
    messages only.  A context manager; closing twice is fine."""

    __slots__ = ("fd", "path")

    def __init__(self, fd, path):
        self.fd, self.path = fd, path

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finaliser, maybe at interpreter exit
            pass

    def join(self, name):
        return os.path.join(self.path, name)

    # -- directories -------------------------------------------------------------
    def sub(self, name, create=False, mode=0o755):
        """The directory ``name`` in this one, opened with O_NOFOLLOW; None
        when it does not exist and ``create`` is false.  A symlink or a file
        there raises NotFollowed.  With ``create`` it is made if missing and
        refused when world-writable (anyone could plant names in it)."""
        check_component(name, "directory name")
        for _attempt in range(3):
            if create:
                try:
                    os.mkdir(name, mode, dir_fd=self.fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise errors.IOFailure("cannot create directory %s: %s"
                                           % (self.join(name), exc.strerror)) from exc
            try:
                fd = os.open(name, _SUBDIR, dir_fd=self.fd)
            except FileNotFoundError:
                if not create:
                    return None
                continue            # removed between mkdir and open: make it again
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise NotFollowed(self.join(name), _what_is(self.lstat(name))) from None
                raise errors.IOFailure("cannot open directory %s: %s"
                                       % (self.join(name), exc.strerror)) from exc
            d = Dir(fd, self.join(name))
            if create:
                try:
                    _check_mode(fd, d.path)
                except BaseException:
                    d.close()
                    raise
            return d
        raise errors.IOFailure("cannot create directory %s: it keeps vanishing" % self.join(name))

    def names(self):
        """The names in this directory (unsorted)."""
        return os.listdir(self.fd)

    def try_names(self, problems):
        """Sorted names for a reader that must not stop: [] when the
        directory cannot be listed, the reason appended to ``problems``."""
        try:
            return sorted(self.names())
        except OSError as exc:
            problems.append("cannot list %s: %s" % (self.path, exc.strerror))
            return []

    def try_sub(self, name, problems):
        """``sub(name)`` for a reader that must not stop: None when it is
        missing or refused, the reason appended to ``problems``."""
        try:
            return self.sub(name)
        except errors.CniError as exc:
            problems.append(exc.msg)
            return None

    def lstat(self, name):
        """lstat of ``name`` here (a link is not followed), None when missing."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def is_dir(self, name):
        st = self.lstat(name)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def is_file(self, name):
        st = self.lstat(name)
        return st is not None and stat.S_ISREG(st.st_mode)

    def rmdir(self, name):
        os.rmdir(name, dir_fd=self.fd)

    def stat(self):
        return os.fstat(self.fd)

    def utime(self, name, ns):
        os.utime(name, ns=ns, dir_fd=self.fd, follow_symlinks=False)

    # -- files -------------------------------------------------------------------
    def read(self, name, limit=1 << 20):
        """Contents of the regular file ``name``, None when it is missing.
        A symlink (ELOOP: not followed), a directory (EISDIR) or any other
        non-regular file (EINVAL; a FIFO is never blocked on) raises OSError."""
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                if stat.S_ISDIR(mode):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.join(name))
                raise OSError(errno.EINVAL, "not a regular file", self.join(name))
            return os.read(fd, limit)
        finally:
            os.close(fd)

    def try_read(self, name, problems, limit=1 << 20):
        """``read`` for a reader that must not stop (see ``try_read``)."""
        try:
            return self.read(name, limit)
        except OSError as exc:
            problems.append("cannot read %s: %s" % (self.join(name), exc.strerror))
            return None

    def create_temp(self, data, mode=0o600):
        """A new temp file (O_EXCL, O_NOFOLLOW) holding ``data``; its name."""
        if isinstance(data, str):
            data = data.encode()
        tmp = "%s%d-%s" % (TMP_PREFIX, os.getpid(), os.urandom(4).hex())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=self.fd)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except BaseException:
            os.close(fd)
            self.remove(tmp)
            raise
        os.close(fd)
        return tmp

    def write_atomic(self, name, data, mode=0o600, durable=True):
        """``write_atomic`` of ``name`` in this directory: a temp file here,
        renamed over ``name`` (a link planted under that name is replaced,
        never written through)."""
        check_component(name, "file name")
        if isinstance(data, str):
            data = data.encode()
        tmp = "%s%d-%s" % (TMP_PREFIX, os.getpid(), os.urandom(4).hex())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=self.fd)
        try:
            _write_close(fd, data, durable)
            self.rename(tmp, name)
        except BaseException:
            try:
                self.remove(tmp)
            except OSError:
                pass
            raise
        if durable:
            self.fsync()

    def rename(self, src, dst):
        os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def link(self, src, dst):
        """Hard link ``src`` (never a link's target) as ``dst``; FileExistsError when taken."""
        os.link(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)

    def remove(self, name):
        """Unlink ``name``; True if it existed.  A symlink is removed itself."""
        try:
            os.unlink(name, dir_fd=self.fd)
            return True
        except FileNotFoundError:
            return False

    def fsync(self):
        try:
            os.fsync(self.fd)
        except OSError:
            pass

    def lock(self, name, timeout=30.0, what="lock", log=None):
        """A ``Flock`` on the file ``name`` here."""
        return Flock(self.join(name), timeout, what, log, dir_fd=self.fd)

    def sweep_temps(self, older_than=60.0):
        """Remove temp files a crashed writer left here; how many."""
        now = time.time()
        try:
            names = self.names()
        except OSError:
            return 0
        n = 0
        for name in names:
            if name.startswith(TMP_PREFIX):
                st = self.lstat(name)
                try:
                    if st is not None and now - st.st_mtime > older_than and self.remove(name):
                        n += 1
                except OSError:
                    pass
        return n
