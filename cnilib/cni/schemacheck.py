"""Validate data against the compiled schemas in pure Python.

cnilib/cni/_schemas.py holds the pydantic models of cnilib/cni/schema/ compiled to
plain pydantic-core schema data.  Loading pydantic-core's extension to run
them costs ~8 ms per exec (it imports re, enum, datetime and typing), which
is a third of a plugin's budget, so the plugins evaluate that data here
instead: the few node types the models compile to, with pydantic's strict
semantics and its error types and messages.  tests/unit/test_schemacheck.py
holds this evaluator to pydantic-core's answers on generated inputs, so the
models stay the one source of truth.

Supported nodes: typed-dict(-field), default, nullable, str, int, float,
bool, list, dict, literal, any, union.  The schema compiler refuses models
that need anything else.
"""


class Invalid(Exception):
    """Validation failed; ``errors`` is a list of pydantic-style dicts
    {type, loc, msg, input}."""

    def __init__(self, errors):
        super().__init__(errors[0]["msg"] if errors else "invalid")
        self._errors = errors

    def errors(self):
        return self._errors


_MISSING = object()


def _err(errs, typ, loc, msg, value):
    errs.append({"type": typ, "loc": loc, "msg": msg, "input": value})


def _plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def _repr_literal(v):
    if isinstance(v, str):
        return "'%s'" % v
    return str(v)


def _literal_msg(expected):
    parts = [_repr_literal(e) for e in expected]
    if len(parts) == 1:
        return "Input should be " + parts[0]
    return "Input should be %s or %s" % (", ".join(parts[:-1]), parts[-1])


def _bounds(node, value, loc, errs):
    for key, typ, word in (("ge", "greater_than_equal", "greater than or equal to"),
                           ("gt", "greater_than", "greater than"),
                           ("le", "less_than_equal", "less than or equal to"),
                           ("lt", "less_than", "less than")):
        lim = node.get(key)
        if lim is None:
            continue
        ok = {"ge": value >= lim, "gt": value > lim, "le": value <= lim, "lt": value < lim}[key]
        if not ok:
            _err(errs, typ, loc, "Input should be %s %s" % (word, lim), value)
            return False
    return True


def _copy(v):
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _check(node, value, loc, errs):
    """Return the validated value, or _MISSING after appending errors."""
    t = node["type"]
    if t == "typed-dict":
        if not isinstance(value, dict):
            _err(errs, "dict_type", loc, "Input should be a valid dictionary", value)
            return _MISSING
        out = {}
        before = len(errs)
        fields = node["fields"]
        for key, field in fields.items():
            sub = field["schema"]
            if key in value:
                got = _check(sub, value[key], loc + (key,), errs)
                if got is not _MISSING:
                    out[key] = got
            elif sub["type"] == "default":
                out[key] = _copy(sub["default"])
            elif field.get("required", True):
                _err(errs, "missing", loc + (key,), "Field required", value)
        extra = node.get("extra_behavior", "ignore")
        for key, v in value.items():
            if key in fields:
                continue
            if extra == "allow":
                out[key] = v
            elif extra == "forbid":
                _err(errs, "extra_forbidden", loc + (key,), "Extra inputs are not permitted", v)
        return out if len(errs) == before else _MISSING
    if t == "default":
        return _check(node["schema"], value, loc, errs)
    if t == "nullable":
        if value is None:
            return None
        return _check(node["schema"], value, loc, errs)
    if t == "str":
        if not isinstance(value, str):
            _err(errs, "string_type", loc, "Input should be a valid string", value)
            return _MISSING
        n = len(value)
        lo, hi = node.get("min_length"), node.get("max_length")
        if lo is not None and n < lo:
            _err(errs, "string_too_short", loc,
                 "String should have at least %s" % _plural(lo, "character"), value)
            return _MISSING
        if hi is not None and n > hi:
            _err(errs, "string_too_long", loc,
                 "String should have at most %s" % _plural(hi, "character"), value)
            return _MISSING
        pat = node.get("pattern")
        if pat is not None:
            import re  # only for configs that carry a patterned key
            if re.search(pat, value) is None:
                _err(errs, "string_pattern_mismatch", loc,
                     "String should match pattern '%s'" % pat, value)
                return _MISSING
        return value
    if t == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            _err(errs, "int_type", loc, "Input should be a valid integer", value)
            return _MISSING
        return value if _bounds(node, value, loc, errs) else _MISSING
    if t == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            _err(errs, "float_type", loc, "Input should be a valid number", value)
            return _MISSING
        if value != value or value in (float("inf"), float("-inf")):
            _err(errs, "finite_number", loc, "Input should be a finite number", value)
            return _MISSING
        return value if _bounds(node, value, loc, errs) else _MISSING
    if t == "bool":
        if not isinstance(value, bool):
            _err(errs, "bool_type", loc, "Input should be a valid boolean", value)
            return _MISSING
        return value
    if t == "list":
        if not isinstance(value, list):
            _err(errs, "list_type", loc, "Input should be a valid list", value)
            return _MISSING
        lo, hi = node.get("min_length"), node.get("max_length")
        if hi is not None and len(value) > hi:   # pydantic-core checks this first
            _err(errs, "too_long", loc, "List should have at most %s after validation, not %d"
                 % (_plural(hi, "item"), len(value)), value)
            return _MISSING
        items = node.get("items_schema")
        out = []
        before = len(errs)
        for i, v in enumerate(value):
            got = _check(items, v, loc + (i,), errs) if items is not None else v
            out.append(got)
        if len(errs) != before:
            return _MISSING
        if lo is not None and len(out) < lo:
            _err(errs, "too_short", loc, "List should have at least %s after validation, not %d"
                 % (_plural(lo, "item"), len(out)), value)
            return _MISSING
        return out
    if t == "dict":
        if not isinstance(value, dict):
            _err(errs, "dict_type", loc, "Input should be a valid dictionary", value)
            return _MISSING
        ks, vs = node.get("keys_schema"), node.get("values_schema")
        out = {}
        before = len(errs)
        for k, v in value.items():
            kk = _check(ks, k, loc + (k, "[key]"), errs) if ks is not None else k
            vv = _check(vs, v, loc + (k,), errs) if vs is not None else v
            out[kk] = vv
        return out if len(errs) == before else _MISSING
    if t == "literal":
        for e in node["expected"]:
            if value == e and type(value) is type(e):
                return value
        _err(errs, "literal_error", loc, _literal_msg(node["expected"]), value)
        return _MISSING
    if t == "any":
        return value
    if t == "union":
        tried = []
        for choice in node["choices"]:
            sub = []
            got = _check(choice, value, loc, sub)
            if got is not _MISSING:
                return got
            tried.extend(sub)
        errs.extend(tried)
        return _MISSING
    raise TypeError("schema node type %r is not supported by cnilib.cni.schemacheck" % t)


def validate(schema, value):
    """Validated copy of ``value`` (defaults filled), or raise Invalid."""
    errs = []
    out = _check(schema, value, (), errs)
    if errs or out is _MISSING:
        raise Invalid(errs)
    return out
