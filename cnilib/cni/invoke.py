"""Delegation: run another CNI plugin found on CNI_PATH (bridge -> IPAM,
flannel -> bridge), and read results of any version.

A delegate is exec'd with the caller's environment and only CNI_COMMAND
overridden, as libcni's invoke package does.  When the file found on
CNI_PATH is this suite itself (a dist/py launcher or a bundle symlink), the
delegate runs in-process through the same skel checks instead: same
semantics, same files, one process start fewer.
"""

import os
import sys

from cnilib.base import errors, jsonio
from cnilib.cni import version
from cnilib.cni.types import Result

LAUNCHER_MARK = b"pycni-launcher"


def parse_result(data, default_version, what="result"):
    """A result dict of any supported version -> Result (1.1 model)."""
    if not isinstance(data, dict):
        raise errors.DecodingFailure("%s is a JSON %s, expected an object"
                                     % (what, type(data).__name__))
    v = data.get("cniVersion") or default_version
    if v not in version.SUPPORTED:
        raise errors.IncompatibleVersion(
            "%s has cniVersion %r, expected one of %s" % (what, v, ", ".join(version.SUPPORTED)))
    from cnilib.cni import validate
    schema = "result02" if version.family(v) == "02x" else "result"
    validate.validate(schema, data, what=what, error=errors.DecodingFailure)
    res = Result.parse(data, v)
    check_addresses(res, what)
    return res


def check_addresses(res, what):
    """Every address, gateway and route of a parsed result is an IP or a
    CIDR, as Go's types unmarshal them (DNS nameservers are strings there,
    and may carry a zone).  Without this a chained plugin read
    ``"address": "banana"`` as a result without an address and did
    nothing, successfully: portmap mapped no port and exited 0.  Every
    prevResult, and every delegate's result, is parsed here."""
    from cnilib.base import addr

    def bad(where, value, want):
        return errors.DecodingFailure(
            "%s.%s %s is not %s" % (what, where, _shown(value), want),
            "a result's addresses are CIDRs (10.1.2.3/24) and its gateways IPs (10.1.2.1)")
    for i, ip in enumerate(res.ips):
        if addr.parse_cidr(ip["address"]) is None:
            raise bad("ips[%d].address" % i, ip["address"], "an address with a prefix length")
        if ip.get("gateway") and addr.parse(ip["gateway"]) is None:
            raise bad("ips[%d].gateway" % i, ip["gateway"], "an IP address")
    for i, r in enumerate(res.routes):
        if addr.parse_cidr(r["dst"]) is None:
            raise bad("routes[%d].dst" % i, r["dst"], "a CIDR")
        if r.get("gw") and addr.parse(r["gw"]) is None:
            raise bad("routes[%d].gw" % i, r["gw"], "an IP address")


def _shown(value):
    from cnilib.base.text import printable
    return '"%s"' % printable(str(value)[:80])


def check_type_name(name, what="plugin type"):
    if (not isinstance(name, str) or not name or "/" in name or "\x00" in name
            or name in (".", "..") or len(name) > 128):
        raise errors.InvalidConfig(
            "%s %r is not a plain plugin name" % (what, name),
            "expected a file name such as \"host-local\", without '/' or '..'")


def find(name, path):
    """Path of plugin ``name`` on the CNI_PATH dirs ``path`` (first wins)."""
    check_type_name(name)
    if not path:
        raise errors.InvalidEnvironment(
            "CNI_PATH is empty, cannot find plugin %r" % name,
            "set CNI_PATH to the plugin directories (e.g. /opt/cni/bin)")
    for d in path:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    raise errors.Internal("failed to find plugin %r in path [%s]" % (name, " ".join(path)),
                          "install it there or fix CNI_PATH")


def _is_suite(path):
    """True when ``path`` is one of this suite's commands."""
    try:
        real = os.path.realpath(path)
        if getattr(sys, "frozen", False) and real == os.path.realpath(sys.executable):
            return True
        with open(real, "rb") as f:
            return LAUNCHER_MARK in f.read(256)
    except OSError:
        return False


def delegate(command, type_name, stdin_data, a, env_overrides=None):
    """Run ``type_name`` for ``command`` with the caller's env; return its Result
    (ADD) or None.  Its error comes back as a CniError with the code it sent."""
    exe = find(type_name, a.path)
    env = dict(a.env)
    env["CNI_COMMAND"] = command
    if env_overrides:
        env.update(env_overrides)
    if isinstance(stdin_data, str):
        stdin_data = stdin_data.encode()
    from cnilib.cni.registry import PLUGINS
    modname = PLUGINS.get(type_name)
    if modname is not None and os.environ.get("PYCNI_NO_INPROCESS") != "1" and _is_suite(exe):
        from cnilib.cni import skel
        mod = __import__(modname, fromlist=["PLUGIN"])
        a.log.debug("delegate %s %s in-process (%s)", command, type_name, exe)
        rc, out = skel.execute(mod.PLUGIN, env, stdin_data=stdin_data)
        err = b""
    else:
        from cnilib.base import proc
        a.log.debug("delegate %s %s: exec %s", command, type_name, exe)
        try:
            done = proc.run([exe], stdin=stdin_data, env=env)
        except OSError as exc:
            raise errors.Internal("cannot run delegate plugin %s: %s" % (exe, exc)) from exc
        rc, out, err = done.rc, done.out, done.err
        if err:
            try:
                os.write(2, err)
            except OSError:
                pass
    if rc != 0:
        try:
            e = jsonio.loads(out)
            code = e.get("code")
            msg = e.get("msg")
        except (ValueError, AttributeError):
            code = msg = None
        if isinstance(code, int) and isinstance(msg, str):
            raise errors.from_code(code, "%s %s: %s" % (type_name, command, msg), e.get("details") or "")
        text = (out or err).decode("utf-8", "replace").strip()[:500] or "no error message"
        raise errors.Internal("%s %s failed with exit status %d: %s" % (type_name, command, rc, text))
    if command != "ADD":
        return None
    try:
        data = jsonio.loads(out)
    except ValueError as exc:
        raise errors.DecodingFailure("%s ADD printed a result that is not JSON: %s"
                                     % (type_name, exc)) from None
    return parse_result(data, a.version, "result of %s" % type_name)
