"""Per-attachment records of what the suite put in its shared nftables tables.

One small JSON file per attachment and kind,
``<state dir>/nft/<kind>/<attachment hash>``, holding the attachment key
(network, container ID, ifname) and the elements and chains it owns.  It is
written atomically BEFORE the kernel change and removed AFTER the teardown,
so DEL and GC find an attachment's objects without listing any table, and
a missing record means nothing of ours exists under that key (a record lost
anyway is covered by GC's sweep, which reads the element comments).

The state dir is resolved as configured; ``nft`` and ``<kind>`` below it are
opened without following a link (cnilib.base.fsutil.Dir).  A link planted
there refuses ``save`` (code 5, naming it); to the readers every record then
counts as unreadable, so DEL finds the attachment's objects by comment and
nothing is read or removed through the link.
"""

import os

from cnilib.base import errors, failpoint, fsutil, jsonio, paths
from cnilib.firewall import naming


def _dir(kind):
    return os.path.join(paths.state_dir(), "nft", kind)


def _path(kind, att_hash):
    return os.path.join(_dir(kind), att_hash)


REFUSED = "refused"


def _open(kind, create=False):
    """``<state dir>/nft/<kind>`` held open; None when it does not exist,
    REFUSED (readers) when a link was planted on the way.  A writer
    (``create``) gets NotFollowed instead."""
    try:
        return fsutil.open_dirs(paths.state_dir(), ["nft", kind], create, 0o700, "state directory")
    except fsutil.NotFollowed:
        if create:
            raise
        return REFUSED


def _parse(raw):
    try:
        rec = jsonio.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("net", "cid", "if")):
        return None
    return rec


def load_hash(kind, att_hash):
    """The record stored under an attachment hash, or None (missing or unreadable)."""
    d = _open(kind)
    if d is None or d is REFUSED:
        return None
    with d:
        return _load_in(d, att_hash)


def _load_in(d, name):
    try:
        raw = d.read(fsutil.check_component(name, "record name"))
    except (OSError, errors.CniError):
        return None
    return None if raw is None else _parse(raw)


def unreadable(kind, network, container_id, ifname):
    """True when the attachment's record file exists but cannot be read
    (torn, emptied, not ours), or its directory is a planted link: its
    objects must then be found by comment."""
    d = _open(kind)
    if d is REFUSED:
        return True
    if d is None:
        return False
    with d:
        exists = d.lstat(naming.attachment_hash(network, container_id, ifname)) is not None
    return exists and load(kind, network, container_id, ifname) is None


def load(kind, network, container_id, ifname):
    rec = load_hash(kind, naming.attachment_hash(network, container_id, ifname))
    if rec is None or (rec["net"], rec["cid"], rec["if"]) != (network, container_id, ifname):
        return None
    return rec


def save(kind, network, container_id, ifname, data):
    """Write the attachment's record (``data`` plus its key) atomically."""
    rec = dict(data, net=network, cid=container_id)
    rec["if"] = ifname
    d = _dir(kind)
    failpoint.hit("fw-record-before-write")
    try:
        with _open(kind, create=True) as h:
            # not fsync'd: the nftables state it describes does not survive a
            # reboot either, and a crashed writer leaves the old file or the new
            h.write_atomic(naming.attachment_hash(network, container_id, ifname), jsonio.dumps(rec),
                           durable=False)
    except OSError as exc:
        raise errors.IOFailure("cannot write the %s record of %s/%s in %s: %s"
                               % (kind, container_id, ifname, d, exc.strerror or exc)) from exc
    failpoint.hit("fw-record-after-write")
    return rec


def netns_identity(path):
    """{"netns": path, "netns_ino": inode, "netns_dev": device} of the
    attachment's netns, so a later ADD can tell whether the holder of a key
    is still alive; {} when the path is unknown or unreadable."""
    if not path:
        return {}
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"netns": path, "netns_ino": st.st_ino, "netns_dev": st.st_dev}


def alive(rec):
    """Whether the attachment of ``rec`` still has its netns: False when the
    recorded path is gone or now names another namespace, None when the
    record does not say (then it counts as alive).  The device is compared
    too (records before it was kept compare the inode alone): a mount point
    left behind on tmpfs may carry any inode number."""
    path, ino, dev = rec.get("netns"), rec.get("netns_ino"), rec.get("netns_dev")
    if not isinstance(path, str) or not isinstance(ino, int):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_ino == ino and (not isinstance(dev, int) or st.st_dev == dev)


def remove(kind, network, container_id, ifname):
    d = _open(kind)
    if d is None or d is REFUSED:
        return False
    with d:
        try:
            return d.remove(naming.attachment_hash(network, container_id, ifname))
        except OSError as exc:
            raise errors.IOFailure("cannot remove the %s record of %s/%s: %s"
                                   % (kind, container_id, ifname, exc.strerror)) from exc


def scan(kind, network=None):
    """Every readable record of ``kind`` (of ``network`` when given)."""
    d = _open(kind)
    if d is None or d is REFUSED:
        return []
    out = []
    with d:
        try:
            names = d.names()
        except OSError:
            return []
        for name in sorted(names):
            if name.startswith("."):
                continue
            rec = _load_in(d, name)
            if rec is not None and (network is None or rec["net"] == network):
                out.append(rec)
    return out
