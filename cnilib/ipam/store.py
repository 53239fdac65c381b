"""The lease store: the reference's on-disk layout, written crash-safely.

    <dataDir>/<network>/             mode 0755
        lock                         flock target shared with the Go plugin; never removed
        <ip>                         one file per lease, named as Go prints the address,
                                     holding "<containerID>\\r\\n<ifname>" (no newline);
                                     legacy leases hold only "<containerID>"
        last_reserved_ip.<N>         the address range set N handed out last
        .pycni-attachments/<cid>@<ifname>
                                     this suite's index: the lease names it gave
                                     that attachment, one per line

Same bytes as the Go plugin's, so either one reads and releases the other's
leases.  What differs is how they get there:

  * a lease is written to a temp file and hard-linked to its name: link()
    fails if the name exists, like the reference's O_EXCL create, but the
    name only ever appears with its full content;
  * an empty or NUL-filled lease (a Go plugin killed between create and
    write, or a crash that lost the data) is not a lease: whoever needs the
    address reclaims it under the lock and logs it;
  * every change happens under the lock (cnilib.base.fsutil.Flock: bounded wait,
    code 11; the kernel drops it when its holder dies), so under the lock a
    leftover temp file is always a dead writer's and is removed.

The index spares ADD a read of every lease to refuse a duplicate ADD (the
reference reads them all: ~5 ms at 1,000 leases).  When nothing but this
plugin changed the directory since its last ADD, DEL or GC (the index
dir's mtime is stamped with the lease dir's) and it holds one lease per
range set per indexed attachment, ADD takes the names in use from the
listing and reads only its own index entry, checking that each lease it
names is still the attachment's.  Anything else (the Go plugin's ADD or
DEL, an older pycni, a crash between a lease and its entry, a torn file)
sends ADD back to reading every lease.  The index is never the truth: DEL
and GC release by reading every lease, and GC sweeps entries of
attachments that are gone.  The Go plugin walks the directory recursively
but matches a file's whole content to "<cid>\r\n<ifname>", which an
index entry never equals.

Readers: ``Store`` for the plugin (under the lock), and ``read_leases``
for whois and doctor, which takes no lock, changes nothing and notes what
it cannot read instead of raising; both list a directory the same way.

Writes are atomic but not fsync'd (two fsyncs cost ~3 ms, a fifth of an
ADD).  Atomicity is what a killed process needs; durability would only
matter across a power loss, and no container outlives a reboot: a lease
lost then frees an address nobody holds, and one left empty is reclaimed.
"""

import errno
import os
import stat

from cnilib.base import addr, errors, failpoint, fsutil

LOCK = "lock"
LAST_PREFIX = "last_reserved_ip."
INDEX_DIR = ".pycni-attachments"
LOCK_TIMEOUT = 30.0
TORN = "torn"          # owner of a lease file that holds no lease
FOREIGN = "foreign"    # owner of an address-named entry that is no regular file
MAX_LEASE = 4096


def parse_lease(data):
    """Owner of a lease file's content: (containerID, ifname or None), TORN
    for an empty or garbled file, None for no file."""
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return TORN
    text = text.strip()
    if not text or "\x00" in text:
        return TORN
    cid, sep, ifname = text.partition("\r\n")
    return (cid, ifname) if sep else (cid, None)


def lease_bytes(cid, ifname):
    return ("%s\r\n%s" % (cid.strip(), ifname)).encode()


def _address_names(names):
    """[(name, (family, int))] of the names that are addresses: lease files
    (the lock, last_reserved_ip.N, temp files and the index dir are not)."""
    out = []
    for name in names:
        got = addr.parse(name)
        if got is not None:
            out.append((name, got))
    return out


class Lease:
    """One lease file as read_leases found it; ``torn`` when it holds no owner."""

    __slots__ = ("data_dir", "network", "ip", "cid", "ifname", "path", "torn")

    def __init__(self, data_dir, network, ip, path, owner):
        self.data_dir, self.network, self.ip, self.path = data_dir, network, ip, path
        self.torn = owner is TORN
        self.cid, self.ifname = (None, None) if self.torn else owner


def read_leases(data_dirs, problems):
    """(leases, networks) under every dir of ``data_dirs``: each lease file
    (torn ones included) and the networks that have a lease directory.  For
    whois and doctor: takes no lock, changes nothing, never raises; what it
    cannot list or read is noted in ``problems`` (an unreadable lease counts
    as torn).  Nothing is read through a link: a network dir that is one is
    skipped and noted in ``problems`` (the plugin refuses it), a lease that
    is one is skipped (the plugin never reads it)."""
    out, nets = [], set()
    for d, root in fsutil.try_roots(data_dirs, problems):
        for net in root.try_names(problems):
            st = root.lstat(net)
            if st is not None and stat.S_ISLNK(st.st_mode):
                problems.append("%s is a symbolic link: not followed" % root.join(net))
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            nd = root.try_sub(net, problems)
            if nd is None:
                continue
            nets.add(net)
            with nd:
                for name, _got in _address_names(nd.try_names(problems)):
                    if nd.is_file(name):
                        owner = parse_lease(nd.try_read(name, problems, MAX_LEASE) or b"")
                        out.append(Lease(d, net, name, os.path.join(d, net, name), owner))
    return out, nets


class Store:
    """Leases of one network.  Whatever changes files expects ``lock()`` held;
    ``exists``, ``unwritable`` and ``scan(sweep=False)`` do not need it.

    The network directory is opened once, relative to the dataDir (which a
    config names and is resolved as given), without following a link
    (cnilib.base.fsutil.Dir); every file and the index dir are then taken
    relative to it.  A link planted as the network dir refuses the store
    (``NotFollowed``, code 5); one planted as the index dir refuses ADD and
    is left alone (never written or swept through) by DEL and GC."""

    def __init__(self, data_dir, network, log, lock_timeout=LOCK_TIMEOUT):
        fsutil.check_component(network, "network name")
        self.data_dir = data_dir
        self.network = network
        self.dir = os.path.join(data_dir, network)
        self.log = log
        self.lock_timeout = lock_timeout
        self._d = None

    # -- the directory and its lock ------------------------------------------
    def _open(self, create=False):
        """The network directory's Dir, None when it does not exist (and not
        ``create``); NotFollowed for a link planted there."""
        if self._d is None:
            self._d = fsutil.open_dirs(self.data_dir, [self.network], create, 0o755, "ipam.dataDir")
        return self._d

    def _need(self):
        d = self._open()
        if d is None:
            raise errors.IOFailure("%s does not exist" % self.dir,
                                   "host-local keeps its leases there (ipam.dataDir)")
        return d

    def close(self):
        if self._d is not None:
            self._d.close()
            self._d = None

    def exists(self):
        """Whether the network directory exists; NotFollowed when a link is there."""
        return self._open() is not None

    def create(self):
        try:
            self._open(create=True)
        except errors.IOFailure as exc:
            exc.details = exc.details or "host-local keeps its leases there (ipam.dataDir)"
            raise

    def lock(self):
        return self._need().lock(LOCK, self.lock_timeout, "host-local lock", self.log)

    def _path(self, name):
        return os.path.join(self.dir, fsutil.check_component(name, "lease name"))

    # -- reading ---------------------------------------------------------------
    def _listed(self, sweep):
        """[(name, (family, int))] of every address-named entry of the
        directory listing; with ``sweep`` (lock held) temp files of dead
        writers are removed on the way."""
        d = self._open()
        if d is None:
            return []
        names = d.names()
        if sweep:
            for name in names:
                if name.startswith(fsutil.TMP_PREFIX) and d.remove(name):
                    self.log.warning("removed %s/%s left by a writer that died", self.dir, name)
        return _address_names(names)

    def scan(self, sweep=True):
        """{lease file name: owner} for every file named like an address."""
        out = {}
        d = self._open()
        for name, _got in self._listed(sweep):
            try:
                owner = parse_lease(d.read(name, MAX_LEASE))
            except OSError:
                continue        # a directory, a symlink or a FIFO: never ours
            if owner is not None:
                out[name] = owner
        return out

    def names(self):
        """{(family, int)} of every address-named entry, from the listing
        alone (a torn lease counts as taken here); sweeps like scan()."""
        return {got for _name, got in self._listed(True)}

    def owner(self, name):
        """Owner of lease ``name``; None if there is no such file."""
        try:
            return parse_lease(self._need().read(fsutil.check_component(name, "lease name"), MAX_LEASE))
        except OSError:
            return FOREIGN

    def last_reserved(self, idx):
        d = self._open()
        if d is None:
            return None
        try:
            data = d.read(LAST_PREFIX + str(idx), 256)
        except OSError:
            return None
        if data is None:
            return None
        return data.decode("ascii", "replace").strip()

    # -- writing ---------------------------------------------------------------
    def reserve(self, name, cid, ifname):
        """Take lease ``name`` for (cid, ifname).  True, or the owner holding it."""
        path = self._path(name)
        d = self._need()
        tmp = self._io("write lease", path, d.create_temp, lease_bytes(cid, ifname))
        try:
            failpoint.hit("hostlocal-before-lease-link")
            try:
                d.link(tmp, name)
                return True
            except FileExistsError:
                pass
            owner = self.owner(name)
            if owner is not TORN and owner is not None:
                return owner
            self._io("reclaim lease", path, d.rename, tmp, name)
            tmp = None
            if owner is TORN:
                self.log.warning("reclaimed %s: the file held no lease (a writer died before "
                                 "writing it); now held by %s/%s", path, cid, ifname)
            return True
        except OSError as exc:
            raise errors.IOFailure("cannot write lease %s: %s" % (path, exc.strerror),
                                   "check that %s is writable" % self.dir) from exc
        finally:
            if tmp is not None:
                d.remove(tmp)

    def set_last_reserved(self, idx, name):
        path = os.path.join(self.dir, LAST_PREFIX + str(idx))
        d = self._need()
        tmp = self._io("write", path, d.create_temp, name.encode())
        try:
            self._io("write", path, d.rename, tmp, LAST_PREFIX + str(idx))
        except BaseException:
            d.remove(tmp)
            raise

    def _io(self, what, path, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            raise errors.IOFailure("cannot %s %s: %s" % (what, path, exc.strerror),
                                   "check that %s is writable" % self.dir) from exc

    def release(self, names):
        """Remove the lease files ``names``; missing ones are fine."""
        done = []
        d = self._open()
        if d is None:
            return done
        for name in names:
            path = self._path(name)
            try:
                if d.remove(name):
                    done.append(name)
            except OSError as exc:
                raise errors.IOFailure("cannot remove lease %s: %s" % (path, exc.strerror)) from exc
            failpoint.hit("hostlocal-mid-release")
        return done

    # -- the attachment index --------------------------------------------------
    def _index_name(self, cid, ifname):
        # a container ID never holds '@' (skel checks it), so the split is unambiguous
        return fsutil.check_component("%s@%s" % (cid.strip(), ifname), "attachment")

    def _index_path(self, cid, ifname):
        return os.path.join(self.dir, INDEX_DIR, self._index_name(cid, ifname))

    def _index_dir(self, create=False, quiet=False):
        """The index dir's Dir, or None when there is none.  A link planted
        there: NotFollowed, or with ``quiet`` (DEL, GC and the reads that
        only spare work) None with a warning, the link left alone."""
        d = self._open()
        if d is None:
            return None
        try:
            return d.sub(INDEX_DIR, create, 0o755)
        except fsutil.NotFollowed as exc:
            if not quiet:
                raise
            self.log.warning("%s; the index is not used", exc.msg)
            return None

    def indexed(self, cid, ifname):
        """Lease names the index lists for (cid, ifname) that (cid, ifname)
        still holds: what ADD reads instead of every lease."""
        ix = self._index_dir(quiet=True)
        if ix is None:
            return []
        with ix:
            try:
                data = ix.read(self._index_name(cid, ifname), MAX_LEASE)
            except OSError:
                return []
        if not data:
            return []
        me = (cid.strip(), ifname)
        return [n for n in data.decode("utf-8", "replace").split()
                if addr.parse(n) is not None and self.owner(n) == me]

    def index_accounts_for(self, leases, sets):
        """Whether the index lists every lease of the directory, given the
        number of address-named entries (``leases``) and of range sets.

        Two checks, both cheap: nothing but this plugin changed the
        directory since it last stamped the index (``stamp``: the index
        dir's mtime is set to the lease dir's), and there is one lease per
        range set per indexed attachment."""
        d = self._open()
        if d is None:
            return leases == 0
        try:
            st = d.lstat(INDEX_DIR)
            if st is None:
                return leases == 0
            if not stat.S_ISDIR(st.st_mode) or st.st_mtime_ns != d.stat().st_mtime_ns:
                return False
            ix = d.sub(INDEX_DIR)
            if ix is None:
                return leases == 0
            with ix:
                entries = sum(1 for n in ix.names() if not n.startswith(fsutil.TMP_PREFIX))
        except (OSError, errors.CniError):
            return False
        return leases == entries * sets

    def stamp(self):
        """Mark the index as accounting for the directory as it is now: the
        last step of every ADD, DEL and GC (lock held).  Any later change by
        another writer (the Go plugin, a crash mid-ADD) moves the lease
        dir's mtime and breaks the match."""
        d = self._open()
        if d is None:
            return
        try:
            if d.is_dir(INDEX_DIR):
                t = d.stat().st_mtime_ns
                d.utime(INDEX_DIR, (t, t))
        except OSError:
            pass        # unwritable: ADD reads every lease

    def index(self, cid, ifname, names):
        """Record ``names`` as (cid, ifname)'s leases (lock held).  A link
        planted as the index dir refuses the ADD (NotFollowed)."""
        path = self._index_path(cid, ifname)
        try:
            with self._index_dir(create=True) as ix:
                ix.write_atomic(self._index_name(cid, ifname), "".join(n + "\n" for n in names),
                                0o644, durable=False)
        except OSError as exc:
            raise errors.IOFailure("cannot write %s: %s" % (path, exc.strerror),
                                   "check that %s is writable" % self.dir) from exc

    def unindex(self, cid, ifname):
        """Drop (cid, ifname)'s entry, and the index dir once it is empty, so
        a network with no pods looks as the Go plugin leaves it (lock held)."""
        path = self._index_path(cid, ifname)
        ix = self._index_dir(quiet=True)
        if ix is None:
            return
        try:
            with ix:
                gone = ix.remove(self._index_name(cid, ifname))
            if gone:
                self._open().rmdir(INDEX_DIR)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise errors.IOFailure("cannot remove %s: %s" % (path, exc.strerror)) from exc

    def sweep_index(self, keep):
        """Remove the index entries of attachments not in ``keep`` (a set of
        (cid, ifname)), and temp files of dead writers; the names removed."""
        ix = self._index_dir(quiet=True)
        if ix is None:
            return []
        gone = []
        with ix:
            try:
                names = ix.names()
            except OSError:
                return []
            for name in names:
                cid, _, ifname = name.partition("@")
                if name.startswith(fsutil.TMP_PREFIX) or (cid, ifname) not in keep:
                    try:
                        if ix.remove(name):
                            gone.append(name)
                    except OSError:
                        pass
        try:
            self._open().rmdir(INDEX_DIR)
        except OSError:
            pass
        return gone

    # -- by attachment ---------------------------------------------------------
    def held_by(self, cid, ifname, leases=None):
        """Lease names of (cid, ifname); if none, those of legacy id-only files
        of cid: the reference's fallback for leases written before ifnames."""
        leases = self.scan() if leases is None else leases
        cid = cid.strip()
        exact = [n for n, o in leases.items() if o == (cid, ifname)]
        if exact:
            return exact
        return [n for n, o in leases.items() if o == (cid, None)]

    def release_by_id(self, cid, ifname):
        released = self.release(self.held_by(cid, ifname))
        self.unindex(cid, ifname)
        self.stamp()
        return released

    def gc(self, valid):
        """Release every lease whose attachment is not in ``valid`` (a set of
        (cid, ifname)); legacy id-only leases are kept if their cid is."""
        cids = {c for c, _ in valid}
        doomed = []
        for name, owner in sorted(self.scan().items()):
            if owner is TORN:
                keep = False
            elif owner[1] is None:
                keep = owner[0] in cids
            else:
                keep = owner in valid
            if not keep:
                doomed.append((name, owner))
        released = self.release([n for n, _ in doomed])
        self.sweep_index(valid)
        self.stamp()
        for name, owner in doomed:
            if name in released:
                self.log.info("gc: released %s (%s)", name,
                              "empty file" if owner is TORN else "/".join(o for o in owner if o))
        return released

    # -- health ---------------------------------------------------------------
    def unwritable(self):
        """Why a lease could not be taken here now, or None.  Leaves nothing
        behind and changes no directory's mtime (the index stamp holds).

        Checked on the deepest directory that exists of the lease dir's path
        (ADD creates the rest there): a directory, on a writable file system
        with a free inode and a free block, where a lease-sized file can be
        written.  That last one is the truth the others only predict (quota,
        an immutable directory, a full disk whose reserve root may not use):
        an unnamed O_TMPFILE, written and closed, vanishes with its fd."""
        p = self.dir
        while not os.path.lexists(p):
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        if not os.path.isdir(p):
            return "%s is not a directory" % p
        try:
            vfs = os.statvfs(p)
        except OSError as exc:
            return "cannot stat %s: %s" % (p, exc.strerror)
        if vfs.f_flag & os.ST_RDONLY:
            return "%s is on a read-only file system" % p
        if vfs.f_blocks and not vfs.f_bfree:
            return "the file system of %s is full (no free block)" % p
        if vfs.f_files and not vfs.f_ffree:
            return "the file system of %s has no free inode" % p
        if not os.access(p, os.W_OK | os.X_OK):
            return "%s is not writable" % p
        return _probe_write(p)


PROBE = b"probe\r\n" + b"x" * 120     # as long as a lease of a 128-character ID


def _probe_write(d):
    """None when an unnamed file can be created and written in ``d``; else why not."""
    tmpfile = getattr(os, "O_TMPFILE", 0o20000000 | os.O_DIRECTORY)
    try:
        fd = os.open(d, tmpfile | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None     # no O_TMPFILE on this file system: the statvfs checks stand
        return "cannot create a file in %s: %s" % (d, exc.strerror)
    try:
        os.write(fd, PROBE)
    except OSError as exc:
        return "cannot write a lease in %s: %s" % (d, exc.strerror)
    finally:
        os.close(fd)
    return None
