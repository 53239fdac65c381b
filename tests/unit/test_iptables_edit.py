"""cnilib.firewall.iptables.edit: the one save -> edit -> restore of every
rule set, with iptables-save/-restore and the lock stood in for (no root)."""

import pytest

from cnilib.base import errors
from cnilib.firewall import iptables


@pytest.fixture
def calls(monkeypatch):
    got = []

    class Lock:
        def __enter__(self):
            got.append("lock")
            return self

        def __exit__(self, *exc):
            got.append("unlock")
            return False

    def save(family, table):
        got.append(("save", family, table))
        if table == "broken":
            raise errors.Internal("iptables-save -t broken failed (exit 1)")
        return "*%s\n:CNI-X - [0:0]\n-A POSTROUTING -j CNI-X\nCOMMIT\n" % table

    def restore(family, table, lines, what="iptables batch"):
        got.append(("restore", family, table, list(lines), what))
    monkeypatch.setattr(iptables, "lock", Lock)
    monkeypatch.setattr(iptables, "save", save)
    monkeypatch.setattr(iptables, "restore", restore)
    return got


def test_fn_turns_the_saved_table_into_one_batch_under_the_lock(calls):
    def drop_chain(saved):
        assert "-A POSTROUTING -j CNI-X" in saved
        return ["-D" + r[2:] for r in iptables.rules(saved, "POSTROUTING")] + ["-X CNI-X"]
    lines = iptables.edit(6, "nat", drop_chain, "teardown of c1")
    assert lines == ["-D POSTROUTING -j CNI-X", "-X CNI-X"]
    assert calls == ["lock", ("save", 6, "nat"), ("restore", 6, "nat", lines, "teardown of c1"), "unlock"]


def test_a_failure_is_raised_and_the_lock_released(calls):
    def boom(saved):
        raise errors.Internal("rendering failed")
    with pytest.raises(errors.Internal, match="rendering failed"):
        iptables.edit(4, "filter", boom, "x")
    assert calls == ["lock", ("save", 4, "filter"), "unlock"]


def test_an_unreadable_table_raises_unless_the_caller_sweeps(calls):
    with pytest.raises(errors.Internal, match="broken"):
        iptables.edit(4, "broken", lambda saved: ["-F X"], "x")
    assert iptables.edit(4, "broken", lambda saved: ["-F X"], "x", unreadable_ok=True) is None
    assert ("restore", 4, "broken", ["-F X"], "x") not in calls and calls[-1] == "unlock"


def test_the_iptables_lock_wait_is_bounded_with_code_11(tmp_path, monkeypatch):
    """Issue 16 item 13: the suite's iptables lock was waited for without a
    bound; now TryAgainLater after lock_wait(), naming the holder."""
    import fcntl
    import os
    p = str(tmp_path / "run" / "iptables.lock")
    monkeypatch.setenv("PYCNI_IPTABLES_LOCK_WAIT", "0.2")
    with iptables.lock(p):
        pass        # free: taken at once
    os.makedirs(os.path.dirname(p), exist_ok=True)
    fd = os.open(p, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)      # an open file description of its own: a second holder
    try:
        with pytest.raises(errors.TryAgainLater, match=r"iptables lock .* still held after 0.2 s by pid %d"
                           % os.getpid()):
            with iptables.lock(p):
                pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("value, wait", [("", 30.0), ("2.5", 2.5), ("0", 30.0), ("-1", 30.0),
                                         ("x", 30.0), ("1e9", 30.0)])
def test_lock_wait_comes_from_the_environment_within_sense(monkeypatch, value, wait):
    monkeypatch.setenv("PYCNI_IPTABLES_LOCK_WAIT", value)
    assert iptables.lock_wait() == wait
