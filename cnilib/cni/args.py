"""CNI_ARGS, capability arguments and args.cni: the runtime's extra inputs.

CNI_ARGS is ``K=V;K2=V2``.  Parsing is lenient where Go is merely strict
(a trailing ``;`` is fine, a value may contain ``=``) and strict where it
matters: a pair without ``=`` or with an empty key is an error, and keys a
plugin does not know are refused unless ``IgnoreUnknown`` is true, as the
Go plugins do.  The K8S_POD_* keys every CRI runtime sends are always known.
"""

from cnilib.base import errors

ALWAYS_KNOWN = frozenset((
    "IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID",
))

MAX_CNI_ARGS = 64 * 1024


def parse_cni_args(raw, known=()):
    """Return {key: value} for CNI_ARGS; raise InvalidEnvironment on garbage.

    ``known=None`` checks the syntax only (skel does that for every plugin).
    """
    if not raw:
        return {}
    if len(raw) > MAX_CNI_ARGS:
        raise errors.InvalidEnvironment(
            "CNI_ARGS is %d bytes long, expected at most %d" % (len(raw), MAX_CNI_ARGS))
    if "\x00" in raw:
        raise errors.InvalidEnvironment("CNI_ARGS contains a NUL byte",
                                        "expected K=V pairs separated by ';'")
    out = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidEnvironment(
                "CNI_ARGS has an invalid pair %r" % pair[:80],
                "expected K=V pairs separated by ';', found %r" % raw[:200])
        out[key] = value
    ignore = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    if not ignore and known is not None:
        unknown = [k for k in out if k not in ALWAYS_KNOWN and k not in known]
        if unknown:
            raise errors.InvalidEnvironment(
                "CNI_ARGS has unknown keys %s" % ", ".join(sorted(unknown)),
                "this plugin knows %s; add IgnoreUnknown=1 to pass other keys"
                % ", ".join(sorted(set(known) | ALWAYS_KNOWN)))
    return out


def get_ci(mapping, key, default=None):
    """Case-insensitive dict lookup (containerd sends HostPort, podman hostPort)."""
    if not isinstance(mapping, dict):
        return default
    if key in mapping:
        return mapping[key]
    low = key.lower()
    for k, v in mapping.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return default


def normalize_keys(mapping, names):
    """Copy ``mapping`` with keys matching ``names`` case-insensitively renamed
    to their canonical spelling; other keys are kept as they are."""
    canon = {n.lower(): n for n in names}
    out = {}
    for k, v in mapping.items():
        out[canon.get(k.lower(), k) if isinstance(k, str) else k] = v
    return out


def runtime_config(conf, key):
    """A capability argument from conf["runtimeConfig"], matched case-insensitively."""
    return get_ci(conf.get("runtimeConfig"), key)


def cni_args_block(conf):
    """conf["args"]["cni"] or {} (the args convention)."""
    a = conf.get("args")
    if isinstance(a, dict):
        c = a.get("cni")
        if isinstance(c, dict):
            return c
    return {}


VALID_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def valid_attachments(conf):
    """GC's live attachments as {(containerID, ifname)}, from
    cni.dev/valid-attachments (or the older cni.dev/attachments); None when
    the config has neither (then GC frees nothing), an empty set for null
    or [].  A malformed list is a CNI error: GC must never guess."""
    for key in VALID_KEYS:
        if key not in conf:
            continue
        items = conf[key]
        if items is None:
            return set()
        if not isinstance(items, list):
            raise errors.InvalidConfig("%s is a JSON %s, expected a list" % (key, type(items).__name__),
                                       "expected [{\"containerID\": ..., \"ifname\": ...}, ...] or null")
        out = set()
        for i, item in enumerate(items):
            cid = item.get("containerID") if isinstance(item, dict) else None
            ifname = item.get("ifname") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not cid or not isinstance(ifname, str) or not ifname:
                raise errors.InvalidConfig(
                    "%s[%d] is not an attachment" % (key, i),
                    "expected {\"containerID\": \"...\", \"ifname\": \"...\"}; nothing was released")
            out.add((cid.strip(), ifname))
        return out
    return None
