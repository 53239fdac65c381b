"""sysctls of the *current* network namespace (/proc/sys/net follows the
calling thread's netns; enter the container's netns first for its values).

Names use '/' separators so interface names keep their dots
(net/ipv4/conf/br0.100/forwarding); a name is checked before it becomes a
path.
"""

import os

from cnilib.base import errors


def _path(name):
    if (not name or name.startswith("/") or "\x00" in name
            or any(p in ("", ".", "..") for p in name.split("/"))):
        raise errors.InvalidConfig("sysctl name %r is not valid" % name,
                                   "expected a path under /proc/sys such as net/ipv4/ip_forward")
    return "/proc/sys/" + name


def read(name, default=None):
    try:
        with open(_path(name)) as f:
            return f.read().strip()
    except (FileNotFoundError, PermissionError):
        return default


def write(name, value, only_if_different=True):
    """Write ``value``; skip the write when it already holds it."""
    path = _path(name)
    value = str(value)
    if only_if_different:
        try:
            with open(path) as f:
                if f.read().strip() == value:
                    return False
        except FileNotFoundError:
            pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise errors.Internal("sysctl %s does not exist in this network namespace" % name,
                              "the kernel lacks the feature or the interface is gone") from exc
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise errors.Internal("cannot set sysctl %s=%s: %s" % (name, value, exc.strerror)) from exc
    finally:
        os.close(fd)
    return True
