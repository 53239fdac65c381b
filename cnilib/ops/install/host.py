"""The node a tree is installed for, and the check that every command
starts there (VERSION run where it landed, chrooted into ``--host-root``);
a failure is diagnosed as the loader, glibc or python found vs needed."""

import os

from cnilib.ops import elf
from cnilib.ops.install.common import CHECK_TIMEOUT, MIN_PYTHON, InstallError, clean


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
