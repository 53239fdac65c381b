"""The bundle's pyimod03_ctypes: PyInstaller's ctypes patch, made lazy.

PyInstaller's bootstrap calls ``pyimod03_ctypes.install()`` before any of
our code runs, and its own version imports ctypes there to patch
``ctypes.CDLL``/``PyDLL`` (a library named by its bare file name is looked
for in the bundle's dir first).  That import costs every exec of the
bundle ~2 ms (ctypes, struct, its C module), while a plugin imports ctypes
only on a few paths, if at all (setns goes through ``_ctypes``).

build.sh swaps this module in for PyInstaller's (the spec's bootstrap
modules, see build_bin).  ``install()`` puts a finder at the front of
``sys.meta_path`` that finds nothing itself: when ``ctypes`` is first
imported it steps aside, lets the other finders find it, and has the
module patched right after it executes, as PyInstaller's own install()
would have done.  Other imports pay one function call.

It runs in the bundle's bootstrap: standard library only, Python 3.9+,
nothing imported at module level but ``sys`` (the import machinery is not
complete yet when it is imported).
"""

import sys


def _frozen_name(name):
    import os
    if name and not os.path.isfile(name):
        frozen = os.path.join(sys._MEIPASS, os.path.basename(name))
        if os.path.isfile(frozen):
            return frozen
    return name


def patch(ctypes):
    """What PyInstaller's install() does to ``ctypes`` on Linux."""

    class PyInstallerImportError(OSError):
        def __init__(self, name):
            self.msg = ("Failed to load dynlib/dll %r. Most likely this dynlib/dll was not found when the "
                        "application was frozen." % name)
            self.args = (self.msg,)

    class PyInstallerCDLL(ctypes.CDLL):
        def __init__(self, name, *args, **kwargs):
            name = _frozen_name(name)
            try:
                super().__init__(name, *args, **kwargs)
            except Exception as base_error:
                raise PyInstallerImportError(name) from base_error

    class PyInstallerPyDLL(ctypes.PyDLL):
        def __init__(self, name, *args, **kwargs):
            name = _frozen_name(name)
            try:
                super().__init__(name, *args, **kwargs)
            except Exception as base_error:
                raise PyInstallerImportError(name) from base_error

    ctypes.CDLL = PyInstallerCDLL
    ctypes.cdll = ctypes.LibraryLoader(PyInstallerCDLL)
    ctypes.PyDLL = PyInstallerPyDLL
    ctypes.pydll = ctypes.LibraryLoader(PyInstallerPyDLL)


class _PatchingLoader:
    """``loader`` of ctypes, patching the module once it has executed."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        patch(module)

    def __getattr__(self, name):       # get_code, is_package, get_resource_reader...
        return getattr(self._loader, name)


class CtypesFinder:
    """A meta path finder for ctypes alone, there until ctypes is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "ctypes":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install():
    if "ctypes" in sys.modules:        # imported already: patch it now
        patch(sys.modules["ctypes"])
    elif not any(isinstance(f, CtypesFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, CtypesFinder())
