"""The lease store: reference layout, release by attachment, legacy files, GC, lock, paths."""

import os

import pytest

from cnilib.base import errors, fsutil
from cnilib.base.log import Log
from cnilib.ipam import store as lstore
from cnilib.ipam.store import TORN, Store


@pytest.fixture
def st(tmp_path):
    s = Store(str(tmp_path), "net1", Log("host-local", {"PYCNI_LOG": "off"}))
    s.create()
    return s


def put(st, name, content):
    with open(os.path.join(st.dir, name), "wb") as f:
        f.write(content)


def names(st):
    return sorted(os.listdir(st.dir))


@pytest.mark.parametrize("data,owner", [
    (b"abc\r\neth0", ("abc", "eth0")),
    (b"abc\r\neth0\n", ("abc", "eth0")),        # Go trims the content before comparing
    (b"abc", ("abc", None)),                    # legacy, before ifnames were stored
    (b"", TORN), (b" \n", TORN), (b"\x00" * 9, TORN), (b"\xff\xfe", TORN),
    (None, None),
])
def test_parse_lease(data, owner):
    assert lstore.parse_lease(data) == owner


def test_layout_and_modes(st):
    assert st.reserve("10.0.0.2", "c1", "eth0") is True
    st.set_last_reserved(0, "10.0.0.2")
    assert names(st) == ["10.0.0.2", "last_reserved_ip.0"]     # lock appears when taken
    with st.lock():
        pass
    assert names(st) == ["10.0.0.2", "last_reserved_ip.0", "lock"]
    assert os.stat(st.dir).st_mode & 0o777 == 0o755
    assert os.stat(os.path.join(st.dir, "10.0.0.2")).st_mode & 0o777 == 0o600
    assert st.reserve("10.0.0.2", "c2", "eth0") == ("c1", "eth0")


def test_release_by_attachment_is_exact(st):
    put(st, "10.0.0.2", b"c1\r\neth0")
    put(st, "10.0.0.3", b"c1\r\neth1")
    put(st, "10.0.0.4", b"c10\r\neth0")
    put(st, "fd00::2", b"c1\r\neth0")
    with st.lock():
        assert sorted(st.release_by_id("c1", "eth0")) == ["10.0.0.2", "fd00::2"]
        assert st.release_by_id("c1", "eth0") == []           # nothing left: still fine
    assert names(st) == ["10.0.0.3", "10.0.0.4", "lock"]


def test_legacy_leases_released_by_container_id_only_as_fallback(st):
    put(st, "10.0.0.2", b"c1")
    put(st, "10.0.0.3", b"c1\r\neth1")
    with st.lock():
        assert st.held_by("c1", "eth0") == ["10.0.0.2"]
        assert st.held_by("c1", "eth1") == ["10.0.0.3"]       # exact match wins
        assert st.release_by_id("c1", "eth0") == ["10.0.0.2"]


def test_release_never_touches_other_files(st):
    put(st, "last_reserved_ip.0", b"c1\r\neth0")
    put(st, "notes", b"c1\r\neth0")
    with st.lock():
        assert st.release_by_id("c1", "eth0") == []
        assert st.gc(set()) == []
    assert names(st) == ["last_reserved_ip.0", "lock", "notes"]


def seed_gc(st):
    put(st, "10.0.0.2", b"live\r\neth0")
    put(st, "10.0.0.3", b"live\r\neth1")
    put(st, "10.0.0.4", b"dead\r\neth0")
    put(st, "10.0.0.5", b"legacylive")
    put(st, "10.0.0.6", b"legacydead")
    put(st, "10.0.0.7", b"")
    put(st, "last_reserved_ip.0", b"10.0.0.7")


@pytest.mark.parametrize("valid,kept", [
    ({("live", "eth0"), ("live", "eth1"), ("dead", "eth0"), ("legacylive", "eth0"),
      ("legacydead", "eth0")}, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]),
    ({("live", "eth0"), ("legacylive", "eth9")}, ["10.0.0.2", "10.0.0.5"]),
    (set(), []),
])
def test_gc(st, valid, kept):
    seed_gc(st)
    with st.lock():
        st.gc(valid)
    assert names(st) == sorted(kept + ["last_reserved_ip.0", "lock"])


def test_lock_wait_is_bounded(tmp_path):
    s = Store(str(tmp_path), "net1", Log("host-local", {"PYCNI_LOG": "off"}), lock_timeout=0.1)
    s.create()
    with fsutil.Flock(os.path.join(s.dir, "lock")):
        with pytest.raises(errors.TryAgainLater) as ei:
            with s.lock():
                pass
    assert ei.value.code == 11
    with s.lock():          # free again once the holder let go
        pass


@pytest.mark.parametrize("name", ["..", ".", "a/b", "x\x00y", "n" * 256])
def test_hostile_network_names_refused(tmp_path, name):
    with pytest.raises(errors.InvalidConfig):
        Store(str(tmp_path), name, Log("host-local", {"PYCNI_LOG": "off"}))
    assert os.listdir(tmp_path) == []


def test_network_dir_may_not_be_a_symlink(tmp_path):
    os.symlink("/etc", tmp_path / "net1")
    s = Store(str(tmp_path), "net1", Log("host-local", {"PYCNI_LOG": "off"}))
    with pytest.raises(fsutil.NotFollowed):
        s.exists()
    with pytest.raises(errors.IOFailure):
        s.create()


def test_unwritable_reports_why_without_creating(tmp_path):
    log = Log("host-local", {"PYCNI_LOG": "off"})
    assert Store(str(tmp_path / "a" / "b"), "net1", log).unwritable() is None
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    why = Store(str(tmp_path / "file" / "sub"), "net1", log).unwritable()
    assert "not a directory" in why


def test_the_write_probe_leaves_nothing_and_no_mtime_behind(st, tmp_path):
    """STATUS writes an unnamed file where a lease would go: the directory
    must look untouched after it (the index stamp compares its mtime)."""
    with st.lock():
        st.create()
    before = sorted(os.listdir(st.dir)), os.stat(st.dir).st_mtime_ns
    assert st.unwritable() is None
    assert (sorted(os.listdir(st.dir)), os.stat(st.dir).st_mtime_ns) == before
    assert lstore._probe_write(st.dir) is None
    assert "cannot create a file in" in lstore._probe_write(str(tmp_path / "missing"))


def test_gc_sweeps_the_index_entries_of_dead_attachments(st):
    seed_gc(st)
    with st.lock():
        st.index("live", "eth0", ["10.0.0.2"])
        st.index("dead", "eth0", ["10.0.0.4"])
        st.index("x.y-z", "e@th", ["10.0.0.9"])
        put(st, os.path.join(lstore.INDEX_DIR, fsutil.TMP_PREFIX + "1-dead"), b"10.0.0.9\n")
        st.gc({("live", "eth0"), ("x.y-z", "e@th")})
    assert sorted(os.listdir(os.path.join(st.dir, lstore.INDEX_DIR))) == ["live@eth0", "x.y-z@e@th"]
    assert st.indexed("live", "eth0") == ["10.0.0.2"]
    assert st.indexed("x.y-z", "e@th") == []        # names a lease nobody holds


def test_index_entry_never_matches_a_go_lease_lookup(st):
    """The Go plugin walks the directory recursively and compares a file's
    trimmed content with "<cid>\\r\\n<ifname>" (or the bare cid)."""
    with st.lock():
        st.index("abc", "eth0", ["10.0.0.2", "fd00::2"])
    with open(os.path.join(st.dir, lstore.INDEX_DIR, "abc@eth0"), "rb") as f:
        text = f.read().decode().strip()
    assert text not in ("abc\r\neth0", "abc")
    assert lstore.parse_lease(text.encode()) not in (("abc", "eth0"), ("abc", None))


def test_read_leases_sees_what_scan_sees(st, tmp_path):
    st.reserve("10.1.0.5", "c1", "eth0")
    put(st, "10.1.0.6", b"legacy")
    put(st, "10.1.0.7", b"")
    put(st, "last_reserved_ip.0", b"10.1.0.7")
    put(st, fsutil.TMP_PREFIX + "1-x", b"c9\r\neth0")
    os.mkdir(os.path.join(st.dir, "10.1.0.8"))
    os.symlink(os.path.join(st.dir, "10.1.0.5"), os.path.join(st.dir, "10.1.0.9"))
    st.index("c1", "eth0", ["10.1.0.5"])
    (tmp_path / "stray").write_text("not a network dir")
    problems = []
    leases, nets = lstore.read_leases([str(tmp_path), str(tmp_path / "none")], problems)
    assert nets == {"net1"} and problems == []
    scanned = st.scan(sweep=False)
    assert {lease.ip: (lease.cid, lease.ifname, lease.torn) for lease in leases} == {
        ip: (None, None, True) if o is TORN else (o[0], o[1], False) for ip, o in scanned.items()}
    assert sorted(st.scan(sweep=False)) == ["10.1.0.5", "10.1.0.6", "10.1.0.7"]
    assert all(lease.path == os.path.join(st.dir, lease.ip) and lease.network == "net1" for lease in leases)
