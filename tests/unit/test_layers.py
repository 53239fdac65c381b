"""The import rules of ARCHITECTURE.md, held over every module.

Every import counts, including those inside functions (the plugins import
lazily, on the verb's path): a rule broken only on a rare path is still
broken.
"""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _layer(mod):
    """cnilib.kernel.netlink -> 'kernel'; cnilib.flannel -> 'flannel';
    plugins.bridge -> 'plugins'."""
    parts = mod.split(".")
    if parts[0] == "plugins":
        return "plugins"
    if parts[0] != "cnilib":
        return None
    if len(parts) == 1:
        return "cnilib"
    return parts[1]


def _modules():
    out = {}
    for top in ("cnilib", "plugins"):
        for d, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(d, f)
                mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                if mod.endswith(".__init__"):
                    mod = mod[:-len(".__init__")]
                out[mod] = path
    return out


MODULES = _modules()


def _imports(path, mod):
    """Every module ``mod`` imports (absolute names), any depth in the file."""
    tree = ast.parse(open(path).read(), path)
    got = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            got.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".")[:-node.level] if not path.endswith("__init__.py") \
                    else mod.split(".")[:len(mod.split(".")) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                full = base + "." + a.name
                got.add(full if full in MODULES else base)
    return got


IMPORTS = {mod: _imports(path, mod) for mod, path in MODULES.items()}

# layer -> the layers it may import (besides itself)
ALLOWED = {
    "base": set(),
    "cni": {"base"},
    "kernel": {"base"},
    "ipam": {"base", "cni"},
    "firewall": {"base", "cni", "kernel"},
    "bridge": {"base", "cni", "kernel", "firewall"},
    "flannel": {"base", "cni", "kernel", "firewall"},
    "tuning": {"base", "cni", "kernel", "firewall"},
    "agent": {"base", "cni", "kernel"},
    "plugins": {"base", "cni", "kernel", "ipam", "firewall", "bridge", "flannel", "tuning"},
    "ops": {"base", "cni", "kernel", "ipam", "firewall", "bridge", "flannel", "tuning", "agent"},
    "main": {"cni", "base", "agent"},
    "cnilib": set(),
}
# the one crossing the table does not show: the skel opens CNI_NETNS
EXCEPTIONS = {("cnilib.cni.skel", "cnilib.kernel.netns")}


def test_every_module_has_a_layer():
    assert {_layer(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_follow_the_layers(mod):
    mine = _layer(mod)
    if mod.startswith("cnilib.cni.schema"):
        return      # build-time models: pydantic, nothing of the run time
    bad = []
    for imp in sorted(IMPORTS[mod]):
        theirs = _layer(imp)
        if theirs is None or theirs == mine or (mod, imp) in EXCEPTIONS:
            continue
        if theirs not in ALLOWED[mine]:
            bad.append(imp)
    assert not bad, "%s (layer %s) imports %s" % (mod, mine, ", ".join(bad))


def test_plugins_never_import_each_other():
    for mod, imps in IMPORTS.items():
        if mod.startswith("plugins."):
            assert not [i for i in imps if i.startswith("plugins")], mod


def test_only_main_reaches_ops_and_only_by_name():
    # the registry names cnilib.ops.cli as a string; main imports it at run time
    from cnilib.cni import registry
    assert set(registry.TOOLS.values()) == {"cnilib.ops.cli"}
    for mod, imps in IMPORTS.items():
        if _layer(mod) != "ops":
            assert not [i for i in imps if _layer(i) == "ops"], mod


DOCTOR = "cnilib.ops.doctor."
DOCTOR_SHARED = {DOCTOR + m for m in ("context", "report", "trace")}


def test_doctor_check_groups_never_import_each_other():
    # what two groups share goes to context or report (cnilib.ops.doctor's docstring)
    checks = {m for m in MODULES if m.startswith(DOCTOR) and m.endswith("_checks")}
    assert len(checks) >= 4, checks
    for mod in MODULES:
        if not mod.startswith(DOCTOR):
            continue
        inside = {i for i in IMPORTS[mod] if i.startswith(DOCTOR)}
        if mod in checks:
            assert inside <= DOCTOR_SHARED, "%s imports %s" % (mod, ", ".join(sorted(inside - DOCTOR_SHARED)))
        elif mod in DOCTOR_SHARED:
            assert not inside & checks and not inside - DOCTOR_SHARED, "%s imports %s" % (mod, inside)
        elif mod != DOCTOR + "main":
            assert not inside & checks, "%s imports %s" % (mod, inside & checks)
    outside = {m for m in MODULES if not m.startswith(DOCTOR) and m != DOCTOR[:-1]}
    for mod in outside:
        assert not [i for i in IMPORTS[mod] if i.startswith(DOCTOR[:-1])], \
            "%s imports doctor: readers belong in nodestate and the owners" % mod


PYROUTE2_IMPORT = re.compile(r"^\s*(from|import)\s+pyroute2\b|(__import__|import_module)\(\s*[\"']pyroute2",
                             re.M)


def test_only_the_kernel_layer_imports_pyroute2():
    # netlink.py imports it by name, on demand (a package stub skips its __init__)
    users = {m for m, path in MODULES.items() if PYROUTE2_IMPORT.search(open(path).read())}
    assert users == {"cnilib.kernel.netlink"}


def test_packages_are_docstrings_only():
    # importing a package must cost nothing: a verb pays for what it uses
    for mod, path in MODULES.items():
        if not path.endswith("__init__.py") or mod.startswith("cnilib.cni.schema"):
            continue
        body = ast.parse(open(path).read()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), mod


def _reachable(roots):
    """Every cnilib module ``roots`` import, directly or through others, at
    any depth in each file (a function-level import counts)."""
    seen, todo = set(), list(roots)
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in IMPORTS:
            continue
        seen.add(mod)
        todo.extend(i for i in IMPORTS[mod] if i.startswith("cnilib."))
    return seen


def test_agent_preload_covers_what_a_verb_can_import():
    """agent.server.PRELOAD held to the package walk: each module a plugin
    can reach is loaded before a worker forks, so no worker imports per
    request, nor from the caller's mount namespace (where another copy of
    the code may be installed).  A module that a rename or a split left out
    of the list shows up here, not as a log line of the agent."""
    import subprocess
    import sys
    plugins = [m for m in MODULES if m.startswith("plugins.")]
    want = {m for m in _reachable(plugins) if _layer(m) not in ("ops", "agent")} - {"cnilib.main"}
    # the child sees this interpreter's path (-I drops PYTHONPATH, which is
    # where a Debian root's unit run finds pyroute2)
    prog = ("import sys; sys.path[:0] = %r\nfrom cnilib.agent import server\n"
            "server.preload(lambda m: print('ERR', m))\nprint('\\n'.join(sys.modules))"
            % ([ROOT] + sys.path))
    out = subprocess.run([sys.executable, "-I", "-c", prog], capture_output=True, text=True,
                         check=True).stdout.split()
    assert "ERR" not in out, out
    missing = sorted(want - set(out))
    assert not missing, "the agent does not preload %s: add them to PRELOAD" % ", ".join(missing)
