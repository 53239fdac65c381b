"""Spec versions: what the suite supports and which verb each version allows."""

from cnilib.base import errors

SUPPORTED = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"

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
