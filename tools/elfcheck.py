"""The glibc a set of ELF files needs: their version needs, read as auditwheel does.

A dynamically linked ELF file names, for each shared library it links, the
symbol versions it needs from it (``GLIBC_2.34`` from ``libc.so.6``): the
``SHT_GNU_verneed`` section (``.gnu.version_r``), or with no section headers
the ``DT_VERNEED``/``DT_VERNEEDNUM`` entries of its dynamic segment.  The
dynamic loader refuses to start a program, or to load a library, when the
node's glibc lacks one of them (``version `GLIBC_2.35' not found``): the
highest ``GLIBC_x.y`` over every ELF file of a bundle is the oldest glibc
it runs on.  manylinux/auditwheel hold wheels to a floor the same way.

    python3 -m tools.elfcheck --glibc 2.31 dist/bin     # exit 1 above the floor

Pure Python (struct), no binutils: tests/unit/test_elfcheck.py holds it to
``readelf -V --wide`` on real ELF files.
"""

import os
import re
import struct
import sys

SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_NOBITS = 8
PT_LOAD = 1
PT_DYNAMIC = 2
DT_NULL = 0
DT_STRTAB = 5
DT_STRSZ = 10
DT_VERNEED = 0x6FFFFFFE
DT_VERNEEDNUM = 0x6FFFFFFF
GLIBC = re.compile(r"^GLIBC_(\d+(?:\.\d+)*)$")


class NotElf(ValueError):
    """Not an ELF file (no \\x7fELF magic)."""


class BadElf(ValueError):
    """An ELF file whose headers or version needs point outside it."""


class _Elf:
    def __init__(self, data):
        if data[:4] != b"\x7fELF":
            raise NotElf("no ELF magic")
        if len(data) < 64 or data[4] not in (1, 2) or data[5] not in (1, 2):
            raise BadElf("unknown ELF class or byte order")
        self.data = data
        self.is64 = data[4] == 2
        self.end = "<" if data[5] == 1 else ">"
        if self.is64:
            (self.phoff, self.shoff, _flags, _ehsize, self.phentsize, self.phnum,
             self.shentsize, self.shnum, self.shstrndx) = self.unpack("QQIHHHHHH", 32)
        else:
            (self.phoff, self.shoff, _flags, _ehsize, self.phentsize, self.phnum,
             self.shentsize, self.shnum, self.shstrndx) = self.unpack("IIIHHHHHH", 28)

    def unpack(self, fmt, off):
        fmt = self.end + fmt
        if off < 0 or off + struct.calcsize(fmt) > len(self.data):
            raise BadElf("a header at offset %d runs past the end of the file" % off)
        return struct.unpack_from(fmt, self.data, off)

    def sections(self):
        """[(type, offset, size, link, info)] of the section headers."""
        out = []
        for i in range(self.shnum if self.shoff else 0):
            off = self.shoff + i * self.shentsize
            if self.is64:
                _n, typ, _f, _a, offset, size, link, info = self.unpack("IIQQQQII", off)
            else:
                _n, typ, _f, _a, offset, size, link, info = self.unpack("IIIIIIII", off)
            out.append((typ, offset, size, link, info))
        return out

    def segments(self):
        """[(type, offset, vaddr, filesz)] of the program headers."""
        out = []
        for i in range(self.phnum if self.phoff else 0):
            off = self.phoff + i * self.phentsize
            if self.is64:
                typ, _fl, offset, vaddr, _pa, filesz = self.unpack("IIQQQQ", off)
            else:
                typ, offset, vaddr, _pa, filesz = self.unpack("IIIII", off)
            out.append((typ, offset, vaddr, filesz))
        return out

    def string(self, strtab, strsz, off):
        if off >= strsz:
            raise BadElf("a version need names string %d of a %d-byte table" % (off, strsz))
        start = strtab + off
        end = self.data.find(b"\0", start, strtab + strsz)
        if end < 0:
            raise BadElf("an unterminated string in the dynamic string table")
        return self.data[start:end].decode("ascii", "replace")

    def walk_verneed(self, off, count, strtab, strsz):
        """The Elf_Verneed chain at file offset ``off`` (same layout in both
        classes): [(library, [version name, ...])]."""
        out, seen = [], set()
        for _ in range(count):
            if off in seen:
                raise BadElf("the version needs loop back on themselves")
            seen.add(off)
            _ver, cnt, vn_file, vn_aux, vn_next = self.unpack("HHIII", off)
            names, aux = [], off + vn_aux
            for _ in range(cnt):
                _hash, _flags, _other, vna_name, vna_next = self.unpack("IHHII", aux)
                names.append(self.string(strtab, strsz, vna_name))
                if not vna_next:
                    break
                aux += vna_next
            out.append((self.string(strtab, strsz, vn_file), names))
            if not vn_next:
                break
            off += vn_next
        return out

    def version_needs(self):
        secs = self.sections()
        for typ, offset, _size, link, info in secs:
            if typ == SHT_GNU_VERNEED:
                if link >= len(secs):
                    raise BadElf("the version needs name string table %d of %d" % (link, len(secs)))
                styp, stroff, strsz, _l, _i = secs[link]
                if styp == SHT_NOBITS:
                    raise BadElf("the version needs' string table holds no data")
                return self.walk_verneed(offset, info, stroff, strsz)
        if secs:
            return []
        return self._from_dynamic()

    def _from_dynamic(self):
        """No section headers (sstrip'ed): the dynamic segment's entries,
        addresses mapped to file offsets through the PT_LOAD segments."""
        segs = self.segments()
        dyn = [s for s in segs if s[0] == PT_DYNAMIC]
        if not dyn:
            return []                      # statically linked: needs nothing
        loads = [s for s in segs if s[0] == PT_LOAD]

        def to_offset(vaddr):
            for _t, offset, start, filesz in loads:
                if start <= vaddr < start + filesz:
                    return offset + vaddr - start
            raise BadElf("dynamic address %#x is in no loaded segment" % vaddr)

        tags = {}
        _t, off, _v, size = dyn[0]
        fmt, step = ("qQ", 16) if self.is64 else ("iI", 8)
        for pos in range(off, off + size, step):
            tag, val = self.unpack(fmt, pos)
            if tag == DT_NULL:
                break
            tags.setdefault(tag, val)
        if DT_VERNEED not in tags:
            return []
        return self.walk_verneed(to_offset(tags[DT_VERNEED]), tags.get(DT_VERNEEDNUM, 0),
                                 to_offset(tags[DT_STRTAB]), tags.get(DT_STRSZ, len(self.data)))


def version_needs(path):
    """[(library, [version names])] the ELF file at ``path`` needs, in file
    order; [] for a static one.  Raises NotElf, BadElf, OSError."""
    with open(path, "rb") as f:
        head = f.read(4)
        if head != b"\x7fELF":
            raise NotElf("%s is not an ELF file" % path)
        data = head + f.read()
    return _Elf(data).version_needs()


def parse_version(text):
    return tuple(int(x) for x in text.split("."))


def glibc_needs(needs):
    """The GLIBC_x.y versions among ``needs``, highest first, and whether
    GLIBC_PRIVATE (an internal interface of one glibc build) is among them."""
    found, private = set(), False
    for _lib, names in needs:
        for n in names:
            m = GLIBC.match(n)
            if m:
                found.add(parse_version(m.group(1)))
            elif n == "GLIBC_PRIVATE":
                private = True
    return sorted(found, reverse=True), private


def elf_files(top):
    """Regular files under ``top`` (or ``top`` itself) that start with the
    ELF magic; symlinks are not followed."""
    if os.path.isfile(top) and not os.path.islink(top):
        candidates = [top]
    else:
        candidates = []
        for d, dirs, files in os.walk(top):
            dirs.sort()
            for f in sorted(files):
                candidates.append(os.path.join(d, f))
    for p in candidates:
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            if f.read(4) == b"\x7fELF":
                yield p


def check(paths, floor):
    """Every ELF file under ``paths`` against glibc ``floor`` (a tuple):
    (files checked, highest version seen and its file, [(file, problem)])."""
    floor_name = ".".join(map(str, floor))
    checked, top, problems = 0, ((), None), []
    for base in paths:
        for f in elf_files(base):
            checked += 1
            try:
                needs = version_needs(f)
            except BadElf as exc:
                problems.append((f, "unreadable version needs: %s" % exc))
                continue
            versions, private = glibc_needs(needs)
            if versions and versions[0] > top[0]:
                top = (versions[0], f)
            above = [v for v in versions if v > floor]
            if above:
                libs = sorted({lib for lib, names in needs
                               for n in names if GLIBC.match(n) and parse_version(n[6:]) > floor})
                problems.append((f, "needs %s (from %s), above the floor GLIBC_%s" % (
                    ", ".join("GLIBC_" + ".".join(map(str, v)) for v in above),
                    ", ".join(libs), floor_name)))
            if private:
                problems.append((f, "needs GLIBC_PRIVATE: tied to the glibc it was built against"))
    return checked, top, problems


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python3 -m tools.elfcheck",
                                description="fail when an ELF file needs a glibc above the floor")
    p.add_argument("--glibc", required=True, help="the floor, e.g. 2.31")
    p.add_argument("paths", nargs="+", help="files or directories (every ELF file below them)")
    a = p.parse_args(argv)
    floor = parse_version(a.glibc)
    checked, (top, top_file), problems = check(a.paths, floor)
    if not checked:
        print("elfcheck: no ELF file under %s" % " ".join(a.paths), file=sys.stderr)
        return 1
    for f, why in problems:
        print("elfcheck: %s: %s" % (f, why), file=sys.stderr)
    if problems:
        print("elfcheck: %d of %d ELF files cannot run on glibc %s" % (
            len({f for f, _ in problems}), checked, a.glibc), file=sys.stderr)
        return 1
    print("elfcheck: %d ELF files, highest need %s (%s): runs on glibc >= %s" % (
        checked, "GLIBC_" + ".".join(map(str, top)) if top else "none",
        os.path.relpath(top_file) if top_file else "-", ".".join(map(str, top)) if top else "any"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
