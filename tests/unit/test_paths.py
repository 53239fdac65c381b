"""Default paths are spelled once, in cnilib.base.paths: a second copy would
drift, and a reader (whois, doctor) looking in one place while a plugin
writes in another is a 3 a.m. lie."""

import ast
import os

from cnitest import ROOT

from cnilib.base import paths
from cnilib.cni._schemas import SCHEMAS

DEFAULTS = {name: value for name, value in vars(paths).items()
            if name.isupper() and isinstance(value, str)}
DEFAULTS.update({"BIN_DIRS[%d]" % i: d for i, d in enumerate(paths.BIN_DIRS)})


def _code_strings(path):
    """String constants of a module that are not docstrings."""
    tree = ast.parse(open(path).read(), path)
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_module_spells_a_default_path():
    found = []
    for top in ("cnilib", "plugins"):
        for d, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                path = os.path.join(d, f)
                rel = os.path.relpath(path, ROOT)
                if not f.endswith(".py") or rel in ("cnilib/base/paths.py", "cnilib/cni/_schemas.py"):
                    continue
                for s in _code_strings(path):
                    for name, value in DEFAULTS.items():
                        if s.startswith(value):     # a value, not an example in a message
                            found.append("%s: %r holds paths.%s" % (rel, s, name))
    assert found == []


def test_flannel_schema_defaults_are_the_paths():
    fields = SCHEMAS["flannel"]["fields"]
    assert fields["subnetFile"]["schema"]["default"] == paths.FLANNEL_SUBNET_FILE
    assert fields["dataDir"]["schema"]["default"] == paths.FLANNEL_DIR


def test_env_overrides_the_suite_dirs(monkeypatch):
    monkeypatch.delenv("PYCNI_RUN_DIR", raising=False)
    monkeypatch.delenv("PYCNI_STATE_DIR", raising=False)
    assert (paths.run_dir(), paths.state_dir()) == (paths.RUN_DIR, paths.STATE_DIR)
    monkeypatch.setenv("PYCNI_RUN_DIR", "/tmp/r")
    monkeypatch.setenv("PYCNI_STATE_DIR", "/tmp/s")
    assert (paths.run_dir(), paths.state_dir()) == ("/tmp/r", "/tmp/s")
