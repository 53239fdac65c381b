"""tools/pyi_ctypes_hook.py, the bundle's lazy pyimod03_ctypes: ctypes is
not imported at install(), and once it is, it is patched as PyInstaller's
own hook patches it (a bare library name is looked up in sys._MEIPASS
first).  Each case runs in a fresh interpreter (-I -S), where ctypes is
not imported yet."""

import os
import subprocess
import sys

from cnitest import ROOT

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def _run(tmp_path, body):
    code = ("import sys\nsys._MEIPASS = %r\nsys.path.insert(0, %r)\n"
            "from tools import pyi_ctypes_hook as h\n" % (str(tmp_path), ROOT)) + body
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_install_imports_nothing_and_ctypes_comes_out_patched(tmp_path):
    os.symlink(LIBC, str(tmp_path / "libpycni-test.so"))
    out = _run(tmp_path, """h.install()
print('ctypes' in sys.modules)
import json, ctypes
print(ctypes.CDLL.__name__, ctypes.PyDLL.__name__, ctypes.cdll._dlltype.__name__)
lib = ctypes.CDLL('libpycni-test.so', use_errno=True)
print(lib._name == sys._MEIPASS + '/libpycni-test.so', lib.getpid() > 0)
print(any(isinstance(f, h.CtypesFinder) for f in sys.meta_path))
import ctypes.util
print(ctypes.__spec__.submodule_search_locations is not None)
""")
    assert out == ["False", "PyInstallerCDLL", "PyInstallerPyDLL", "PyInstallerCDLL",
                   "True", "True", "False", "True"]


def test_a_name_found_nowhere_raises_pyinstallers_error(tmp_path):
    out = _run(tmp_path, """h.install()
import ctypes
try:
    ctypes.CDLL('libpycni-nowhere.so')
except OSError as e:
    print(type(e).__name__, isinstance(e.__cause__, OSError))
""")
    assert out == ["PyInstallerImportError", "True"]


def test_install_after_ctypes_was_imported_patches_at_once(tmp_path):
    out = _run(tmp_path, """import ctypes
h.install()
h.install()
print(ctypes.CDLL.__name__, sum(isinstance(f, h.CtypesFinder) for f in sys.meta_path))
""")
    assert out == ["PyInstallerCDLL", "0"]


def test_install_twice_leaves_one_finder(tmp_path):
    out = _run(tmp_path, "h.install()\nh.install()\n"
                         "print(sum(isinstance(f, h.CtypesFinder) for f in sys.meta_path))\n")
    assert out == ["1"]
