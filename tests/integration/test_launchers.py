"""dist/py's launchers: the node's own python3, 3.9 or newer, and a clear
refusal below it.

Each launcher names ``/usr/bin/python3`` (or what PYCNI_LAUNCHER_PYTHON
named at build time) and checks the version itself, so whoever installs
the form gets the check.  The refusal is held here by running a launcher
under real older interpreters when this machine has them (pyenv's 3.6 to
3.8), and under this one with sys.version_info set back; the form is run
on every 3.9+ interpreter found (pyenv's, the system's; the Debian roots'
3.9, 3.11 and 3.13 are the distro tier's).
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from cnitest import ALL_VERSIONS, DIST, PluginRun, assert_cni_error

PY = os.path.join(DIST, "py")
PLUGINS = ("bridge", "host-local", "flannel", "portmap", "loopback", "firewall", "tuning")
LAUNCHER_PYTHON = os.environ.get("PYCNI_LAUNCHER_PYTHON", "/usr/bin/python3")


def _interpreters(low, high):
    """Real python3 interpreters on this machine with low <= version < high."""
    found = {}
    for exe in ["/usr/bin/python3"] + sorted(glob.glob("/usr/bin/python3.[0-9]*")) + \
            sorted(glob.glob("/root/.pyenv/versions/3.*/bin/python3")):
        if not os.access(exe, os.X_OK) or exe.endswith("-config"):
            continue
        p = subprocess.run([exe, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            continue
        ver = tuple(int(x) for x in p.stdout.split("."))
        if low <= ver < high:
            found.setdefault(ver[:2], exe)
    return sorted(found.items())


OLD = _interpreters((3, 4), (3, 9))
NEW = _interpreters((3, 9), (4, 0))


@pytest.fixture(scope="module")
def built():
    if not os.path.isfile(os.path.join(PY, "loopback")):
        pytest.skip("dist/py is not built (./build.sh)")
    return PY


def _copy_for(python, tmp):
    """A copy of dist/py whose launchers run ``python``, as pycni install
    would point them at another interpreter."""
    d = os.path.join(str(tmp), "py")
    shutil.copytree(PY, d, symlinks=True)
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if os.path.isfile(p) and name != "pycni.d":
            with open(p) as f:
                lines = f.read().split("\n", 1)
            with open(p, "w") as f:
                f.write("#!%s -IS\n%s" % (python, lines[1]))
    return d


def _exec(exe, command="VERSION", stdin=b'{"cniVersion":"0.4.0"}', argv=()):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "PYCNI_LOG": "off"}
    p = subprocess.run([exe] + list(argv), input=stdin, capture_output=True, env=env, timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_every_launcher_names_the_nodes_python3(built):
    names = sorted(n for n in os.listdir(built) if n != "pycni.d")
    assert names == sorted(PLUGINS + ("pycni",))
    for name in names:
        with open(os.path.join(built, name)) as f:
            head = f.read(300).splitlines()
        assert head[0] == "#!%s -IS" % LAUNCHER_PYTHON, name
        assert head[1].startswith("# pycni-launcher: ") and "3.9 or newer" in head[1]


def _simulated(launcher, version, stdin):
    """Run ``launcher``'s code on this interpreter with sys.version_info set
    back to ``version``: the refusal path, without an old Python."""
    prog = ("import sys\nsys.version_info = %r\nsys.version = %r\n"
            "path = sys.argv[1]\nsys.argv = [path]\n"
            "src = open(path).read()\n"
            "exec(compile(src, path, 'exec'), {'__file__': path, '__name__': '__main__'})\n"
            % (version, "%d.%d.%d (simulated)" % version[:3]))
    p = subprocess.run([sys.executable, "-I", "-S", "-c", prog, launcher], input=stdin,
                       capture_output=True, env={"CNI_COMMAND": "ADD", "PYCNI_LOG": "off"}, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


@pytest.mark.parametrize("name", PLUGINS)
def test_a_plugin_refuses_python_below_3_9_with_a_cni_error(built, name):
    rc, out, err = _simulated(os.path.join(built, name), (3, 8, 10, "final", 0),
                              b'{"cniVersion":"0.4.0","name":"n","type":"%s"}' % name.encode())
    assert rc == 1, (out, err)
    got = json.loads(out)
    assert got["cniVersion"] == "0.4.0" and got["code"] == 999
    assert got["msg"] == "pycni needs python3 3.9 or newer; %s is 3.8.10" % sys.executable
    assert "bundle form" in got["details"] and "glibc >= 2.31" in got["details"]
    assert err.startswith("%s: pycni needs python3 3.9 or newer" % name) and "Traceback" not in err


def test_refusal_survives_any_stdin(built):
    for stdin in (b"", b"not json", b'{"cniVersion": "1.0.0\\n{evil}"}', b"[]", b"\xff\xfe"):
        rc, out, _err = _simulated(os.path.join(built, "bridge"), (3, 6, 8, "final", 0), stdin)
        assert rc == 1 and json.loads(out)["cniVersion"] == "1.1.0", (stdin, out)


def test_the_tool_refuses_on_stderr_only(built):
    rc, out, err = _simulated(os.path.join(built, "pycni"), (3, 7, 3, "final", 0), b"")
    assert (rc, out) == (1, "") and "pycni needs python3 3.9 or newer" in err


@pytest.mark.skipif(not OLD, reason="no python3 older than 3.9 on this machine (pyenv's 3.6-3.8 here)")
@pytest.mark.parametrize("version,python", OLD, ids=["%d.%d" % v for v, _ in OLD])
def test_real_old_pythons_are_refused(built, tmp_path, version, python):
    d = _copy_for(python, tmp_path)
    rc, out, err = _exec(os.path.join(d, "loopback"))
    assert rc == 1, (out, err)
    got = json.loads(out)
    assert set(got) == {"cniVersion", "code", "msg", "details"} and got["code"] == 999
    assert "is %d.%d." % version in got["msg"] and got["cniVersion"] == "0.4.0"
    rc, out, err = _exec(os.path.join(d, "pycni"), argv=["--version"])
    assert rc == 1 and out == "" and "3.9 or newer" in err


@pytest.mark.parametrize("version,python", NEW, ids=["%d.%d" % v for v, _ in NEW])
def test_the_form_runs_on_every_python_from_3_9(built, tmp_path, version, python):
    d = _copy_for(python, tmp_path)
    for name in PLUGINS:
        rc, out, err = _exec(os.path.join(d, name))
        assert rc == 0, (name, out, err)
        assert json.loads(out) == {"cniVersion": "0.4.0", "supportedVersions": list(ALL_VERSIONS)}
    rc, out, err = _exec(os.path.join(d, "pycni"), argv=["--version"])
    assert rc == 0 and out.startswith("pycni "), err
    # an error path too: a config that is no JSON is code 6, no traceback
    r = subprocess.run([os.path.join(d, "bridge")], input=b"{", capture_output=True, timeout=60,
                       env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/proc/self/ns/net",
                            "CNI_IFNAME": "eth0", "CNI_PATH": d, "PYCNI_LOG": "off"})
    assert_cni_error(PluginRun(r.returncode, r.stdout.decode(), r.stderr.decode()), 6)


def test_bytecode_for_debians_pythons(built):
    """The build compiles every module for Debian 11's, 12's and 13's
    python3 (the roots'), so no plugin compiles its imports on a node."""
    if not os.path.isdir(os.path.join(DIST, "bin")):
        pytest.skip("built with PYCNI_SKIP_BUNDLE=1: bytecode for the host's python3 only")
    cache = os.path.join(built, "pycni.d", "cnilib", "__pycache__")
    tags = sorted(f.split(".")[1] for f in os.listdir(cache) if f.startswith("main."))
    assert tags == ["cpython-311", "cpython-313", "cpython-39"]
    for base, _dirs, files in os.walk(os.path.join(built, "pycni.d")):
        if "__pycache__" in base:
            continue
        for f in files:
            if f.endswith(".py"):
                for tag in tags:
                    assert os.path.isfile(os.path.join(base, "__pycache__", f[:-3] + "." + tag + ".pyc")), \
                        (base, f, tag)
