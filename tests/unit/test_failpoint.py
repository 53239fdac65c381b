"""cnilib.base.failpoint: inert when unset, named actions, the ``*`` wildcard and tracing."""

import pytest

from cnilib.base import failpoint


@pytest.fixture
def fp(monkeypatch):
    def set_spec(spec, trace=None):
        if spec is None:
            monkeypatch.delenv("PYCNI_FAILPOINTS", raising=False)
        else:
            monkeypatch.setenv("PYCNI_FAILPOINTS", spec)
        if trace:
            monkeypatch.setenv("PYCNI_FAILPOINTS_TRACE", str(trace))
        failpoint.reset()
    yield set_spec
    monkeypatch.delenv("PYCNI_FAILPOINTS", raising=False)
    failpoint.reset()


def test_unset_is_inert(fp):
    fp(None)
    failpoint.hit("anything")
    assert failpoint._ACTIONS is None          # not even parsed


def test_error_action_names_the_point(fp):
    fp("a=error")
    failpoint.hit("b")
    with pytest.raises(RuntimeError, match="failpoint a"):
        failpoint.hit("a")


def test_wildcard_trace_lists_points_in_order_and_named_actions_win(fp, tmp_path):
    trace = tmp_path / "trace"
    fp("*=trace,c=error", trace)
    failpoint.hit("a")
    failpoint.hit("b")
    with pytest.raises(RuntimeError):
        failpoint.hit("c")
    assert trace.read_text().split() == ["a", "b"]


def test_trace_does_not_follow_a_symlink(fp, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "trace").symlink_to(victim)
    fp("*=trace", tmp_path / "trace")
    with pytest.raises(OSError):
        failpoint.hit("a")
    assert victim.read_text() == "keep"
