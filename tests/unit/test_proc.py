"""cnilib.base.proc: run and start helpers without a shell."""

import os

import pytest

from cnilib.base import proc


def test_run_feeds_large_stdin_and_collects_output():
    r = proc.run(["cat"], stdin=b"x" * 300000)
    assert r.rc == 0 and len(r.out) == 300000


def test_start_returns_before_the_helper_finishes(tmp_path):
    """The reader blocks until the writer, started after it, opens the fifo:
    this only completes if start() did not wait for the reader."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    reader = proc.start(["cat", fifo], timeout=10)
    writer = proc.start(["tee", fifo], stdin=b"hi", timeout=10)
    assert reader.wait().out == b"hi"
    assert writer.wait().rc == 0


def test_start_hands_small_stdin_over_at_once():
    p = proc.start(["cat"], stdin=b"hello")
    assert p.wait().out == b"hello"


def test_missing_program_and_timeout():
    with pytest.raises(FileNotFoundError):
        proc.run(["pycni-no-such-program"])
    with pytest.raises(TimeoutError):
        proc.run(["sleep", "5"], timeout=0.2)
