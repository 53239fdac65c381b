"""Real Debian roots for the distribution matrix, and running commands in them.

``root(suite)`` returns a minbase root of that Debian suite (made once per
machine by ``./build.sh root``, cached in /var/cache/pycni-roots and reused
by every clone). ``InRoot`` runs a command chrooted into such a root, inside
a sandbox network namespace when given one, in a private mount namespace of
its own: every mount it makes (proc, sys, dev, a tmpfs on the root's /run
with the machine's /run/netns bound below it, the test's directories) goes
away with the command, so the cached root is never written to and nothing
is left mounted on the machine, whatever happens to the test.

Mounts go only onto the root's real directories (``/proc``, ``/sys``,
``/dev``, ``/run``, ``/tmp``), never through its ``/var/run`` symlink: from
outside the chroot that link points at the machine's own ``/run``.
"""

import os
import shlex
import subprocess

from cnitest import ROOT

# Debian release -> (suite, glibc, python3) of its minbase root
SUITES = {"11": ("bullseye", "2.31", "3.9"), "12": ("bookworm", "2.36", "3.11"),
          "13": ("trixie", "2.41", "3.13")}
TEST_PACKAGES = ("iproute2", "nftables", "iptables", "python3")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RootUnavailable(Exception):
    """debootstrap could not make the root (no network, no debootstrap)."""


def root(release, packages=TEST_PACKAGES):
    """Path of the cached minbase root of Debian ``release`` ("11", "12",
    "13") holding ``packages``; made on first use (a minute or two)."""
    suite = SUITES[release][0]
    p = subprocess.run([os.path.join(ROOT, "build.sh"), "root", suite] + list(packages),
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RootUnavailable("./build.sh root %s failed:\n%s" % (suite, p.stderr[-3000:]))
    return p.stdout.strip().splitlines()[-1]


class InRoot:
    """Commands chrooted into ``rootdir``.

    ``binds`` maps a directory of this machine to a path under /tmp inside
    the root (the root's /tmp is a fresh tmpfs per command), e.g.
    ``{"/work/dist/py": "/tmp/cni/bin"}``; read-only unless listed in
    ``writable``.
    """

    def __init__(self, rootdir, binds=None, writable=()):
        self.root = rootdir
        self.binds = dict(binds or {})
        self.writable = set(writable)
        for inside in self.binds.values():
            if not inside.startswith("/tmp/") or ".." in inside.split("/"):
                raise ValueError("binds go under /tmp inside the root, not %r" % inside)

    def script(self, argv, env):
        r = shlex.quote(self.root)
        lines = [
            "set -e",
            "mount --make-rprivate /",
            "mount -t proc proc %s/proc" % r,
            "mount --rbind /sys %s/sys" % r,
            "mount -t tmpfs -o mode=755 tmpfs %s/dev" % r,
        ]
        for dev in ("null", "zero", "full", "random", "urandom", "tty"):
            lines.append("touch %s/dev/%s && mount --bind /dev/%s %s/dev/%s" % (r, dev, dev, r, dev))
        lines += [
            "ln -s /proc/self/fd %s/dev/fd" % r,
            "mkdir -p %s/dev/shm %s/dev/pts" % (r, r),
            "mount -t tmpfs -o mode=755 tmpfs %s/run" % r,
            "mkdir -p %s/run/netns %s/run/lock" % (r, r),
            "mount --rbind /run/netns %s/run/netns" % r,
            "mount -t tmpfs -o mode=1777 tmpfs %s/tmp" % r,
        ]
        for src, inside in sorted(self.binds.items(), key=lambda kv: kv[1]):
            dst = shlex.quote(self.root + inside)
            lines.append("mkdir -p %s" % dst)
            lines.append("mount --bind %s %s" % (shlex.quote(src), dst))
            if src not in self.writable:
                lines.append("mount -o remount,bind,ro %s" % dst)
        envs = " ".join(shlex.quote("%s=%s" % kv) for kv in sorted(env.items()))
        lines.append("exec chroot %s /usr/bin/env -i %s %s"
                     % (r, envs, " ".join(shlex.quote(str(a)) for a in argv)))
        return "\n".join(lines)

    def run(self, *argv, netns=None, env=None, input=None, timeout=120, check=False):
        """Run ``argv`` in the root (in sandbox ``netns`` if given); text I/O
        unless ``input`` is bytes."""
        full_env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
        full_env.update(env or {})
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               self.script(argv, full_env)]
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        text = not isinstance(input, (bytes, bytearray))
        return subprocess.run(cmd, input=input, capture_output=True, text=text,
                              timeout=timeout, check=check)
