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

The reader is ``cnilib/ops/elf.py`` (pure Python, struct; ``pycni install``
uses the same one): tests/unit/test_elfcheck.py holds it to ``readelf -V
--wide`` on real ELF files.
"""

import os
import sys

from cnilib.ops.elf import GLIBC, BadElf, glibc_needs, parse_version, read_needs


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
                needs = read_needs(f)
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
