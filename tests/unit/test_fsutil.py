import os

import pytest

from cnilib.base import errors, fsutil, paths


def test_write_atomic_and_read(tmp_path):
    p = tmp_path / "f"
    fsutil.write_atomic(str(p), b"one")
    fsutil.write_atomic(str(p), "two")
    assert fsutil.read_file(str(p)) == b"two"
    assert oct(os.stat(p).st_mode & 0o777) == "0o600"
    assert [n for n in os.listdir(tmp_path)] == ["f"]


def test_read_refuses_symlink(tmp_path):
    (tmp_path / "target").write_text("x")
    os.symlink(tmp_path / "target", tmp_path / "link")
    with pytest.raises(OSError):
        fsutil.read_file(str(tmp_path / "link"))


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "x\x00", "y" * 256, ".pycni-tmp-1"])
def test_check_component(bad):
    with pytest.raises(errors.InvalidConfig):
        fsutil.check_component(bad)


def test_ensure_dir_refuses_world_writable_and_a_file_and_a_link(tmp_path):
    d = tmp_path / "ww"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(errors.IOFailure):
        fsutil.ensure_dir(str(d))
    (tmp_path / "f").write_text("x")
    with pytest.raises(errors.IOFailure):
        fsutil.ensure_dir(str(tmp_path / "f"))
    # a directory the suite keeps is never a link (pycni install's
    # .pycni-versions); a configured one may be a link an operator made
    os.mkdir(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "sl")
    with pytest.raises(errors.IOFailure, match="symlink"):
        fsutil.ensure_dir(str(tmp_path / "sl"))
    assert fsutil.ensure_root(str(tmp_path / "sl")) == str(tmp_path / "sl")
    with pytest.raises(errors.IOFailure):
        fsutil.ensure_root(str(d))


def test_flock_times_out_with_code_11(tmp_path):
    p = str(tmp_path / "lock")
    with fsutil.Flock(p):
        with pytest.raises(errors.TryAgainLater) as ei:
            with fsutil.Flock(p, timeout=0.1):
                pass
        assert ei.value.code == 11


def test_sweep_temps(tmp_path):
    t = tmp_path / (fsutil.TMP_PREFIX + "123-ab")
    t.write_text("torn")
    os.utime(t, (0, 0))
    assert fsutil.sweep_temps(str(tmp_path)) == 1
    assert not t.exists()


def test_write_atomic_not_durable_skips_only_the_fsyncs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: calls.append(fd))
    p = str(tmp_path / "rec")
    fsutil.write_atomic(p, "one", durable=False)
    assert calls == [] and fsutil.read_file(p) == b"one"
    fsutil.write_atomic(p, "two")
    assert len(calls) == 2 and fsutil.read_file(p) == b"two"       # the file, then its directory
    assert os.listdir(tmp_path) == ["rec"]


def test_flock_logs_its_wait_and_hold_at_debug_level(tmp_path):
    from cnilib.base.log import Log
    log = Log("t", {"PYCNI_LOG_LEVEL": "debug"})
    with fsutil.Flock(str(tmp_path / "lock"), what="test lock", log=log):
        pass
    events = [ln.split("debug: ")[1].split(" after ")[0] for ln in log.lines]
    assert events == ["test lock taken", "test lock released"]
    stamp = log.lines[0].split()[0]
    assert len(stamp) == 12 and stamp[2] == ":" and stamp[8] == "."       # HH:MM:SS.mmm
    quiet = Log("t", {})
    quiet.info("no stamp at info level")
    assert quiet.lines == ["  no stamp at info level"]


@pytest.mark.parametrize("bad", ["", "/tmp/a\x00b", None, 5])
def test_check_path_refuses_what_no_syscall_takes(bad):
    with pytest.raises(errors.InvalidConfig):
        fsutil.check_path(bad, "dataDir")
    assert fsutil.check_path("relative/ok", "dataDir") == "relative/ok"


def test_ensure_dir_refuses_a_world_writable_parent_unless_sticky(tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(errors.IOFailure, match="world-writable"):
        fsutil.ensure_dir(str(parent / "state"))
    os.chmod(parent, 0o1777)                 # like /tmp
    assert fsutil.ensure_dir(str(parent / "state")) == str(parent / "state")


def test_a_symlink_planted_as_a_lock_is_refused_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.chmod(victim, 0o644)
    os.symlink(victim, tmp_path / "lock")
    with pytest.raises(errors.IOFailure, match="symlink"):
        with fsutil.Flock(str(tmp_path / "lock")):
            pass
    assert victim.read_text() == "keep" and victim.stat().st_mode & 0o777 == 0o644


# ---- directories held by fd: nothing below a configured dir goes through a link --------------------

def victim_dir(tmp_path, names):
    v = tmp_path / "victim"
    v.mkdir()
    for name in names:
        (v / name).write_text("precious %s\n" % name)
    return v


def contents(d):
    return {n: (d / n).read_text() for n in sorted(os.listdir(d))}


def test_a_dir_link_below_the_root_is_refused_and_left_alone(tmp_path):
    v = victim_dir(tmp_path, ["a"])
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(v, root / "sub")
    with fsutil.open_root(str(root)) as d:
        for create in (False, True):
            with pytest.raises(fsutil.NotFollowed) as ei:
                d.sub("sub", create=create)
            assert ei.value.code == 5 and ei.value.path == str(root / "sub")
            assert "symbolic link" in ei.value.msg and "rm %s" % (root / "sub") in ei.value.details
    assert os.path.islink(root / "sub") and contents(v) == {"a": "precious a\n"}


def test_the_configured_root_may_be_a_link_an_operator_made(tmp_path):
    real = tmp_path / "disk" / "cni"
    real.mkdir(parents=True)
    os.symlink(real, tmp_path / "cni")
    with fsutil.open_dirs(str(tmp_path / "cni"), ["networks", "net1"], create=True) as d:
        d.write_atomic("10.0.0.2", b"c1\r\neth0")
    assert (real / "networks" / "net1" / "10.0.0.2").read_bytes() == b"c1\r\neth0"
    assert fsutil.ensure_root(str(tmp_path / "cni")) == str(tmp_path / "cni")


def test_dir_files_are_never_followed_nor_blocked_on(tmp_path):
    v = victim_dir(tmp_path, ["f"])
    d = tmp_path / "d"
    d.mkdir()
    os.symlink(v / "f", d / "link")
    os.mkfifo(d / "fifo")
    (d / "sub").mkdir()
    with fsutil.open_root(str(d)) as h:
        assert h.read("missing") is None
        for name in ("link", "fifo", "sub"):
            with pytest.raises(OSError):
                h.read(name)                    # a FIFO would block an open() without O_NONBLOCK
        h.write_atomic("link", b"new")          # replaces the link, never writes through it
        assert h.remove("fifo") and not h.remove("fifo")
    assert (d / "link").read_bytes() == b"new" and not os.path.islink(d / "link")
    assert contents(v) == {"f": "precious f\n"}


def test_a_lock_is_taken_relative_to_its_dir(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    v = victim_dir(tmp_path, ["f"])
    os.symlink(v / "f", d / "lock")
    with fsutil.open_root(str(d)) as h:
        with pytest.raises(errors.IOFailure, match="symlink"):
            with h.lock("lock"):
                pass
        with h.lock("other"):
            pass
    assert contents(v) == {"f": "precious f\n"}


def test_run_and_state_dirs_are_roots(tmp_path, monkeypatch):
    """The run dir and the state dir are configured directories: a link
    there is the operator's; what the suite keeps below them is not."""
    real = tmp_path / "real-run"
    real.mkdir()
    os.symlink(real, tmp_path / "run")
    monkeypatch.setenv("PYCNI_RUN_DIR", str(tmp_path / "run"))
    assert fsutil.ensure_root(paths.run_dir()) == str(tmp_path / "run")


def test_a_fifo_where_a_state_file_goes_is_refused_without_blocking(tmp_path):
    """A FIFO planted as a lease (or a flannel saved config, a tuning or
    firewall record, a cached result) blocked the open until a writer
    came: host-local DEL hung on the directory scan.  Run in a child, so a
    regression hangs that, not the suite: the store skips the FIFO, the
    flannel DEL sees a corrupt saved config it can rebuild and remove."""
    import subprocess
    import sys

    from cnitest import ROOT
    (tmp_path / "net1").mkdir()
    os.mkfifo(tmp_path / "net1" / "10.77.0.5")
    os.mkfifo(tmp_path / "ctr1")
    prog = (
        "import sys\nsys.path.insert(0, %r)\nfrom cnilib.base import fsutil\n"
        "from cnilib.base.log import Log\n"
        "from cnilib.ipam.store import Store\nfrom cnilib import flannel\n"
        "try:\n    fsutil.read_file(%r)\nexcept OSError as e:\n    print('read', e.errno, e.strerror)\n"
        "st = Store(%r, 'net1', Log('t', {'PYCNI_LOG': 'off'}))\n"
        "print('scan', st.scan(sweep=False), st.owner('10.77.0.5'))\n"
        "s = flannel.load_saved(%r, 'ctr1')\nprint('saved', s.state)\n"
        % (ROOT, str(tmp_path / "ctr1"), str(tmp_path), str(tmp_path)))
    done = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=20)
    want = ["read 22 not a regular file", "scan {} foreign", "saved corrupt"]
    assert done.stdout.splitlines() == want, done


def _hold_in_child(path):
    """A child process holding the flock on ``path`` until its stdin closes."""
    import subprocess
    import sys
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT)\n"
         "fcntl.flock(fd,fcntl.LOCK_EX)\nprint('held',flush=True)\nsys.stdin.read()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    return child


def test_flock_timeout_names_the_holder(tmp_path):
    p = str(tmp_path / "lock")
    child = _hold_in_child(p)
    try:
        with pytest.raises(errors.TryAgainLater) as got:
            with fsutil.Flock(p, timeout=0.2, what="test lock"):
                pass
    finally:
        child.stdin.close()
        child.wait()
    assert "still held after 0.2 s by pid %d (python" % child.pid in got.value.msg


def test_lock_holder_reads_only_held_flocks_and_escapes_the_name(tmp_path):
    p = tmp_path / "lock"
    p.write_text("")
    st = os.stat(p)
    ident = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    (tmp_path / "proc" / "4242").mkdir(parents=True)
    (tmp_path / "proc" / "4242" / "comm").write_bytes(b"evil\x1b]0;x\x07\n")
    locks = tmp_path / "locks"
    locks.write_text("1: POSIX  ADVISORY  WRITE 17 %s 0 EOF\n"
                     "2: FLOCK  ADVISORY  WRITE 4242 %s 0 EOF\n"
                     "2: -> FLOCK  ADVISORY  WRITE 99 %s 0 EOF\n" % (ident, ident, ident))
    fd = os.open(p, os.O_RDONLY)
    try:
        assert fsutil.lock_holder(fd, str(locks), str(tmp_path / "proc")) == r"pid 4242 (evil\x1b]0;x\x07)"
        locks.write_text("2: FLOCK  ADVISORY  WRITE 4243 %s 0 EOF\n" % ident)
        assert fsutil.lock_holder(fd, str(locks), str(tmp_path / "proc")) == "pid 4243"
        locks.write_text("2: FLOCK  ADVISORY  WRITE 0 %s 0 EOF\n" % ident)
        assert fsutil.lock_holder(fd, str(locks), str(tmp_path / "proc")) is None
        assert fsutil.lock_holder(fd, str(tmp_path / "none"), str(tmp_path / "proc")) is None
    finally:
        os.close(fd)
