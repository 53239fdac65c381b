"""The distribution roots the matrix runs in: what a command in one sees,
and that running it leaves the cached root and the machine's mounts as
they were."""

import os

import distroots
import pytest

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def bullseye():
    try:
        return distroots.root("11")
    except distroots.RootUnavailable as exc:
        pytest.skip(str(exc))


def _mounts(under):
    """Mount points at or below ``under`` (other tests mount netns meanwhile)."""
    with open("/proc/self/mountinfo") as f:
        points = (line.split()[4] for line in f)
        return sorted(p for p in points if p == under or p.startswith(under.rstrip("/") + "/"))


def test_root_is_the_distribution(bullseye):
    r = distroots.InRoot(bullseye).run("python3", "-c", "import sys; print(sys.version_info[:2])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(3, 9)"
    r = distroots.InRoot(bullseye).run("ldd", "--version")
    assert "2.31" in r.stdout.splitlines()[0]


def test_in_sandbox_netns_with_its_pods_visible(bullseye, host, ctr, tmp_path):
    before = _mounts(bullseye)
    assert before == []
    stamp = os.stat(os.path.join(bullseye, ".pycni-root")).st_mtime
    (tmp_path / "hello").write_text("hi\n")
    inroot = distroots.InRoot(bullseye, binds={str(tmp_path): "/tmp/work"})
    host.run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    r = inroot.run("sh", "-c", "ip -o link show; ls /var/run/netns; cat /tmp/work/hello; "
                   "touch /tmp/work/x 2>&1 || echo read-only", netns=host.name)
    assert r.returncode == 0, r.stderr
    names = [line.split(":")[1].strip().split("@")[0] for line in r.stdout.splitlines() if line[:1].isdigit()]
    assert sorted(names) == ["d0", "d1", "lo"]         # the sandbox's links, not the machine's
    assert ctr.name in r.stdout.split()                # CNI_NETNS paths resolve in the root
    assert "hi" in r.stdout and "read-only" in r.stdout
    assert _mounts(bullseye) == []                     # nothing stays mounted on the root
    assert os.stat(os.path.join(bullseye, ".pycni-root")).st_mtime == stamp
    assert not os.path.exists(os.path.join(bullseye, "run", "netns"))   # nothing made in the cache


def test_root_is_read_only_but_its_tmp_and_run_are_not(bullseye):
    r = distroots.InRoot(bullseye).run(
        "sh", "-c", "touch /etc/pycni-x 2>&1; touch /tmp/x /run/x && echo writable; "
        "echo '{}' | cat /dev/stdin; ls -l /dev/stdout /dev/stderr | wc -l")
    assert r.returncode == 0, r.stderr
    assert "Read-only file system" in r.stdout and "writable" in r.stdout
    assert "{}" in r.stdout and r.stdout.strip().endswith("2")        # /dev as a real one has it
    assert not os.path.exists(os.path.join(bullseye, "etc", "pycni-x"))
    with pytest.raises(ValueError):
        distroots.InRoot(bullseye, binds={"/tmp": "/etc/x"})         # binds only under /tmp
