"""The glibc an ELF file needs, and the glibc a library provides.

A binary runs on a node when none of its ELF files needs a ``GLIBC_x.y``
symbol version the node's libc does not define: the version needs are the
``.gnu.version_r`` section (what ``readelf -V`` prints under "Version needs
section", what auditwheel reads), the definitions the ``.gnu.version_d``
section of libc.so.6.  ``pycni install`` reads both to say, when a plugin
will not start on a node, which glibc it needs and which the node has.

Section headers are read with struct, nothing else: 32- and 64-bit, either
byte order.  Anything that is not a readable ELF gives an empty answer.
"""

import os
import struct

SHT_GNU_VERDEF = 0x6ffffffd
SHT_GNU_VERNEED = 0x6ffffffe
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


class _Elf:
    def __init__(self, data):
        if data[:4] != b"\x7fELF" or len(data) < 64:
            raise ValueError("not an ELF file")
        cls, enc = data[4], data[5]
        if cls not in (1, 2) or enc not in (1, 2):
            raise ValueError("unknown ELF class or byte order")
        self.data = data
        self.e = "<" if enc == 1 else ">"
        self.b64 = cls == 2
        if self.b64:
            shoff, = struct.unpack_from(self.e + "Q", data, 0x28)
            shentsize, shnum = struct.unpack_from(self.e + "HH", data, 0x3A)
        else:
            shoff, = struct.unpack_from(self.e + "I", data, 0x20)
            shentsize, shnum = struct.unpack_from(self.e + "HH", data, 0x2E)
        self.sections = []
        for i in range(shnum):
            off = shoff + i * shentsize
            if self.b64:
                (_name, stype, _flags, _addr, offset, size, link, info, _align,
                 _entsize) = struct.unpack_from(self.e + "IIQQQQIIQQ", data, off)
            else:
                (_name, stype, _flags, _addr, offset, size, link, info, _align,
                 _entsize) = struct.unpack_from(self.e + "IIIIIIIIII", data, off)
            self.sections.append((stype, offset, size, link, info))

    def cstr(self, strtab, off):
        start = self.sections[strtab][1] + off
        end = self.data.index(b"\x00", start)
        return self.data[start:end].decode("ascii", "replace")

    def of_type(self, stype):
        return [s for s in self.sections if s[0] == stype]

    def verneed(self):
        """[(library file, [version names])] of .gnu.version_r."""
        out = []
        for _t, offset, _size, link, count in self.of_type(SHT_GNU_VERNEED):
            off = offset
            for _ in range(count):
                _ver, cnt, vfile, aux, nxt = struct.unpack_from(self.e + "HHIII", self.data, off)
                names = []
                a = off + aux
                for _ in range(cnt):
                    _hash, _flags, _other, name, anext = struct.unpack_from(self.e + "IHHII", self.data, a)
                    names.append(self.cstr(link, name))
                    if not anext:
                        break
                    a += anext
                out.append((self.cstr(link, vfile), names))
                if not nxt:
                    break
                off += nxt
        return out

    def verdef(self):
        """The version names .gnu.version_d defines."""
        out = []
        for _t, offset, _size, link, count in self.of_type(SHT_GNU_VERDEF):
            off = offset
            for _ in range(count):
                _ver, _flags, _ndx, cnt, _hash, aux, nxt = struct.unpack_from(self.e + "HHHHIII",
                                                                               self.data, off)
                if cnt:
                    name, = struct.unpack_from(self.e + "I", self.data, off + aux)
                    out.append(self.cstr(link, name))
                if not nxt:
                    break
                off += nxt
        return out


def _load(path):
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES)
        return _Elf(data)
    except (OSError, ValueError, struct.error, IndexError):
        return None


def version_needs(path):
    """{library: [version names]} an ELF file needs ({} when not ELF)."""
    elf = _load(path)
    if elf is None:
        return {}
    out = {}
    for lib, names in elf.verneed():
        out.setdefault(lib, []).extend(names)
    return out


def version_defs(path):
    """Version names an ELF library defines ([] when not ELF)."""
    elf = _load(path)
    return elf.verdef() if elf is not None else []


def glibc_tuple(name):
    """'GLIBC_2.34' -> (2, 34); None for other names (GLIBC_PRIVATE, GCC_3.0)."""
    if not name.startswith("GLIBC_"):
        return None
    parts = name[6:].split(".")
    if not all(p.isdigit() for p in parts) or not parts:
        return None
    return tuple(int(p) for p in parts)


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
