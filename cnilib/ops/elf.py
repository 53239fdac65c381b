"""ELF files' glibc needs and a libc's glibc definitions, read with struct.

A dynamically linked ELF file names, for each shared library it links, the
symbol versions it needs from it (``GLIBC_2.34`` from ``libc.so.6``): the
``SHT_GNU_verneed`` section (``.gnu.version_r``, what ``readelf -V`` prints
under "Version needs section", what auditwheel reads), or with no section
headers the ``DT_VERNEED``/``DT_VERNEEDNUM`` entries of its dynamic segment.
The loader refuses a program or library when the node's glibc lacks one of
them (``version `GLIBC_2.35' not found``); a libc says what it has in its
``.gnu.version_d`` section.  Two users: ``tools/elfcheck.py`` holds the
bundle to its glibc floor at build time, and ``pycni install`` says, when a
plugin will not start on a node, which glibc it needs and which the node
has.  32- and 64-bit, either byte order; tests hold it to ``readelf -V``.
"""

import os
import re
import struct

SHT_GNU_VERDEF = 0x6FFFFFFD
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
MAX_BYTES = 256 << 20

# where a distribution keeps its libc.so.6 (Debian/Ubuntu multiarch, RHEL/Fedora, others)
LIBC_PATHS = ("lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/libc.so.6",
              "lib/aarch64-linux-gnu/libc.so.6", "usr/lib/aarch64-linux-gnu/libc.so.6",
              "lib64/libc.so.6", "usr/lib64/libc.so.6", "lib/libc.so.6", "usr/lib/libc.so.6")


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


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

    def version_defs(self):
        """The version names .gnu.version_d defines (a library's)."""
        secs, out = self.sections(), []
        for typ, off, _size, link, count in secs:
            if typ != SHT_GNU_VERDEF:
                continue
            if link >= len(secs):
                raise BadElf("the version definitions name string table %d of %d" % (link, len(secs)))
            _t, stroff, strsz, _l, _i = secs[link]
            seen = set()
            for _ in range(count):
                if off in seen:
                    raise BadElf("the version definitions loop back on themselves")
                seen.add(off)
                _ver, _flags, _ndx, cnt, _hash, aux, nxt = self.unpack("HHHHIII", off)
                if cnt:
                    name, = self.unpack("I", off + aux)
                    out.append(self.string(stroff, strsz, name))
                if not nxt:
                    break
                off += nxt
        return out

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


def _read(path):
    with open(path, "rb") as f:
        head = f.read(4)
        if head != b"\x7fELF":
            raise NotElf("%s is not an ELF file" % path)
        return _Elf(head + f.read(MAX_BYTES))


def read_needs(path):
    """[(library, [version names])] the ELF file at ``path`` needs, in file
    order; [] for a static one.  Raises NotElf, BadElf, OSError."""
    return _read(path).version_needs()


def parse_version(text):
    return tuple(int(x) for x in text.split("."))


def glibc_needs(needs):
    """The GLIBC_x.y versions among ``needs``, highest first, and whether
    GLIBC_PRIVATE (an internal interface of one glibc build) is among them."""
    found, private = set(), False
    for _lib, names in needs:
        for n in names:
            t = glibc_tuple(n)
            if t:
                found.add(t)
            elif n == "GLIBC_PRIVATE":
                private = True
    return sorted(found, reverse=True), private


def version_needs(path):
    """{library: [version names]} an ELF file needs ({} when it is not a
    readable ELF file)."""
    try:
        needs = read_needs(path)
    except (OSError, ValueError, struct.error, IndexError):
        return {}
    out = {}
    for lib, names in needs:
        out.setdefault(lib, []).extend(names)
    return out


def version_defs(path):
    """Version names an ELF library defines ([] when not a readable ELF)."""
    try:
        return _read(path).version_defs()
    except (OSError, ValueError, struct.error, IndexError):
        return []


def glibc_tuple(name):
    """'GLIBC_2.34' -> (2, 34); None for other names (GLIBC_PRIVATE, GCC_3.0)."""
    m = GLIBC.match(name)
    return parse_version(m.group(1)) if m else None


def vtext(t):
    return ".".join(str(p) for p in t) if t else "?"


def glibc_needed(path):
    """The highest GLIBC_x.y an ELF file needs, as a tuple, or None."""
    best = None
    for names in version_needs(path).values():
        for n in names:
            t = glibc_tuple(n)
            if t and (best is None or t > best):
                best = t
    return best


def tree_glibc_needed(root):
    """(highest GLIBC_x.y any ELF file under ``root`` needs, that file's
    path relative to ``root``), or (None, None) when none needs glibc."""
    best, who = None, None
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not is_elf(p):
                continue
            t = glibc_needed(p)
            if t and (best is None or t > best):
                best, who = t, os.path.relpath(p, root)
    return best, who


def resolve_in(root, path, hops=40):
    """``path`` (absolute, as seen inside ``root``) resolved the way a
    process chrooted into ``root`` would resolve it: absolute symlinks stay
    inside the root.  The result is a path of this machine, or None."""
    parts = [p for p in path.split("/") if p and p != "."]
    done = ""
    while parts:
        part = parts.pop(0)
        if part == "..":
            done = done.rsplit("/", 1)[0] if "/" in done else ""
            continue
        cur = done + "/" + part
        full = root.rstrip("/") + cur
        try:
            target = os.readlink(full)
        except FileNotFoundError:
            return None
        except OSError:            # not a symlink
            done = cur
            continue
        hops -= 1
        if hops < 0:
            return None
        new = [p for p in target.split("/") if p and p != "."]
        if target.startswith("/"):
            done = ""
        parts = new + parts
    full = root.rstrip("/") + (done or "/")
    return full if os.path.exists(full) else None


def find_libc(root="/"):
    """Path (on this machine) of the libc.so.6 of the root file system
    ``root``, or None."""
    for rel in LIBC_PATHS:
        p = resolve_in(root, "/" + rel)
        if p is not None:
            return p
    return None


def glibc_provided(root="/"):
    """The highest GLIBC_x.y the libc of root ``root`` defines, or None
    (no glibc there: musl, or no root)."""
    libc = find_libc(root)
    if libc is None:
        return None
    best = None
    for n in version_defs(libc):
        t = glibc_tuple(n)
        if t and (best is None or t > best):
            best = t
    return best


def glibc_release(root="/"):
    """The release of the glibc of root ``root`` ("2.31"), read from the
    banner libc.so.6 carries ("... release version 2.31."), or None."""
    libc = find_libc(root)
    if libc is None:
        return None
    try:
        with open(libc, "rb") as f:
            data = f.read(MAX_BYTES)
    except OSError:
        return None
    i = data.find(b"release version ")
    if i < 0:
        return None
    j = i + len(b"release version ")
    k = j
    while k < len(data) and (data[k:k + 1].isdigit() or data[k:k + 1] == b"."):
        k += 1
    return data[j:k].rstrip(b".").decode("ascii") or None
