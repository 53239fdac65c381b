"""Start-up discipline: what each path may import, and one pyroute2 importer."""

import os
import subprocess
import sys

import pytest
from cnitest import ROOT, pydantic_why

SITE = [p for p in sys.path if p.endswith("site-packages")]


def _modules_after(code):
    """Import set after running ``code`` in a fresh -I -S interpreter."""
    prog = ("import sys; sys.path[0:0] = %r\n%s\n"
            "print('\\n'.join(sorted(sys.modules)))" % ([ROOT] + SITE, code))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", prog], capture_output=True,
                         text=True, check=True).stdout
    return set(out.split())


HEAVY = ("pyroute2", "pydantic", "pydantic_core", "re", "json", "subprocess", "logging",
         "dataclasses", "typing", "enum", "asyncio", "ipaddress")


def test_version_path_is_light():
    mods = _modules_after(
        "import os\nos.environ.update(CNI_COMMAND='VERSION', PYCNI_LOG='off')\n"
        "from cnilib.cni import skel\nimport plugins.loopback as p\n"
        "skel.execute(p.PLUGIN, os.environ, stdin_data=b'{\"cniVersion\":\"1.0.0\"}')")
    heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy


def test_error_path_does_not_load_netlink():
    mods = _modules_after(
        "import os\nos.environ.update(CNI_COMMAND='ADD', PYCNI_LOG='off')\n"
        "from cnilib.cni import skel\nimport plugins.loopback as p\n"
        "skel.execute(p.PLUGIN, os.environ, stdin_data=b'{}')")
    assert not any(m.startswith(("pyroute2", "pydantic")) for m in mods)


def test_only_netlink_imports_pyroute2():
    offenders = []
    for base in ("cnilib", "plugins"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, base)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)
                if rel == os.path.join("cnilib", "kernel", "netlink.py"):
                    continue
                with open(path) as fh:
                    for line in fh:
                        s = line.strip()
                        if s.startswith(("import pyroute2", "from pyroute2")):
                            offenders.append(rel)
    assert offenders == []


KERNEL = ("netlink", "link", "route", "brport", "vxlan", "nftables", "conntrack")


def test_netlink_loads_no_pyroute2_until_asked():
    """A pod's path (links, veths, addresses, routes, nf_tables elements,
    conntrack) is packed by hand: no kernel module loads pyroute2 (or any
    heavy module) by being imported."""
    mods = _modules_after("from cnilib.kernel import %s" % ", ".join(KERNEL))
    heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy


def test_one_netlink_transport():
    """Only cnilib.kernel.netlink opens netlink sockets and reads replies;
    the object modules pack and parse over it."""
    for name in KERNEL[1:]:
        with open(os.path.join(ROOT, "cnilib", "kernel", name + ".py")) as fh:
            text = fh.read()
        assert "socket(" not in text and ".recv(" not in text and "HDR.unpack" not in text, name


def test_netlink_stub_skips_pyroute2_init():
    mods = _modules_after("from cnilib.kernel import netlink\nnetlink.msgclass('ifinfmsg')")
    assert "pyroute2.iproute" not in mods and "pyroute2.ndb" not in mods
    assert "pyroute2.netlink.rtnl.ifinfmsg" in mods


def test_plugins_never_import_each_other():
    for f in os.listdir(os.path.join(ROOT, "plugins")):
        if not f.endswith(".py"):
            continue
        with open(os.path.join(ROOT, "plugins", f)) as fh:
            for line in fh:
                s = line.strip()
                assert not s.startswith(("from plugins", "import plugins")), (f, s)


def test_schemas_are_fresh():
    pytest.importorskip("pydantic", reason=pydantic_why())
    r = subprocess.run([sys.executable, "-m", "cnilib.cni.schema", "--check"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_validation_is_light():
    """Validating a config loads neither pydantic(-core) nor re (~8 ms per exec)."""
    mods = _modules_after(
        "from cnilib.cni import validate\n"
        "validate.validate('netconf', {'name': 'n', 'cniVersion': '1.0.0', 'type': 'x'})")
    heavy = sorted(m for m in mods if m.split(".")[0] in ("pydantic", "pydantic_core", "re", "enum",
                                                           "typing", "datetime"))
    assert heavy == []


def test_validating_first_does_not_break_a_later_pydantic_import():
    """The run-time stub for pydantic_core must not shadow the real package."""
    pytest.importorskip("pydantic", reason=pydantic_why())
    mods = _modules_after(
        "from cnilib.cni import validate\nvalidate.validate('netconf', {'name': 'n'})\n"
        "import pydantic\nclass M(pydantic.BaseModel):\n    x: int\nassert M(x=1).x == 1\n"
        "assert validate.validate('netconf', {'name': 'n'})['name'] == 'n'")
    assert "pydantic" in mods
