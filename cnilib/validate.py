"""Run-time validation against the compiled schemas (see cnilib.schema).

pydantic_core's extension module is loaded through a package stub: its
``__init__`` pulls in typing_extensions and the schema helpers (~25 ms),
while the compiled validator alone costs ~2 ms.
"""

import os
import sys

from cnilib import errors

_validators = {}
_core = None


def _pydantic_core():
    global _core
    if _core is not None:
        return _core
    mod = sys.modules.get("pydantic_core")
    if mod is None or not hasattr(mod, "__path__"):
        for base in sys.path:
            pkg = os.path.join(base or ".", "pydantic_core")
            if os.path.isdir(pkg):
                import types
                mod = types.ModuleType("pydantic_core")
                mod.__path__ = [pkg]
                sys.modules["pydantic_core"] = mod
                break
        else:
            mod = None
    if mod is None and hasattr(sys, "_MEIPASS"):
        import types
        mod = types.ModuleType("pydantic_core")
        mod.__path__ = [os.path.join(sys._MEIPASS, "pydantic_core")]
        sys.modules["pydantic_core"] = mod
    from pydantic_core import _pydantic_core as core
    if mod is not None and sys.modules.get("pydantic_core") is mod and not hasattr(mod, "__version__"):
        # drop the stub: a later ``import pydantic`` (tests, build tools in the
        # same process) then runs the real __init__, which finds the already
        # loaded extension in sys.modules
        del sys.modules["pydantic_core"]
    _core = core
    return core


def validator(name):
    v = _validators.get(name)
    if v is None:
        from cnilib._schemas import SCHEMAS
        v = _pydantic_core().SchemaValidator(SCHEMAS[name])
        _validators[name] = v
    return v


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
        from cnilib import jsonio
        text = jsonio.dumps(value)
    except Exception:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(exc, what):
    """One line per problem: key path, what is wrong, what was found."""
    problems = []
    for err in exc.errors():
        loc = _where(err.get("loc", ()))
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            problems.append("key %s is required" % loc)
        else:
            problems.append("key %s: %s, found %s" % (loc, msg[0].lower() + msg[1:], _shown(err.get("input"))))
    first = problems[0]
    more = "" if len(problems) == 1 else " (and %d more)" % (len(problems) - 1)
    return "invalid %s: %s%s" % (what, first, more), "; ".join(problems)


def validate(name, data, what=None, error=errors.InvalidConfig):
    """Validate ``data`` against schema ``name``; return it with defaults filled.

    Raises ``error`` (InvalidConfig, code 7, by default) naming every key
    that is wrong.
    """
    core = _pydantic_core()
    try:
        return validator(name).validate_python(data, strict=True)
    except core.ValidationError as exc:
        msg, details = describe(exc, what or ("%s network config" % name))
        raise error(msg, details) from exc
