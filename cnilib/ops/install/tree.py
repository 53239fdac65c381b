"""The tree being installed (``dist/py`` or the bundle), and its manifest:
the digest that names a version dir and tells an intact copy."""

import hashlib
import os
import stat
import sys

from cnilib.cni import registry, version
from cnilib.ops.install.common import InstallError, clean


class Tree:
    """A built form of the suite: ``dist/py`` or the bundle ``dist/bin``."""

    def __init__(self, path):
        self.path = os.path.realpath(path)
        if not os.path.isfile(os.path.join(self.path, "pycni")):
            raise InstallError("%s is not a built pycni tree (no pycni in it)" % clean(path),
                               ["build one with ./build.sh (dist/py or dist/bin)"])
        if os.path.isdir(os.path.join(self.path, "pycni.d")):
            self.form = "py"
        elif os.path.isdir(os.path.join(self.path, ".pycni")):
            self.form = "bundle"
        else:
            raise InstallError("%s has neither pycni.d/ (py form) nor .pycni/ (bundle)" % clean(path))
        self.commands = ["pycni"] + sorted(
            n for n in registry.PLUGINS if os.path.lexists(os.path.join(self.path, n)))
        self._manifest = None

    @property
    def manifest(self):
        """{relative path: (kind, mode, sha256 or link target)} of every entry."""
        if self._manifest is None:
            self._manifest = tree_manifest(self.path)
        return self._manifest

    @property
    def digest(self):
        h = hashlib.sha256()
        for rel in sorted(self.manifest):
            h.update(("%s\0%s\0%o\0%s\n" % ((rel,) + self.manifest[rel])).encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    @property
    def ident(self):
        return "%s-%s" % (version.SUITE_VERSION, self.digest[:12])


def own_tree():
    """The tree this process runs from, or None (a source checkout)."""
    if getattr(sys, "frozen", False):
        return os.path.dirname(os.path.realpath(sys.executable))
    here = os.path.realpath(__file__)          # <tree>/pycni.d/cnilib/ops/install/tree.py
    lib = here
    for _ in range(4):
        lib = os.path.dirname(lib)
    if os.path.basename(lib) == "pycni.d" and os.path.isfile(os.path.join(os.path.dirname(lib), "pycni")):
        return os.path.dirname(lib)
    return None


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def tree_manifest(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode & 0o7777, "")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_mode & 0o7777, _sha256(p))
        # a symlinked directory is listed as a link above and not walked
    return out


def tree_intact(path, manifest):
    """True when every entry of ``manifest`` is at ``path`` unchanged
    (extra files, such as bytecode a newer Python wrote, do not count)."""
    for rel, (kind, mode, what) in manifest.items():
        p = os.path.join(path, rel)
        try:
            st = os.lstat(p)
        except OSError:
            return False
        if kind == "link":
            if not stat.S_ISLNK(st.st_mode) or os.readlink(p) != what:
                return False
        elif kind == "dir":
            if not stat.S_ISDIR(st.st_mode):
                return False
        elif not stat.S_ISREG(st.st_mode) or st.st_mode & 0o7777 != mode or _sha256(p) != what:
            return False
    return True
