"""cnilib.cni.schemacheck against pydantic-core, on inputs generated from each schema.

The plugins evaluate the compiled schemas in pure Python; pydantic-core is
the reference.  For every schema, hypothesis builds values that follow the
schema and then mutates parts of them (wrong types, out-of-range numbers,
missing keys, extra keys); both validators must agree on validity, on the
validated output, and on where and why a value is wrong.
"""

import pytest
from cnitest import pydantic_why
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnilib.cni import schemacheck
from cnilib.cni._schemas import SCHEMAS

pydantic_core = pytest.importorskip("pydantic_core", reason=pydantic_why("pydantic_core"))

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 70000),
                         st.floats(-5, 5, allow_nan=False), st.text(max_size=6))
JSON = st.recursive(JSON_SCALARS, lambda c: st.one_of(st.lists(c, max_size=3),
                                                      st.dictionaries(st.text(max_size=4), c, max_size=3)),
                    max_leaves=6)


def value_for(node, draw, depth=0):
    """A value that mostly follows ``node``, sometimes deliberately not."""
    if depth > 6 or draw(st.integers(0, 9)) == 0:
        return draw(JSON)                   # anything at all
    t = node["type"]
    if t == "typed-dict":
        out = {}
        for key, f in node["fields"].items():
            if draw(st.integers(0, 4)) == 0:
                continue                    # leave the key out
            out[key] = value_for(f["schema"], draw, depth + 1)
        if draw(st.integers(0, 5)) == 0:
            out[draw(st.text(min_size=1, max_size=5))] = draw(JSON)
        return out
    if t in ("default", "nullable"):
        if t == "nullable" and draw(st.integers(0, 3)) == 0:
            return None
        return value_for(node["schema"], draw, depth + 1)
    if t == "str":
        lo, hi = node.get("min_length") or 0, node.get("max_length") or 20
        return draw(st.text(alphabet="abcXYZ019-_.", min_size=max(0, lo - 1), max_size=hi + 1))
    if t in ("int", "float"):
        lo, hi = node.get("ge", -3), node.get("le", 70000)
        v = draw(st.integers(int(lo) - 2, int(hi) + 2))
        return float(v) if t == "float" and draw(st.booleans()) else v
    if t == "bool":
        return draw(st.booleans())
    if t == "list":
        n = draw(st.integers(0, (node.get("max_length") or 3) + 1))
        items = node.get("items_schema") or {"type": "any"}
        return [value_for(items, draw, depth + 1) for _ in range(n)]
    if t == "dict":
        vs = node.get("values_schema") or {"type": "any"}
        return {draw(st.text(max_size=4)): value_for(vs, draw, depth + 1)
                for _ in range(draw(st.integers(0, 2)))}
    if t == "literal":
        return draw(st.sampled_from(list(node["expected"]) + ["nope", 3]))
    if t == "union":
        return value_for(draw(st.sampled_from(node["choices"])), draw, depth + 1)
    return draw(JSON)


def _has_union(node):
    if isinstance(node, dict):
        return node.get("type") == "union" or any(_has_union(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_union(v) for v in node)
    return False


_REFS = {}


def _ref(name):
    if name not in _REFS:
        _REFS[name] = pydantic_core.SchemaValidator(SCHEMAS[name])
    return _REFS[name]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_agrees_with_pydantic_core(name, data):
    node = SCHEMAS[name]
    value = value_for(node, data.draw)
    ref = _ref(name)
    try:
        want = ref.validate_python(value, strict=True)
        want_err = None
    except pydantic_core.ValidationError as exc:
        want, want_err = None, exc.errors()
    try:
        got = schemacheck.validate(node, value)
        got_err = None
    except schemacheck.Invalid as exc:
        got, got_err = None, exc.errors()
    assert (want_err is None) == (got_err is None), (value, want_err, got_err)
    if want_err is None:
        assert got == want
    elif not _has_union(node):
        key = lambda e: (tuple(str(p) for p in e["loc"]), e["type"])  # noqa: E731
        assert sorted(map(key, got_err)) == sorted(map(key, want_err)), value
        msgs = {key(e): e["msg"] for e in want_err}
        for e in got_err:
            assert e["msg"] == msgs[key(e)]


def test_defaults_are_copies():
    node = {"type": "typed-dict", "extra_behavior": "allow", "fields": {
        "l": {"type": "typed-dict-field", "required": False,
              "schema": {"type": "default", "default": [], "copy_default": True,
                         "schema": {"type": "list", "items_schema": {"type": "int"}}}}}}
    a = schemacheck.validate(node, {})
    a["l"].append(1)
    assert schemacheck.validate(node, {}) == {"l": []}


def test_unknown_node_type_is_a_bug_not_a_pass():
    with pytest.raises(TypeError):
        schemacheck.validate({"type": "uuid"}, "x")
