"""Running commands inside a Debian root made by ``./build.sh root``.

``InRoot(rootdir).run(argv, netns=...)`` runs a command chrooted into the
root, inside a sandbox network namespace when given one, in a private mount
namespace of its own: every mount it makes (proc, sys, dev, a tmpfs on the
root's /run with the machine's /run/netns bound below it, a tmpfs /tmp, the
caller's directories) goes away with the command, so nothing stays mounted
on the machine whatever happens to the caller.  The root itself is bound
read-only onto itself first: a cached root shared by every clone on the
machine is never written (``readonly=False`` only while ./build.sh
provisions a root it is making).

Mounts go only onto the root's real directories (``/proc``, ``/sys``,
``/dev``, ``/run``, ``/tmp``), never through its ``/var/run`` symlink: from
outside the chroot that link points at the machine's own ``/run``.

Also a command line, for build.sh:

    python3 -m tools.roots run ROOT [--bind SRC:DST] [--bind-rw SRC:DST]
                           [--rw-root] [--netns NS] [--cwd DIR] [--env K=V] -- CMD...
"""

import os
import shlex
import subprocess
import sys

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Debian release -> (suite, glibc, python3) of its minbase root
SUITES = {"11": ("bullseye", "2.31", "3.9"), "12": ("bookworm", "2.36", "3.11"),
          "13": ("trixie", "2.41", "3.13")}
TEST_PACKAGES = ("iproute2", "nftables", "iptables", "python3")


class RootUnavailable(Exception):
    """debootstrap could not make the root (no network, no debootstrap)."""


def root(release, packages=TEST_PACKAGES):
    """Path of the cached minbase root of Debian ``release`` ("11", "12",
    "13") holding ``packages``; made on first use (a minute or two) by
    ``./build.sh root``, cached in /var/cache/pycni-roots for every clone."""
    suite = SUITES[release][0]
    p = subprocess.run([os.path.join(TOP, "build.sh"), "root", suite] + list(packages),
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RootUnavailable("./build.sh root %s failed:\n%s" % (suite, p.stderr[-3000:]))
    return p.stdout.strip().splitlines()[-1]


class InRoot:
    """Commands chrooted into ``rootdir``.

    ``binds`` maps a directory of this machine to a path under /tmp inside
    the root (the root's /tmp is a fresh tmpfs per command), e.g.
    ``{"/work/dist/py": "/tmp/cni/bin"}``; read-only unless its source is
    listed in ``writable``.  A bind may sit below another one (the outer is
    mounted first).
    """

    def __init__(self, rootdir, binds=None, writable=(), readonly=True):
        self.root = os.path.realpath(rootdir)
        if not os.path.isfile(os.path.join(self.root, "usr", "bin", "env")):
            raise ValueError("%s is not a root (no /usr/bin/env)" % rootdir)
        self.binds = dict(binds or {})
        self.writable = set(writable)
        self.readonly = readonly
        for src, inside in self.binds.items():
            if not inside.startswith("/tmp/") or ".." in inside.split("/"):
                raise ValueError("binds go under /tmp inside the root, not %r" % inside)
            if not os.path.isdir(src):
                raise ValueError("bind source %r is not a directory" % src)

    def script(self, argv, env, cwd=None):
        """The sh script that mounts, then execs ``argv`` chrooted."""
        r = shlex.quote(self.root)
        lines = ["set -e", "mount --make-rprivate /"]
        if self.readonly:
            lines += ["mount --bind %s %s" % (r, r), "mount -o remount,bind,ro %s" % r]
        lines += [
            "mount -t proc proc %s/proc" % r,
            "mount --rbind /sys %s/sys" % r,
            "mount -t tmpfs -o mode=755 tmpfs %s/dev" % r,
        ]
        for dev in DEVICES:
            lines.append("touch %s/dev/%s && mount --bind /dev/%s %s/dev/%s" % (r, dev, dev, r, dev))
        lines += [
            "ln -s /proc/self/fd %s/dev/fd" % r,
            # as on a real /dev: nft < 1.0 reads `-f -` by opening /dev/stdin
            "ln -s /proc/self/fd/0 %s/dev/stdin" % r,
            "ln -s /proc/self/fd/1 %s/dev/stdout" % r,
            "ln -s /proc/self/fd/2 %s/dev/stderr" % r,
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
        chdir = "-C %s " % shlex.quote(cwd) if cwd else ""
        lines.append("exec chroot %s /usr/bin/env -i %s%s %s"
                     % (r, chdir, envs, " ".join(shlex.quote(str(a)) for a in argv)))
        return "\n".join(lines)

    def argv(self, *argv, netns=None, env=None, cwd=None):
        """The command line that runs ``argv`` in the root (for Popen)."""
        full_env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
        full_env.update(env or {})
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               self.script(argv, full_env, cwd)]
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        return cmd

    def run(self, *argv, netns=None, env=None, input=None, timeout=120, check=False, cwd=None):
        """Run ``argv`` in the root (in sandbox ``netns`` if given); text I/O
        unless ``input`` is bytes."""
        text = not isinstance(input, (bytes, bytearray))
        return subprocess.run(self.argv(*argv, netns=netns, env=env, cwd=cwd), input=input,
                              capture_output=True, text=text, timeout=timeout, check=check)


def _bind(spec):
    src, sep, dst = spec.rpartition(":")
    if not sep or not src:
        raise SystemExit("--bind wants SRC:DST, not %r" % spec)
    return os.path.realpath(src), dst


def main(argv):
    import argparse
    p = argparse.ArgumentParser(prog="python3 -m tools.roots")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a command chrooted into a root")
    r.add_argument("root")
    r.add_argument("--bind", action="append", default=[], metavar="SRC:DST", help="read-only bind")
    r.add_argument("--bind-rw", action="append", default=[], metavar="SRC:DST", help="writable bind")
    r.add_argument("--rw-root", action="store_true", help="leave the root writable (provisioning)")
    r.add_argument("--netns", help="a network namespace to run in")
    r.add_argument("--cwd", help="working directory inside the root")
    r.add_argument("--env", action="append", default=[], metavar="K=V")
    r.add_argument("command", nargs="+")
    a = p.parse_args(argv)
    binds, writable = {}, set()
    for spec in a.bind + a.bind_rw:
        src, dst = _bind(spec)
        binds[src] = dst
        if spec in a.bind_rw:
            writable.add(src)
    env = dict(kv.split("=", 1) for kv in a.env)
    ir = InRoot(a.root, binds, writable, readonly=not a.rw_root)
    cmd = ir.argv(*a.command, netns=a.netns, env=env, cwd=a.cwd)
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
