"""``pycni install`` / ``pycni uninstall``: put the suite into a plugin dir.

One code path for a node (``./build.sh install``, the Debian package's
admin) and for the image's init container.  The installer copies the tree
it runs from (``dist/py`` or the bundle ``dist/bin``, or ``--from DIR``)
into the plugin dir, as one directory per version::

    <bin dir>/.pycni-versions/<version>-<digest>/   the tree, as built
    <bin dir>/bridge -> .pycni-versions/<version>-<digest>/bridge   (one per command)
    <bin dir>/.pycni-backup/<name>                 what the first install replaced
    <bin dir>/.pycni-install.json                  what is installed (pycni-install/1)

Each command name is switched to the new tree by renaming a symlink over
it, so an exec resolves the name once and runs one tree: all old or all
new, never a mix, and the name is never missing.  Before any name is
switched, every command of the new tree answers VERSION where it landed
(chrooted into ``--host-root`` when the node's root is mounted there, as in
the DaemonSet), so nothing that cannot run on this node is installed: a
failure names the loader's own words and the glibc or python found vs
needed, removes the new tree, and changes nothing else.  A failure after
the first switch puts every name back as it was.

Idempotent: when the tree, the names and the conflist already match, a
re-run writes nothing.  The previous tree stays (an exec that started
before the switch may still be reading it); older ones are removed.

Directories: ``--bin-dir`` / ``$PYCNI_BIN_DIR`` (default /usr/libexec/cni),
``--conf-dir`` / ``$PYCNI_CONF_DIR`` (default /etc/cni/net.d).  The
conflist comes from ``--conflist FILE`` / ``$PYCNI_CONFLIST`` (a mounted
ConfigMap) or ``--network flannel|bridge`` / ``$PYCNI_NETWORK`` (built in),
and is written only when absent or different.
"""

import errno
import hashlib
import os
import stat
import sys
import time

from cnilib.base import errors, fsutil, log, paths
from cnilib.cni import registry, version
from cnilib.ops import elf

DEFAULT_BIN_DIR = paths.BIN_DIRS[1]     # the Red Hat path, owned by no Debian package
DEFAULT_CONF_DIR = paths.CONF_DIR
VERSIONS = ".pycni-versions"
BACKUP = ".pycni-backup"
STATE = ".pycni-install.json"
OLD_MANIFEST = ".pycni-installed"        # the layout ./build.sh install made before this module
SUPPORT_DIRS = ("pycni.d", ".pycni")    # py form, bundle
SCHEMA = "pycni-install/1"
MIN_PYTHON = (3, 9)
CHECK_TIMEOUT = 30.0

# the built-in network configs (kept equal to conf/ by tests/unit/test_install_lib.py)
BUILTIN_CONFLISTS = {
    "flannel": ("10-flannel.conflist", """{
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"""),
    "bridge": ("10-containerd-net.conflist", """{
  "cniVersion": "1.0.0",
  "name": "containerd-net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "promiscMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [{
            "subnet": "10.88.0.0/16"
          }],
          [{
            "subnet": "fd00:10:88::/64"
          }]
        ],
        "routes": [
          { "dst": "0.0.0.0/0" },
          { "dst": "::/0" }
        ]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
"""),
}


class InstallError(Exception):
    """A failure the operator reads: ``msg`` and the lines under it."""

    def __init__(self, msg, details=()):
        Exception.__init__(self, msg)
        self.msg = msg
        self.details = list(details)


def clean(text, limit=300):
    """Text from a file or a program, safe for a terminal: one line,
    control characters escaped, bounded."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = []
    for c in str(text)[:limit]:
        if c == "\n":
            out.append(" | ")
        elif c < " " or c == "\x7f":
            out.append("\\x%02x" % ord(c))
        else:
            out.append(c)
    s = "".join(out).strip(" |")
    return s + ("..." if len(str(text)) > limit else "")


# ---------------------------------------------------------------- the source tree


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
    here = os.path.realpath(__file__)                  # <tree>/pycni.d/cnilib/ops/install.py
    lib = os.path.dirname(os.path.dirname(os.path.dirname(here)))
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


# ---------------------------------------------------------------- running a command where it landed


class Host:
    """The node the plugins will run on: this machine's root, or the node's
    root file system mounted at ``root`` (the DaemonSet's /host), entered
    with chroot to run what was installed as the node will run it."""

    def __init__(self, root=None):
        self.root = os.path.realpath(root) if root else None

    @property
    def top(self):
        return self.root or "/"

    def inside(self, path):
        """``path`` of this machine as the node sees it."""
        if not self.root:
            return path
        # the directory resolved, never the name: a plugin is a symlink to
        # pycni in the bundle, and it must run under its own name
        head, tail = os.path.split(os.path.abspath(path))
        rel = os.path.relpath(os.path.join(os.path.realpath(head), tail), self.root)
        if rel == ".." or rel.startswith("../"):
            raise InstallError("%s is not under the host root %s" % (path, self.root),
                               ["the plugin dir must be mounted below the node's root "
                                "(e.g. PYCNI_BIN_DIR=%s/opt/cni/bin)" % self.root])
        return "/" + rel if rel != "." else "/"

    def describe(self):
        if self.root:
            return "the node's root at %s" % self.root
        if os.environ.get("PYCNI_IMAGE"):
            # the image's own loader and libc: the node's are checked only
            # when its / is mounted and PYCNI_HOST_ROOT names it
            return "this container (the image's libraries; set PYCNI_HOST_ROOT to check the node's)"
        return "this machine"

    def run(self, argv, env, stdin=b"", timeout=CHECK_TIMEOUT, argv0=None):
        """(rc, stdout, stderr) of argv run on the node; rc 127 with the OS
        error as stderr when it cannot be executed at all."""
        import subprocess
        root = self.root

        def enter():
            if root:
                os.chroot(root)
                os.chdir("/")
        try:
            p = subprocess.run([argv0 or argv[0]] + list(argv[1:]), executable=argv[0], input=stdin,
                               env=env, capture_output=True, timeout=timeout,
                               preexec_fn=enter if root else None, cwd=None if root else "/")
        except subprocess.TimeoutExpired:
            return 124, b"", b"timed out after %d s" % timeout
        except OSError as exc:
            return 127, b"", ("cannot execute %s: %s" % (argv[0], exc.strerror)).encode()
        except subprocess.SubprocessError as exc:      # the chroot failed
            return 127, b"", ("cannot enter %s: %s" % (root, exc)).encode()
        return p.returncode, p.stdout, p.stderr

    def python_version(self, interpreter="/usr/bin/python3"):
        """'3.9.2' of the node's python3 (or ``interpreter``), or None."""
        if elf_or_none(self.top, interpreter) is None:
            return None
        rc, out, _ = self.run([interpreter, "-I", "-S", "-c",
                               "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                              {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=15)
        return out.decode("ascii", "replace").strip() if rc == 0 else None


def elf_or_none(top, path):
    return elf.resolve_in(top, path)


CHECK_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "CNI_COMMAND": "VERSION", "PYCNI_LOG": "off", "PYCNI_AGENT_SOCKET": "off", "LC_ALL": "C"}


def check_commands(host, tree_dir, commands):
    """Run every command of the tree at ``tree_dir`` (VERSION for a plugin,
    --version for pycni) on the node; [(name, problem)] of those that fail."""
    failed = []
    for name in commands:
        path = host.inside(os.path.join(tree_dir, name))
        if name == "pycni":
            rc, out, err = host.run([path, "--version"], CHECK_ENV)
            ok = rc == 0 and out.startswith(b"pycni ")
        else:
            rc, out, err = host.run([path], CHECK_ENV, stdin=b'{"cniVersion":"1.0.0"}')
            ok = rc == 0 and b'"supportedVersions"' in out
        if not ok:
            words = (err.strip() or out.strip() or b"no output").decode("utf-8", "replace")
            failed.append((name, "exit %d: %s" % (rc, clean(words, 600))))
    return failed


def group_failures(failed, tree_dir):
    """[(names, words)]: commands that failed the same way share a line (the
    words with the command's path and the loader's pid taken out)."""
    groups = []
    for name, words in failed:
        key = words.replace(os.path.join(tree_dir, name), "<cmd>")
        i = key.find("[PYI-")
        if i >= 0:
            j = key.find(":", i)
            key = key[:i] + "[PYI-" + key[j:] if j > 0 else key
        for g in groups:
            if g[0] == key:
                g[1].append(name)
                break
        else:
            groups.append((key, [name], words))
    return [(names, words) for _key, names, words in groups]


def diagnose(host, tree_dir, form):
    """Lines saying what the node lacks for this tree: the glibc or the
    python found vs needed."""
    lines = []
    if form == "bundle":
        need, who = elf.tree_glibc_needed(tree_dir)
        have = elf.glibc_provided(host.top)
        release = elf.glibc_release(host.top)
        if have is None:
            lines.append("%s has no glibc (no libc.so.6 found): the bundle needs glibc >= %s"
                         % (host.describe(), elf.vtext(need)))
        elif need and need > have:
            lines.append("the bundle needs glibc >= %s (GLIBC_%s, in %s); %s has glibc %s"
                         % (elf.vtext(need), elf.vtext(need), who, host.describe(),
                            release or elf.vtext(have)))
        else:
            lines.append("glibc: the bundle needs >= %s, %s has %s"
                         % (elf.vtext(need), host.describe(), release or elf.vtext(have)))
        return lines
    interp = launcher_interpreter(os.path.join(tree_dir, "pycni"))
    if interp:
        found = elf_or_none(host.top, interp) is not None
        py3 = host.python_version()
        want = ">= %d.%d" % MIN_PYTHON
        base = os.path.basename(interp)
        if base.startswith("python") and base[6:].replace(".", "").isdigit() and "." in base:
            want = base[6:]
        if not found:
            lines.append("the launchers run %s (python %s), which %s lacks; its python3 is %s"
                         % (interp, want, host.describe(), py3 or "missing"))
        else:
            v = host.python_version(interp)
            lines.append("python: the launchers need %s; %s runs %s, version %s"
                         % (want, host.describe(), interp, v or "unknown (it did not start)"))
    return lines


def launcher_interpreter(path):
    """The interpreter a ``#!`` launcher names, or None."""
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode("utf-8", "replace").split()
    return parts[0] if parts else None


def host_summary(host, tree_dir, form):
    if form == "bundle":
        return "glibc %s" % (elf.glibc_release(host.top) or elf.vtext(elf.glibc_provided(host.top)))
    interp = launcher_interpreter(os.path.join(tree_dir, "pycni")) or "/usr/bin/python3"
    return "%s %s" % (interp, host.python_version(interp) or "?")


# ---------------------------------------------------------------- the plugin dir


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


class Installer:
    def __init__(self, bin_dir, conf_dir, host, out=None):
        self.bin_dir = os.path.abspath(bin_dir)
        self.conf_dir = os.path.abspath(conf_dir) if conf_dir else None
        self.host = host
        self.out = out or sys.stdout
        self.lines = []

    def say(self, text):
        self.lines.append(text)

    # ---------------------------------------------------------------- install
    def install(self, tree, conflist=None):
        """``conflist``: (file name, bytes) or None.  Returns a summary word."""
        self.host.inside(self.bin_dir)          # refuse a bin dir outside the host root early
        try:
            os.makedirs(self.bin_dir, 0o755, exist_ok=True)
        except OSError as exc:
            raise InstallError("cannot create the plugin dir %s: %s" % (self.bin_dir, exc.strerror),
                               ["nothing was changed"]) from exc
        with DirLock(self.bin_dir):
            try:
                return self._install(tree, conflist)
            finally:
                try:            # made by this run and left empty by a failure
                    os.rmdir(os.path.join(self.bin_dir, VERSIONS))
                except OSError:
                    pass

    def _install(self, tree, conflist):
        state = read_state(self.bin_dir) or State()
        old_names = read_old_manifest(self.bin_dir)
        versions = os.path.join(self.bin_dir, VERSIONS)
        ident = tree.ident
        current = state.tree
        names_ok = current is not None and all(
            os.path.islink(os.path.join(self.bin_dir, n))
            and os.readlink(os.path.join(self.bin_dir, n)) == link_target(current, n)
            for n in tree.commands)
        same = (current is not None and is_copy_of(current, ident) and state.names == tree.commands
                and names_ok and tree_intact(os.path.join(versions, current), tree.manifest))
        conf_change = self._conflist_plan(conflist, state)
        if same and conf_change is None:
            self.say("%s already holds pycni %s (%s form, tree %s): nothing changed"
                     % (self.bin_dir, version.SUITE_VERSION, tree.form, current))
            return "unchanged"

        target_id, new_tree, undo, gone = current, None, [], []
        if conf_change is not None:
            self._conf_precheck(conf_change)
        try:
            if not same:
                target_id, landed, fresh = self._land_tree(tree, versions, ident, current)
                new_tree = landed if fresh else None
                self._check(tree, landed)
            if not same:
                undo, gone = self._switch(tree, target_id, state, old_names)
        except BaseException:
            if new_tree:
                _rmtree(new_tree)
            raise
        old_conf = state.conflist
        try:
            if conf_change is not None:
                state.conflist = self._write_conflist(conf_change, state)
        except BaseException:
            self._undo(undo)
            if new_tree:
                _rmtree(new_tree)
            raise
        if not same:
            if current and current != target_id:
                state.previous = current
            state.tree = target_id
            state.form, state.version = tree.form, version.SUITE_VERSION
            state.names = list(tree.commands)
        try:
            fsutil.write_atomic(os.path.join(self.bin_dir, STATE), state.dump(), mode=0o644)
        except OSError as exc:
            self._undo(undo)
            if new_tree:
                _rmtree(new_tree)
            raise InstallError("cannot record the install in %s: %s"
                               % (os.path.join(self.bin_dir, STATE), exc.strerror),
                               ["every name was put back as it was"]) from exc
        self._drop_undo(undo)
        # what no longer belongs: names the suite dropped, a conflist of
        # another name written before, trees older than the previous one
        for name in gone:
            try:
                self._restore_or_remove(name)
            except OSError as exc:
                self.say("could not remove %s (no longer in the suite): %s" % (name, exc.strerror))
        if gone:
            self.say("removed (no longer in the suite): %s" % " ".join(gone))
        if conf_change is not None and old_conf and old_conf.get("path") != state.conflist["path"]:
            self._uninstall_conflist(old_conf)
        if not same:
            self._tidy(versions, keep_ids=(state.tree, state.previous), old_names=old_names)
        return "installed"

    def _land_tree(self, tree, versions, ident, current):
        """Copy the tree into .pycni-versions/<ident> (another name when that
        one is the current tree and damaged): (its id, its path, whether it
        was copied now); an intact copy left by an earlier install (the
        previous tree, on a rollback) is reused."""
        try:
            os.makedirs(versions, 0o755, exist_ok=True)
        except OSError as exc:
            raise InstallError("cannot write to %s: %s" % (self.bin_dir, exc.strerror),
                               ["nothing was changed"]) from exc
        fsutil.ensure_dir(versions, 0o755)
        if current and is_copy_of(current, ident) and tree_intact(os.path.join(versions, current),
                                                                  tree.manifest):
            return current, os.path.join(versions, current), False
        target_id = ident
        n = 0
        while True:
            dest = os.path.join(versions, target_id)
            if not os.path.lexists(dest):
                break
            if tree_intact(dest, tree.manifest):
                if target_id != current:
                    self.say("tree %s is already there (kept from an earlier install)" % target_id)
                return target_id, dest, False
            if target_id != current:
                _rmtree(dest)           # a damaged or stale copy no name points to
                break
            n += 1
            target_id = "%s.%d" % (ident, n)
        tmp = os.path.join(versions, ".new-%s-%d" % (target_id, os.getpid()))
        _rmtree(tmp)
        import shutil
        try:
            shutil.copytree(tree.path, tmp, symlinks=True)
            os.chmod(tmp, 0o755)
            os.sync()                    # the tree is on disk before any name points at it
            os.rename(tmp, dest)
        except OSError as exc:
            _rmtree(tmp)
            raise InstallError("cannot copy the tree into %s: %s" % (versions, exc.strerror),
                               ["nothing was changed"]) from exc
        except shutil.Error as exc:
            _rmtree(tmp)
            first = exc.args[0][0] if exc.args and exc.args[0] else ("", "", str(exc))
            raise InstallError("cannot copy the tree into %s: %s" % (versions, clean(first[2])),
                               ["nothing was changed"]) from exc
        return target_id, dest, True

    def _check(self, tree, tree_dir):
        failed = check_commands(self.host, tree_dir, tree.commands)
        if failed:
            details = []
            for names, words in group_failures(failed, self.host.inside(tree_dir)):
                details.append("%s: %s" % (" ".join(names) if len(names) < 4 else
                                           "%s (and %d more, the same way)" % (names[0], len(names) - 1),
                                           words))
            details += diagnose(self.host, tree_dir, tree.form)
            details.append("nothing was changed: the new tree was removed and every plugin in %s "
                           "is as it was" % self.bin_dir)
            raise InstallError("%d of %d commands of the %s form do not run on %s"
                               % (len(failed), len(tree.commands), tree.form, self.host.describe()),
                               details)
        self.say("checked: %s answer VERSION on %s (%s)" % (
            " ".join(tree.commands), self.host.describe(), host_summary(self.host, tree_dir, tree.form)))

    def _switch(self, tree, target_id, state, old_names):
        """Point every command name at the new tree.  Returns the undo list
        and the names that were ours but are not in the new tree."""
        undo_dir = os.path.join(self.bin_dir, VERSIONS, ".undo-%d" % os.getpid())
        _rmtree(undo_dir)
        os.makedirs(undo_dir, 0o700)
        backup_dir = os.path.join(self.bin_dir, BACKUP)
        undo = [("dir", undo_dir)]
        replaced, backed = [], []
        names = list(tree.commands)
        gone = [n for n in state.names + old_names
                if n not in names and is_ours(self.bin_dir, n, old_names)]
        try:
            for name in names:
                path = os.path.join(self.bin_dir, name)
                if os.path.lexists(path):
                    kept = os.path.join(undo_dir, name)
                    keep(path, kept)
                    if not is_ours(self.bin_dir, name, old_names):
                        if not os.path.lexists(os.path.join(backup_dir, name)):
                            os.makedirs(backup_dir, 0o755, exist_ok=True)
                            fsutil.ensure_dir(backup_dir, 0o755)
                            keep(path, os.path.join(backup_dir, name))
                            backed.append(name)
                            if name not in state.backups:
                                state.backups.append(name)
                        else:
                            self.say("replaced %s (not backed up again: %s/%s holds the original)"
                                     % (name, BACKUP, name))
                        replaced.append(name)
                    undo.append(("name", name, kept))
                else:
                    undo.append(("name", name, None))
                target = link_target(target_id, name)
                swap_in(path, lambda tmp, t=target: os.symlink(t, tmp))
                if os.stat(path).st_ino != os.stat(os.path.join(self.bin_dir, target)).st_ino:
                    raise InstallError("%s does not resolve to the new tree after the switch" % path,
                                       ["every name was put back as it was"])
        except OSError as exc:
            self._undo(undo)
            raise InstallError("cannot switch the plugins in %s to the new tree: %s"
                               % (self.bin_dir, exc.strerror),
                               ["every name was put back as it was"]) from exc
        except BaseException:
            self._undo(undo)
            raise
        if backed:
            self.say("backed up to %s/: %s" % (BACKUP, " ".join(backed)))
        if replaced:
            self.say("replaced: %s" % " ".join(replaced))
        self.say("installed %d commands (%s form, pycni %s) in %s -> %s/%s"
                 % (len(names), tree.form, version.SUITE_VERSION, self.bin_dir, VERSIONS, target_id))
        return undo, gone

    def _restore_or_remove(self, name):
        path = os.path.join(self.bin_dir, name)
        b = os.path.join(self.bin_dir, BACKUP, name)
        if os.path.lexists(b):
            os.rename(b, path)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _undo(self, undo):
        for item in reversed(undo):
            if item[0] != "name":
                continue
            _, name, kept = item
            path = os.path.join(self.bin_dir, name)
            try:
                if kept is None:
                    os.unlink(path)
                else:
                    swap_in(path, lambda tmp, k=kept: keep(k, tmp))
            except OSError:
                pass
        self._drop_undo(undo)

    def _drop_undo(self, undo):
        for item in undo:
            if item[0] == "dir":
                _rmtree(item[1])

    def _tidy(self, versions, keep_ids, old_names):
        for name in os.listdir(versions):
            if name in keep_ids:
                continue
            _rmtree(os.path.join(versions, name))
        for d in SUPPORT_DIRS:
            if d in old_names:
                _rmtree(os.path.join(self.bin_dir, d))
        if old_names:
            fsutil.remove(os.path.join(self.bin_dir, OLD_MANIFEST))

    # ---------------------------------------------------------------- conflist
    def _conflist_plan(self, conflist, state):
        """(path, bytes) to write, or None when absent from the request or
        already in place."""
        if conflist is None:
            return None
        if self.conf_dir is None:
            raise InstallError("a conflist was asked for but no conf dir is set")
        name, data = conflist
        path = os.path.join(self.conf_dir, name)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return None
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InstallError("cannot read %s: %s" % (path, exc.strerror), ["nothing was changed"]) from exc
        return (path, data)

    def _conf_precheck(self, plan):
        """Refuse before anything is written when the conflist cannot be
        (access(2) says EROFS for a read-only mount, too)."""
        self.host.inside(self.conf_dir)
        d = self.conf_dir
        while not os.path.isdir(d) and os.path.dirname(d) != d:
            if os.path.lexists(d):
                raise InstallError("the conf dir %s: %s is not a directory" % (self.conf_dir, d),
                                   ["nothing was changed"])
            d = os.path.dirname(d)
        if not os.access(d, os.W_OK | os.X_OK):
            try:
                os.statvfs(d)
                ro = os.statvfs(d).f_flag & os.ST_RDONLY
            except OSError:
                ro = False
            raise InstallError("cannot write the conflist into %s: %s" % (
                self.conf_dir, "Read-only file system" if ro else "Permission denied"),
                ["nothing was changed"])

    def _write_conflist(self, plan, state):
        path, data = plan
        name = os.path.basename(path)
        backup = None
        if os.path.lexists(path) and not (state.conflist and state.conflist.get("path") == path):
            bdir = os.path.join(self.conf_dir, BACKUP)
            b = os.path.join(bdir, name)
            if not os.path.lexists(b):
                os.makedirs(bdir, 0o755, exist_ok=True)
                keep(path, b)
                backup = b
                self.say("backed up %s to %s" % (path, b))
        elif state.conflist and state.conflist.get("path") == path:
            backup = state.conflist.get("backup")
        existed = os.path.lexists(path)
        try:
            os.makedirs(self.conf_dir, 0o755, exist_ok=True)
            fsutil.write_atomic(path, data, mode=0o644)
        except OSError as exc:
            raise InstallError("cannot write %s: %s" % (path, exc.strerror),
                               ["every plugin name was put back as it was"]) from exc
        self.say("conflist %s written (%s)" % (path, "it differed" if existed else "it was absent"))
        return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "backup": backup}

    # ---------------------------------------------------------------- uninstall
    def uninstall(self):
        if not os.path.isdir(self.bin_dir):
            self.say("nothing of pycni is installed in %s (no such directory)" % self.bin_dir)
            return "nothing"
        with DirLock(self.bin_dir):
            state = read_state(self.bin_dir)
            old_names = read_old_manifest(self.bin_dir)
            if state is None and not old_names:
                self.say("nothing of pycni is installed in %s" % self.bin_dir)
                return "nothing"
            names = (state.names if state else []) + [n for n in old_names if n not in SUPPORT_DIRS]
            restored, removed = [], []
            for name in names:
                if not is_ours(self.bin_dir, name, old_names):
                    if os.path.lexists(os.path.join(self.bin_dir, name)):
                        self.say("left %s alone: it is no longer ours" % name)
                    continue
                if os.path.lexists(os.path.join(self.bin_dir, BACKUP, name)):
                    restored.append(name)
                else:
                    removed.append(name)
                self._restore_or_remove(name)
            if state and state.conflist:
                self._uninstall_conflist(state.conflist)
            _rmtree(os.path.join(self.bin_dir, VERSIONS))
            for d in SUPPORT_DIRS:
                if d in old_names:
                    _rmtree(os.path.join(self.bin_dir, d))
            for f in (STATE, OLD_MANIFEST):
                fsutil.remove(os.path.join(self.bin_dir, f))
            try:
                os.rmdir(os.path.join(self.bin_dir, BACKUP))
            except OSError:
                pass
        if restored:
            self.say("restored from %s/: %s" % (BACKUP, " ".join(restored)))
        if removed:
            self.say("removed: %s" % " ".join(removed))
        self.say("pycni is uninstalled from %s" % self.bin_dir)
        return "uninstalled"

    def _uninstall_conflist(self, rec):
        path = rec.get("path")
        if not path:
            return
        data = fsutil.read_file(path)
        if data is None:
            return
        if hashlib.sha256(data).hexdigest() != rec.get("sha256"):
            self.say("left %s: it changed since pycni wrote it" % path)
            return
        b = rec.get("backup")
        if b and os.path.lexists(b):
            os.rename(b, path)
            self.say("restored %s" % path)
            try:
                os.rmdir(os.path.dirname(b))
            except OSError:
                pass
        else:
            os.unlink(path)
            self.say("removed %s" % path)


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


def _rmtree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- command line


def _parser(verb):
    import argparse
    p = argparse.ArgumentParser(
        prog="pycni " + verb,
        description=("copy this build of the suite into a plugin dir, switching each plugin "
                     "name to it atomically, and write a conflist"
                     if verb == "install" else "remove what pycni install put into a plugin dir "
                     "and restore what it replaced"))
    p.add_argument("--bin-dir", default=None,
                   help="plugin dir ($PYCNI_BIN_DIR, default %s)" % DEFAULT_BIN_DIR)
    p.add_argument("--conf-dir", default=None,
                   help="network config dir ($PYCNI_CONF_DIR, default %s)" % DEFAULT_CONF_DIR)
    p.add_argument("--host-root", default=None,
                   help="the node's root file system when this runs in a container ($PYCNI_HOST_ROOT): "
                        "the check runs the plugins chrooted into it")
    if verb == "install":
        p.add_argument("--from", dest="src", default=None, metavar="DIR",
                       help="the built tree to install (default: the one this pycni runs from)")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--conflist", default=None, metavar="FILE",
                       help="network config to put into the conf dir, under its own name ($PYCNI_CONFLIST)")
        g.add_argument("--network", default=None, choices=sorted(BUILTIN_CONFLISTS),
                       help="a built-in network config ($PYCNI_NETWORK): flannel (%s) or bridge + "
                            "portmap (%s)" % (BUILTIN_CONFLISTS["flannel"][0],
                                              BUILTIN_CONFLISTS["bridge"][0]))
    p.add_argument("bin_dir_pos", nargs="?", default=None, metavar="BIN_DIR",
                   help="the plugin dir, as --bin-dir")
    return p


def load_conflist(path=None, network=None):
    if network:
        if network not in BUILTIN_CONFLISTS:
            raise InstallError("unknown built-in network %r" % clean(network, 40),
                               ["choose one of %s" % ", ".join(sorted(BUILTIN_CONFLISTS))])
        name, text = BUILTIN_CONFLISTS[network]
        return name, text.encode()
    if not path:
        return None
    name = os.path.basename(path)
    if not name.endswith((".conflist", ".conf", ".json")) or name.startswith("."):
        raise InstallError("the conflist %s must be named *.conflist, *.conf or *.json" % clean(path),
                           ["runtimes load only those names from the conf dir"])
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise InstallError("cannot read the conflist %s: %s" % (clean(path), exc.strerror),
                           ["nothing was changed"]) from exc
    import json
    try:
        conf = json.loads(data)
    except ValueError as exc:
        raise InstallError("the conflist %s is not JSON: %s" % (clean(path), clean(str(exc))),
                           ["nothing was changed"]) from None
    if not isinstance(conf, dict) or not isinstance(conf.get("name"), str) or not (
            isinstance(conf.get("plugins"), list) and conf["plugins"] or isinstance(conf.get("type"), str)):
        raise InstallError("the conflist %s is not a network config (it needs \"name\" and "
                           "\"plugins\", or \"type\")" % clean(path), ["nothing was changed"])
    return name, data


def _dirs(opts):
    env = os.environ
    bin_dir = opts.bin_dir or opts.bin_dir_pos or env.get("PYCNI_BIN_DIR") or DEFAULT_BIN_DIR
    conf_dir = opts.conf_dir or env.get("PYCNI_CONF_DIR") or DEFAULT_CONF_DIR
    host_root = opts.host_root if opts.host_root is not None else env.get("PYCNI_HOST_ROOT", "")
    for what, p in (("plugin dir", bin_dir), ("conf dir", conf_dir), ("host root", host_root)):
        if p and ("\x00" in p or not os.path.isabs(p)):
            raise InstallError("the %s %r must be an absolute path" % (what, clean(p, 80)))
    return bin_dir, conf_dir, host_root


def _finish(verb, inst, exc):
    out = sys.stdout
    for line in inst.lines if inst else ():
        out.write("pycni %s: %s\n" % (verb, line))
    out.flush()
    if exc is None:
        return 0
    err = ["pycni %s: FAILED: %s" % (verb, exc.msg)]
    err += ["  %s" % d for d in exc.details]
    sys.stderr.write("\n".join(err) + "\n")
    sys.stderr.flush()
    return 1


def main(argv, verb="install"):
    t0 = time.monotonic()
    opts = _parser(verb).parse_args(argv)
    inst, bin_dir = None, opts.bin_dir or "?"
    trace = None
    try:
        bin_dir, conf_dir, host_root = _dirs(opts)
        host = Host(host_root or None)
        if host.root and not os.path.isdir(host.root):
            raise InstallError("the host root %s is not a directory" % clean(host.root))
        inst = Installer(bin_dir, conf_dir, host)
        if verb == "install":
            src = opts.src or own_tree()
            if src is None:
                raise InstallError("this pycni runs from a source checkout, not a built tree",
                                   ["run dist/py/pycni install or dist/bin/pycni install, "
                                    "or give --from DIR"])
            tree = Tree(src)
            conflist = load_conflist(opts.conflist or os.environ.get("PYCNI_CONFLIST") or None,
                                     opts.network or os.environ.get("PYCNI_NETWORK") or None)
            outcome = inst.install(tree, conflist)
        else:
            outcome = inst.uninstall()
        failure = None
    except InstallError as exc:
        failure = exc
    except errors.CniError as exc:
        failure = InstallError(exc.msg, [exc.details] if exc.details else [])
    except Exception as exc:
        import traceback
        trace = traceback.format_exc()
        failure = InstallError("%s: %s" % (type(exc).__name__, clean(getattr(exc, "strerror", None) or exc)),
                               ["the traceback is in the suite's log (%s)"
                                % (os.environ.get("PYCNI_LOG") or log.DEFAULT_PATH)])
    if failure is not None:
        outcome = "error" if trace else "failed"
    log.Log("pycni").flush("%s pycni[%d] %s dir=%s %s %.1fms" % (
        log.stamp(), os.getpid(), verb.upper(), clean(bin_dir, 200), outcome,
        (time.monotonic() - t0) * 1000), trace=trace)
    return _finish(verb, inst, failure)


def uninstall_main(argv):
    return main(argv, verb="uninstall")


def pause_main(argv):
    """``pycni pause``: sleep until SIGTERM or SIGINT, then exit 0 (the
    DaemonSet's main container, once the init container has installed)."""
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write("usage: pycni pause\n\nsleep until stopped (SIGTERM, SIGINT): the main "
                         "container of the DaemonSet in deploy/kube-pycni.yml\n")
        return 0
    import signal
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    # PID 1 of a container ignores a signal it has no handler for: say when
    # SIGTERM counts (a stop before this line waits for the runtime's kill)
    sys.stdout.write("pycni pause: waiting for SIGTERM\n")
    sys.stdout.flush()
    while not stop:
        signal.pause()
    return 0
