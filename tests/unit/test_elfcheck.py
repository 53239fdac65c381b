"""The ELF reader (cnilib/ops/elf.py) behind tools/elfcheck.py, the
bundle's glibc floor check, held to ``readelf -V --wide`` (binutils) on
real ELF files of this machine: executables, shared libraries, Python
extension modules, glibc itself, a static Go binary, and the same files
with their section headers cut off (the dynamic-segment path)."""

import glob
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest
from cnitest import ROOT

from cnilib.ops import elf
from tools import elfcheck

READELF = shutil.which("readelf")
LIBDIR = "/usr/lib/x86_64-linux-gnu"


def _candidates():
    files = ["/bin/ls", "/usr/bin/python3", "/usr/bin/ip", "/usr/sbin/nft",
             os.path.realpath(sys.executable), os.path.join(LIBDIR, "libc.so.6"),
             os.path.join(LIBDIR, "libm.so.6"), os.path.join(LIBDIR, "libz.so.1")]
    files += sorted(glob.glob(os.path.join(LIBDIR, "libpython3*.so.1.0")))[:1]
    files += sorted(glob.glob("/usr/lib/python3*/lib-dynload/_ctypes*.so"))[:1]
    files += sorted(glob.glob("/usr/lib/cni/bridge"))            # Go, dynamically linked
    files += sorted(glob.glob(os.path.join(ROOT, "dist", "bin", ".pycni", "libpython*")))
    seen, out = set(), []
    for f in files:
        real = os.path.realpath(f)
        if os.path.isfile(real) and real not in seen:
            seen.add(real)
            out.append(real)
    return out


FILES = _candidates()


def readelf_needs(path):
    """readelf's reading of the version needs: [(library, [names])]."""
    out = subprocess.run([READELF, "-V", "--wide", path], capture_output=True, text=True,
                         check=True).stdout
    needs, inside = [], False
    for line in out.splitlines():
        if line.startswith("Version needs section"):
            inside = True
            continue
        if inside and line.startswith("Version") and "section" in line:
            break
        if not inside:
            continue
        m = re.search(r"File: (\S+)\s+Cnt: \d+", line)
        if m:
            needs.append((m.group(1), []))
            continue
        m = re.search(r"Name: (\S+)\s+Flags", line)
        if m:
            needs[-1][1].append(m.group(1))
    return needs


@pytest.mark.skipif(READELF is None, reason="readelf is not installed (binutils)")
@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_version_needs_match_readelf(path):
    assert elf.read_needs(path) == readelf_needs(path)


def _without_sections(src, dst):
    """A copy of ``src`` whose ELF header claims no section headers (as
    sstrip leaves a binary): only the program headers remain to read."""
    data = bytearray(open(src, "rb").read())
    assert data[4] == 2 and data[5] == 1      # ELF64 little-endian on this machine
    struct.pack_into("<Q", data, 0x28, 0)     # e_shoff
    struct.pack_into("<HHH", data, 0x3A, 0, 0, 0)   # e_shentsize, e_shnum, e_shstrndx
    open(dst, "wb").write(bytes(data))


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_dynamic_segment_reading_agrees(path, tmp_path):
    cut = str(tmp_path / "cut")
    _without_sections(path, cut)
    assert elf._Elf(open(cut, "rb").read()).sections() == []
    assert elf.read_needs(cut) == elf.read_needs(path)


def test_glibc_needs_of_a_real_binary():
    needs = elf.read_needs("/bin/ls")
    versions, private = elf.glibc_needs(needs)
    assert versions == sorted(versions, reverse=True) and (2, 2, 5) in versions
    assert not private
    # libc itself needs ld.so's GLIBC_PRIVATE: the check names it
    _v, private = elf.glibc_needs(elf.read_needs(os.path.join(LIBDIR, "libc.so.6")))
    assert private


def test_static_and_non_elf(tmp_path):
    script = tmp_path / "launcher"
    script.write_text("#!/usr/bin/python3 -IS\n")
    with pytest.raises(elf.NotElf):
        elf.read_needs(str(script))
    static = [p for p in ("/bin/busybox", "/usr/lib/go/pkg/tool/linux_amd64/compile") if os.path.isfile(p)]
    for p in static:
        if b"\x7fELF" == open(p, "rb").read(4) and "statically" in subprocess.run(
                ["file", "-L", p], capture_output=True, text=True).stdout:
            assert elf.read_needs(p) == []


def test_check_tree_floor(tmp_path):
    """A tree holding /bin/ls (this machine's, Debian 12: GLIBC_2.34) fails
    a 2.31 floor naming the file, the versions and the library; passes its
    own; symlinks and scripts are skipped."""
    d = tmp_path / "dist"
    (d / ".pycni").mkdir(parents=True)
    shutil.copy("/bin/ls", d / ".pycni" / "ls")
    os.symlink("/bin/ls", d / "link")
    (d / "script").write_text("#!/bin/sh\n")
    top = max(elf.glibc_needs(elf.read_needs("/bin/ls"))[0])
    checked, (seen, where), problems = elfcheck.check([str(d)], top)
    assert (checked, seen, problems) == (1, top, []) and where.endswith("/ls")
    checked, _top, problems = elfcheck.check([str(d)], (2, 31))
    if top > (2, 31):
        ((f, why),) = problems
        assert f.endswith(".pycni/ls") and "GLIBC_%d.%d" % top[:2] in why and "libc.so.6" in why


def test_command_line(tmp_path):
    d = tmp_path / "dist"
    d.mkdir()
    shutil.copy("/bin/ls", d / "ls")
    run = [sys.executable, "-m", "tools.elfcheck"]
    ok = subprocess.run(run + ["--glibc", "9.0", str(d)], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "1 ELF files" in ok.stdout
    bad = subprocess.run(run + ["--glibc", "2.0", str(d)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "above the floor GLIBC_2.0" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = subprocess.run(run + ["--glibc", "2.31", str(empty)], cwd=ROOT, capture_output=True, text=True)
    assert none.returncode == 1 and "no ELF file" in none.stderr


def test_corrupt_files_are_refused_not_crashed(tmp_path):
    """A cut file or a version need pointing outside the file is BadElf
    (the build names it), never another exception."""
    data = open("/bin/ls", "rb").read()
    for cut in (16, 64, 200, len(data) // 2):
        p = tmp_path / ("cut%d" % cut)
        p.write_bytes(data[:cut])
        with pytest.raises(elf.BadElf):
            elf.read_needs(str(p))
    (off,) = [s[1] for s in elf._Elf(data).sections() if s[0] == elf.SHT_GNU_VERNEED]
    for field, value in ((12, 1 << 31), (8, 1 << 31), (4, 1 << 30)):   # vn_next, vn_aux, vn_file
        mangled = bytearray(data)
        struct.pack_into("<I", mangled, off + field, value)
        p = tmp_path / ("field%d" % field)
        p.write_bytes(bytes(mangled))
        with pytest.raises(elf.BadElf):
            elf.read_needs(str(p))


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_lenient_view_is_the_strict_one(path):
    """``pycni install`` reads needs leniently ({} for what is not a good
    ELF) through the same reader the build's strict check uses."""
    ours = {}
    for lib, names in elf.read_needs(path):
        ours.setdefault(lib, []).extend(names)
    assert elf.version_needs(path) == ours
    versions, _private = elf.glibc_needs(elf.read_needs(path))
    assert elf.glibc_needed(path) == (versions[0] if versions else None)
