"""Versions: the suite's own, the spec versions it supports, which verb
each version allows, and the two ways a version string is read.

``vtuple`` is the plugins' reader and strict: a config's cniVersion must be
a.b.c.  ``libcni_vtuple`` is libcni's ParseVersion, which the runner
(``pycni add`` ...) follows because runtimes do: "" is 0.1.0 and one to
three numbers are a version ("1" is 1.0.0).
"""

from cnilib.base import errors

SUITE_VERSION = "0.1.0"     # pyproject.toml reads it from here
SUPPORTED = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"           # the highest of them: plugins and the runner (libcni's Current())

# verb -> lowest config cniVersion that allows it (spec 1.1 section 2)
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


def vtuple(v):
    """'1.0.0' -> (1, 0, 0); None for anything that is not a.b.c."""
    if not isinstance(v, str):
        return None
    parts = v.split(".")
    if len(parts) != 3:
        return None
    out = []
    for p in parts:
        if not p.isdigit() or not p.isascii():
            return None
        out.append(int(p))
    return tuple(out)


def family(v):
    """The result family of a version: '02x', '04x' or '1x'."""
    t = vtuple(v)
    if t is None:
        raise errors.IncompatibleVersion(
            "unsupported CNI version %r" % (v,),
            "expected one of %s" % ", ".join(SUPPORTED))
    if t < (0, 3, 0):
        return "02x"
    if t < (1, 0, 0):
        return "04x"
    if t < (2, 0, 0):
        return "1x"
    raise errors.IncompatibleVersion(
        "unsupported CNI version %r" % (v,),
        "expected one of %s" % ", ".join(SUPPORTED))


def check_supported(v, what="config"):
    if v not in SUPPORTED:
        raise errors.IncompatibleVersion(
            "incompatible CNI versions: %s is %r, plugin supports %s"
            % (what, v, ", ".join(SUPPORTED)),
            "supportedVersions: [%s]" % ", ".join('"%s"' % s for s in SUPPORTED))


def check_verb(command, conf_version):
    low = MIN_VERSION.get(command)
    if low and vtuple(conf_version) < vtuple(low):
        raise errors.IncompatibleVersion(
            "config version %s does not allow %s" % (conf_version, command),
            "%s needs cniVersion %s or later" % (command, low))


def highest(versions):
    """Highest supported version among ``versions`` (strings), or None."""
    best = None
    for v in versions:
        if v in SUPPORTED and (best is None or vtuple(v) > vtuple(best)):
            best = v
    return best


def libcni_vtuple(v, what="cniVersion"):
    """libcni's ParseVersion: '' is 0.1.0; one to three dot-separated
    integers, the missing ones 0; anything else IncompatibleVersion."""
    if v == "":
        return (0, 1, 0)
    parts = v.split(".") if isinstance(v, str) else None
    if not parts or len(parts) > 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise errors.IncompatibleVersion("%s %r is not a version" % (what, v),
                                         "expected a version such as \"1.0.0\"")
    nums = [int(p) for p in parts] + [0, 0]
    return tuple(nums[:3])


def libcni_ge(v, other):
    """``v`` >= ``other`` read as libcni reads versions (libcni_vtuple)."""
    return libcni_vtuple(v) >= libcni_vtuple(other)
