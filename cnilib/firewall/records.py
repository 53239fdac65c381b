"""Per-attachment records of what the suite put in its shared nftables tables.

One small JSON file per attachment and kind,
``<state dir>/nft/<kind>/<attachment hash>``, holding the attachment key
(network, container ID, ifname) and the elements and chains it owns.  It is
written atomically BEFORE the kernel change and removed AFTER the teardown,
so DEL and GC find an attachment's objects without listing any table, and
a missing record means nothing of ours exists under that key (a record lost
anyway is covered by GC's sweep, which reads the element comments).
"""

import os

from cnilib.base import errors, failpoint, fsutil, jsonio, paths
from cnilib.firewall import naming


def _dir(kind):
    return os.path.join(paths.state_dir(), "nft", kind)


def _path(kind, att_hash):
    return os.path.join(_dir(kind), att_hash)


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
    try:
        raw = fsutil.read_file(_path(kind, att_hash))
    except OSError:
        return None
    return None if raw is None else _parse(raw)


def unreadable(kind, network, container_id, ifname):
    """True when the attachment's record file exists but cannot be read
    (torn, emptied, not ours): its objects must then be found by comment."""
    path = _path(kind, naming.attachment_hash(network, container_id, ifname))
    return os.path.lexists(path) and load(kind, network, container_id, ifname) is None


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
        fsutil.ensure_dir(d)
        # not fsync'd: the nftables state it describes does not survive a
        # reboot either, and a crashed writer leaves the old file or the new
        fsutil.write_atomic(_path(kind, naming.attachment_hash(network, container_id, ifname)),
                            jsonio.dumps(rec), durable=False)
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
    try:
        return fsutil.remove(_path(kind, naming.attachment_hash(network, container_id, ifname)))
    except OSError as exc:
        raise errors.IOFailure("cannot remove the %s record of %s/%s: %s"
                               % (kind, container_id, ifname, exc.strerror)) from exc


def scan(kind, network=None):
    """Every readable record of ``kind`` (of ``network`` when given)."""
    d = _dir(kind)
    try:
        names = os.listdir(d)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if name.startswith("."):
            continue
        rec = load_hash(kind, name)
        if rec is not None and (network is None or rec["net"] == network):
            out.append(rec)
    return out
