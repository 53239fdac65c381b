"""iptables through iptables-save / iptables-restore: one batch per operation.

``iptables-restore --noflush`` applies a whole table section atomically.
Careful: declaring a chain (``:NAME - [0:0]``) flushes it when it already
exists, so callers declare only chains that the save output shows missing,
and serialise their read-modify-write under ``lock()``.
"""

import os

from cnilib.base import errors, fsutil, proc

_BIN = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}
_available = {}     # per process, like nft._available: never outlives one request


# ---- rule text: iptables-save's quoting and iptables-restore's tokens

COMMENT_MAX = 255   # bytes: xt_comment holds 256 with the terminating NUL
_BARE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ESCAPED = "\"\\'"


def quote(text):
    """``text`` as iptables-save prints a string argument (a comment):
    bare when it is only ``[A-Za-z0-9_-]``, else double-quoted with each of
    ``" \\ '`` behind a backslash (libxtables' xtables_save_string), which
    is also what iptables-restore reads back; rule lines compared with
    iptables-save output are rendered with it."""
    if text and all(c in _BARE for c in text):
        return text
    return '"%s"' % "".join("\\" + c if c in _ESCAPED else c for c in text)


def comment_text(text, limit=COMMENT_MAX):
    """A rule comment made of input-derived text: every character that is
    not printable (a control character, an undecodable byte of a name) as
    ``?``, cut to ``limit`` bytes of UTF-8 on a character boundary, marked
    by ``...``.  Quote it with ``quote``."""
    from cnilib.base.text import cut_bytes
    return cut_bytes("".join(c if c.isprintable() else "?" for c in text), limit)


def split(line):
    """The tokens of a rule line as iptables-restore reads them: blanks
    separate, double quotes group, and inside quotes a backslash takes the
    next character as it is; the inverse of ``quote``."""
    out, cur, quoted, escaped, have = [], [], False, False, False
    for c in line:
        if quoted:
            if escaped:
                cur.append(c)
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
            else:
                cur.append(c)
        elif c == '"':
            quoted = have = True
        elif c in " \t\n":
            if have or cur:
                out.append("".join(cur))
            cur, have = [], False
        else:
            cur.append(c)
            have = True
    if have or cur:
        out.append("".join(cur))
    return out


def available(family=4):
    if family not in _available:
        try:
            r = proc.run([_BIN[family][0], "-t", "nat"], timeout=15)
            _available[family] = r.rc == 0
        except (OSError, TimeoutError):
            _available[family] = False
    return _available[family]


def save(family, table):
    """``iptables-save -t table`` text ('' when the table is empty/absent)."""
    try:
        r = proc.run([_BIN[family][0], "-t", table], timeout=30)
    except FileNotFoundError as exc:
        raise errors.Internal("%s is not installed" % _BIN[family][0]) from exc
    except TimeoutError as exc:
        raise errors.TryAgainLater("%s -t %s did not finish in 30 s" % (_BIN[family][0], table),
                                   "the kernel or another iptables user is slow; retry") from exc
    if r.rc != 0:
        raise errors.Internal("%s -t %s failed (exit %d): %s"
                              % (_BIN[family][0], table, r.rc, r.err_text()))
    return r.out.decode("utf-8", "replace")


def chains(saved):
    """Chain names declared in an iptables-save section."""
    return {line[1:].split(" ", 1)[0] for line in saved.splitlines() if line.startswith(":")}


def rules(saved, chain=None):
    """'-A CHAIN ...' lines of a save section (optionally of one chain)."""
    out = []
    for line in saved.splitlines():
        if line.startswith("-A "):
            if chain is None or line.split(" ", 2)[1] == chain:
                out.append(line)
    return out


def restore(family, table, lines, what="iptables batch"):
    """Apply ``lines`` (without *table/COMMIT) to ``table`` in one --noflush batch."""
    if not lines:
        return
    text = "*%s\n%s\nCOMMIT\n" % (table, "\n".join(lines))
    wait = lock_wait()
    try:
        r = proc.run([_BIN[family][1], "--noflush", "-w", "%d" % max(1, round(wait))],
                     stdin=text.encode(), timeout=wait + 60)
    except FileNotFoundError as exc:
        raise errors.Internal("%s failed: %s is not installed" % (what, _BIN[family][1])) from exc
    except TimeoutError as exc:
        raise errors.TryAgainLater("%s failed: %s did not finish in %.0f s"
                                   % (what, _BIN[family][1], wait + 60),
                                   "the kernel or another iptables user is slow; retry") from exc
    if r.rc == 4 and b"xtables lock" in r.err:
        # legacy iptables: another program (kube-proxy, firewalld) held
        # /run/xtables.lock for the whole -w wait
        raise errors.TryAgainLater("%s failed: the xtables lock is still held after %.0f s"
                                   % (what, wait), r.err_text(300))
    if r.rc != 0:
        raise errors.Internal("%s failed: %s exit status %d: %s"
                              % (what, _BIN[family][1], r.rc, r.err_text(600)),
                              "batch:\n" + text[:4000])


def edit(family, table, fn, what, unreadable_ok=False):
    """One read-modify-write of ``table``, the only way the rule sets change
    iptables: under lock(), ``fn`` turns the table's iptables-save text into
    the lines to apply, and those go in as one iptables-restore --noflush
    batch (nothing is exec'd for no lines).  Returns the lines.

    ``unreadable_ok``: when iptables-save cannot read the table (not
    installed, or a kernel without it), return None instead of raising:
    for sweeps that visit every family whether or not it is in use.
    """
    with lock():
        try:
            saved = save(family, table)
        except errors.CniError:
            if unreadable_ok:
                return None
            raise
        lines = fn(saved)
        restore(family, table, lines, what)
    return lines


LOCK_WAIT = 30.0    # seconds, as host-local's lock: then code 11 and the runtime retries


def lock_wait():
    """The bound on waiting for the suite's iptables lock (or for the
    xtables lock, through ``-w``): LOCK_WAIT, or PYCNI_IPTABLES_LOCK_WAIT
    seconds when that is set to a positive number."""
    try:
        wait = float(os.environ.get("PYCNI_IPTABLES_LOCK_WAIT", ""))
    except ValueError:
        return LOCK_WAIT
    return wait if 0 < wait <= 600 else LOCK_WAIT


def lock(path=None):
    """flock serialising the suite's own iptables read-modify-write cycles,
    waited for at most ``lock_wait()`` seconds: past that, TryAgainLater
    (code 11) naming the holder when /proc/locks tells it."""
    from cnilib.base import paths
    path = path or os.path.join(paths.run_dir(), "iptables.lock")
    fsutil.ensure_root(os.path.dirname(path))
    return fsutil.Flock(path, lock_wait(), "iptables lock")


def nft_backed():
    """True when iptables is the nf_tables variant (xtables-nft-multi): its
    chains then show in ``nft list chains``, so one nft listing can tell
    whether there is anything to look for before running iptables-save."""
    exe = proc.which(_BIN[4][0])
    return bool(exe) and "nft" in os.path.basename(os.path.realpath(exe))


_LEGACY_NAMES = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}


def may_hold(family, table, chains, nf=None):
    """Whether ``iptables-save -t table`` could show one of ``chains``,
    answered without running it, so that DEL execs iptables only where
    there is something to remove.

    iptables-nft keeps its chains in nf_tables (table ``ip``/``ip6``
    ``table``): one netlink lookup per chain.  Legacy iptables: whether the
    kernel holds that table at all.  No iptables installed: False.
    """
    if proc.which(_BIN[family][0]) is None:
        return False
    if nft_backed():
        from cnilib.kernel import nftables
        fam = "ip" if family == 4 else "ip6"
        try:
            if nf is not None:
                return any(nf.chain_exists(fam, table, c) for c in chains)
            with nftables.NfTables() as own:
                return any(own.chain_exists(fam, table, c) for c in chains)
        except OSError:
            return True     # cannot tell: look
    try:
        with open(_LEGACY_NAMES[family]) as f:
            return table in f.read().split()
    except OSError:
        return False
