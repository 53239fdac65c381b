"""The plugin dir: ``.pycni-install.json`` (the owner of that format), which
names are ours, the atomic swap of a name, and the lock on the dir."""

import errno
import os
import time

from cnilib.base import fsutil
from cnilib.ops.install.common import BACKUP, OLD_MANIFEST, SCHEMA, STATE, VERSIONS, InstallError


class State:
    """What ``.pycni-install.json`` records."""

    def __init__(self, data=None):
        data = data or {}
        self.tree = data.get("tree")
        self.previous = data.get("previous")
        self.form = data.get("form")
        self.version = data.get("version")
        self.names = list(data.get("names") or [])
        self.backups = list(data.get("backups") or [])
        self.conflist = data.get("conflist")

    def dump(self):
        import json
        return json.dumps({"schema": SCHEMA, "version": self.version, "form": self.form,
                           "tree": self.tree, "previous": self.previous, "names": self.names,
                           "backups": self.backups, "conflist": self.conflist},
                          indent=1, sort_keys=True) + "\n"


def read_state(bin_dir):
    data = fsutil.read_file(os.path.join(bin_dir, STATE))
    if data is None:
        return None
    import json
    try:
        d = json.loads(data)
    except ValueError as exc:
        raise InstallError("%s is not JSON (%s)" % (os.path.join(bin_dir, STATE), exc),
                           ["remove it to start over; the backups in %s stay"
                            % os.path.join(bin_dir, BACKUP)]) from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise InstallError("%s is not a %s record" % (os.path.join(bin_dir, STATE), SCHEMA))
    return State(d)


def read_old_manifest(bin_dir):
    """Names the older ./build.sh install recorded, or []."""
    data = fsutil.read_file(os.path.join(bin_dir, OLD_MANIFEST))
    if data is None:
        return []
    return [n for n in data.decode("utf-8", "replace").split() if n]


def is_copy_of(tree_id, ident):
    """Whether tree dir ``tree_id`` holds the tree ``ident`` (a repaired
    copy is named <ident>.<n>)."""
    return tree_id == ident or (tree_id.startswith(ident + ".") and tree_id[len(ident) + 1:].isdigit())


def link_target(tree_id, name):
    return "%s/%s/%s" % (VERSIONS, tree_id, name)


def is_ours(bin_dir, name, old_names=()):
    p = os.path.join(bin_dir, name)
    try:
        t = os.readlink(p)
    except OSError:
        return name in old_names and os.path.lexists(p)
    return t.startswith(VERSIONS + "/") or name in old_names


def swap_in(path, make):
    """Make a new entry beside ``path`` with ``make(tmp)`` and rename it over
    ``path``: readers see the old entry or the new one, never none."""
    d, base = os.path.split(path)
    tmp = os.path.join(d, ".%s.pycni-new-%s" % (base, os.urandom(3).hex()))
    make(tmp)
    try:
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def keep(src, dst):
    """``dst`` becomes the same file as ``src`` (a hard link, the entry
    itself when it is a symlink), or a copy where links cannot be made."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        import shutil
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


class DirLock:
    """flock on the plugin dir itself: one installer at a time, no lock
    file left behind, and it works on a read-only dir."""

    def __init__(self, path, timeout=120.0):
        self.path, self.timeout, self.fd = path, timeout, None

    def __enter__(self):
        import fcntl
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise InstallError("cannot open %s: %s" % (self.path, exc.strerror),
                               ["nothing was changed"]) from exc
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                    raise
            if time.monotonic() > deadline:
                os.close(self.fd)
                raise InstallError("another pycni install holds %s after %.0f s" % (self.path, self.timeout),
                                   ["nothing was changed"])
            time.sleep(0.1)

    def __exit__(self, *exc):
        os.close(self.fd)
        return False


def rmtree_quiet(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)
