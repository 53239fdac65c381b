"""The install and uninstall transactions: land the tree, check it, switch
every name, write the conflist, and undo all of it on a failure."""

import hashlib
import os
import sys

from cnilib.base import fsutil
from cnilib.cni import version
from cnilib.ops.install.common import BACKUP, OLD_MANIFEST, STATE, SUPPORT_DIRS, VERSIONS, InstallError, clean
from cnilib.ops.install.host import check_commands, diagnose, group_failures, host_summary
from cnilib.ops.install.state import (
    DirLock,
    State,
    is_copy_of,
    is_ours,
    keep,
    link_target,
    read_old_manifest,
    read_state,
    rmtree_quiet,
    swap_in,
)
from cnilib.ops.install.tree import tree_intact


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
                rmtree_quiet(new_tree)
            raise
        old_conf = state.conflist
        try:
            if conf_change is not None:
                state.conflist = self._write_conflist(conf_change, state)
        except BaseException:
            self._undo(undo)
            if new_tree:
                rmtree_quiet(new_tree)
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
                rmtree_quiet(new_tree)
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
                rmtree_quiet(dest)           # a damaged or stale copy no name points to
                break
            n += 1
            target_id = "%s.%d" % (ident, n)
        tmp = os.path.join(versions, ".new-%s-%d" % (target_id, os.getpid()))
        rmtree_quiet(tmp)
        import shutil
        try:
            shutil.copytree(tree.path, tmp, symlinks=True)
            os.chmod(tmp, 0o755)
            os.sync()                    # the tree is on disk before any name points at it
            os.rename(tmp, dest)
        except OSError as exc:
            rmtree_quiet(tmp)
            raise InstallError("cannot copy the tree into %s: %s" % (versions, exc.strerror),
                               ["nothing was changed"]) from exc
        except shutil.Error as exc:
            rmtree_quiet(tmp)
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
        rmtree_quiet(undo_dir)
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
                rmtree_quiet(item[1])

    def _tidy(self, versions, keep_ids, old_names):
        for name in os.listdir(versions):
            if name in keep_ids:
                continue
            rmtree_quiet(os.path.join(versions, name))
        for d in SUPPORT_DIRS:
            if d in old_names:
                rmtree_quiet(os.path.join(self.bin_dir, d))
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
            rmtree_quiet(os.path.join(self.bin_dir, VERSIONS))
            for d in SUPPORT_DIRS:
                if d in old_names:
                    rmtree_quiet(os.path.join(self.bin_dir, d))
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
