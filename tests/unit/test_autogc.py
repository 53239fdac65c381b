"""gc --auto's judgement, without root: where a recorded netns path leads
now, and the verdict on an attachment from what its records say.  The
netns files are this process's own (/proc/self/ns/net, readable by anyone)."""

import os
import subprocess
import sys

from cnilib.ops import autogc
from cnilib.ops.whois import Row


class Veth:
    def __init__(self, name, link_netnsid):
        self.name, self.link_netnsid = name, link_netnsid


class Peer:
    def __init__(self, name):
        self.name = name


class Ref:
    def __init__(self, path, ino):
        self.path, self.ino = path, ino


class Cache:
    def __init__(self, netns, path="/cache/x"):
        self.netns, self.path = netns, path


OWN = "/proc/self/ns/net"


def own_ino():
    st = os.stat(OWN)
    return (st.st_dev, st.st_ino)


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_netns_state_by_device_and_inode(tmp_path):
    dev, ino = own_ino()
    nsdev = autogc.nsfs_dev()
    assert nsdev == dev
    assert autogc.netns_state(OWN, None, nsdev).kind == "netns"
    assert autogc.netns_state(OWN, (dev, ino), nsdev).kind == "same"
    assert autogc.netns_state(OWN, (None, ino), nsdev).kind == "same"       # a record before dev was kept
    st = autogc.netns_state(OWN, (dev, ino + 1), nsdev)
    assert st.kind == "other" and "names another namespace now" in st.why
    assert autogc.netns_state(OWN, (dev + 1, ino), nsdev).kind == "other"
    # gone from a directory that is there; a plain file left where the mount was
    assert autogc.netns_state(str(tmp_path / "pod1"), (dev, ino), nsdev).kind == "gone"
    (tmp_path / "pod2").write_text("")
    st = autogc.netns_state(str(tmp_path / "pod2"), None, nsdev)
    assert st.kind == "gone" and "plain file" in st.why
    # a process-held netns whose process exited
    st = autogc.netns_state("/proc/%d/ns/net" % dead_pid(), None, nsdev)
    assert st.kind == "gone" and "has exited" in st.why
    # the directory itself is not here: this view may not see the mounts
    st = autogc.netns_state(str(tmp_path / "no-such-dir" / "pod"), None, nsdev)
    assert st.kind == "unknown" and "this view may not see" in st.why
    for bad in ("", "relative/path", "/with\x00nul", None):
        assert autogc.netns_state(bad, None, nsdev).kind == "unknown"


def test_judge_live_dead_unknown(tmp_path):
    dev, ino = own_ino()
    nsdev = autogc.nsfs_dev()
    gone = str(tmp_path / "gone")

    def row(cid, cache=None, veth=None):
        r = Row("net", cid, "eth0")
        r.cache, r.veth = cache, veth
        return r
    # the kernel's word: a host veth whose peer is in another netns
    v = autogc.judge(row("a", Cache(gone), Veth("veth1", 3)), [], {}, nsdev)
    assert v.state == autogc.LIVE and "veth1" in v.why
    # a veth whose peer is still here (an ADD killed before the move) proves nothing
    assert autogc.judge(row("a", Cache(gone), Veth("veth1", None)), [], {}, nsdev).state == autogc.DEAD
    # the cache alone
    assert autogc.judge(row("a", Cache(gone)), [], {}, nsdev).state == autogc.DEAD
    assert autogc.judge(row("a", Cache(OWN)), [], {}, nsdev).state == autogc.LIVE
    # nothing recorded where the netns was: kept
    v = autogc.judge(row("a"), [], {}, nsdev)
    assert v.state == autogc.UNKNOWN and "no record says where its netns was" in v.why
    assert autogc.judge(row("a", Cache("")), [], {}, nsdev).state == autogc.UNKNOWN
    # a rule record with the device/inode of ADD decides for the cache's path too
    rec = {"netns": OWN, "netns_ino": ino + 7, "netns_dev": dev, "_kind": "masq"}
    v = autogc.judge(row("a", Cache(OWN)), [rec], {}, nsdev)
    assert v.state == autogc.DEAD and "masq record" in v.why and "another namespace" in v.why
    same = dict(rec, netns_ino=ino)
    assert autogc.judge(row("a", Cache(gone)), [same], {}, nsdev).state == autogc.LIVE   # life wins
    assert autogc.judge(row("a"), [dict(rec, netns=gone)], {}, nsdev).state == autogc.DEAD
    assert autogc.judge(row("a"), [{"netns": OWN}], {}, nsdev).state == autogc.UNKNOWN   # no inode kept
    # the cached path opens, but its ifname there is another attachment's veth peer: reused
    other = row("b", veth=Veth("veth9", 1))
    other.peer, other.netns = Peer("eth0"), Ref(OWN, (dev, ino))
    by_netns = autogc.peers_by_netns([other])
    v = autogc.judge(row("a", Cache(OWN)), [], by_netns, nsdev)
    assert v.state == autogc.DEAD and "was reused" in v.why and "net/b/eth0" in v.why
    # ... but not when the name there is another one (a second network of one pod)
    other.peer = Peer("net1")
    assert autogc.judge(row("a", Cache(OWN)), [], autogc.peers_by_netns([other]), nsdev).state == autogc.LIVE
    # an unknown path state is never taken for death
    v = autogc.judge(row("a", Cache(str(tmp_path / "nodir" / "x"))), [], {}, nsdev)
    assert v.state == autogc.UNKNOWN


def test_netns_mounts_counts_network_namespaces_only(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(
        "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n"
        "46 45 0:4 net:[4026532308] /run/netns/a rw shared:2 - nsfs nsfs rw\n"
        "47 45 0:4 mnt:[4026532175] /run/mnt/b rw - nsfs nsfs rw\n"
        "48 45 0:4 net:[4026532306] /run/netns/c rw shared:5 master:1 - nsfs nsfs rw\n")
    assert autogc.netns_mounts(str(mi)) == 2
    mi.write_text("22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n")
    assert autogc.netns_mounts(str(mi)) == 0


def test_log_and_output_text_is_one_escaped_line():
    assert autogc.clean("pod\x1b]0;owned\x07\nnext") == "pod\\x1b]0;owned\\x07\\nnext"
    assert autogc.clean("plain") == "plain"


def test_default_bin_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("CNI_PATH", "/a::/b")
    assert autogc.default_bin_dirs() == ["/a", "/b"]
    monkeypatch.delenv("CNI_PATH")
    d = tmp_path / "lib"
    d.mkdir()
    (d / "pycni").write_text("")
    os.symlink(str(d / "pycni"), str(tmp_path / "pycni"))
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "pycni"), "gc", "--auto"])
    assert autogc.default_bin_dirs()[:2] == [str(tmp_path), str(d)]
    assert autogc.default_bin_dirs()[2:] == ["/opt/cni/bin", "/usr/libexec/cni"]
