"""Run-time validation against the compiled schemas (see cnilib.cni.schema).

The models in cnilib/cni/schema/ are compiled at build time into plain data
(cnilib/cni/_schemas.py) and evaluated here by cnilib.cni.schemacheck: pure
Python, no pydantic or pydantic-core import on a plugin's exec path.
"""

from cnilib.base import errors


def schema(name):
    from cnilib.cni._schemas import SCHEMAS
    return SCHEMAS[name]


def _where(loc):
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += "[%d]" % part
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _shown(value):
    try:
        from cnilib.base import jsonio
        text = jsonio.dumps(value)
    except Exception:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(exc, what):
    """(msg, details): the first problem in the message, every other one in
    the details, each once.  libcni shows an error as "msg; details", so
    details that repeated the message showed a single problem twice."""
    problems = []
    for err in exc.errors():
        loc = _where(err.get("loc", ()))
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            problems.append("key %s is required" % loc)
        else:
            problems.append("key %s: %s, found %s"
                            % (loc, msg[0].lower() + msg[1:], _shown(err.get("input"))))
    first, rest = problems[0], problems[1:]
    if not rest:
        return "invalid %s: %s" % (what, first), ""
    return ("invalid %s: %s (and %d more)" % (what, first, len(rest)),
            "also " + "; ".join(rest))


def validate(name, data, what=None, error=errors.InvalidConfig):
    """Validate ``data`` against schema ``name``; return it with defaults filled.

    Raises ``error`` (InvalidConfig, code 7, by default) naming every key
    that is wrong.
    """
    from cnilib.cni import schemacheck
    try:
        return schemacheck.validate(schema(name), data)
    except schemacheck.Invalid as exc:
        msg, details = describe(exc, what or ("%s network config" % name))
        raise error(msg, details) from exc


def validate_for_del(name, data, log):
    """For DEL, which must not fail on a config ADD would refuse: validate
    ``data`` against schema ``name``, leaving out every top-level key whose
    value does not validate (its default takes its place), and log each key
    left out.  Returns (the validated config, ``data`` without those keys);
    raises InvalidConfig only when a required key is missing."""
    from cnilib.cni import schemacheck
    data = dict(data)
    while True:
        try:
            return schemacheck.validate(schema(name), data), data
        except schemacheck.Invalid as exc:
            msg, details = describe(exc, "%s network config" % name)
            bad = {e["loc"][0] for e in exc.errors() if e.get("loc") and e["loc"][0] in data}
            if not bad:
                raise errors.InvalidConfig(msg, details) from exc
            log.warning("DEL leaves out %s: %s%s", ", ".join(sorted(map(str, bad))), msg,
                        "; " + details if details else "")
            for k in bad:
                del data[k]
