"""The pure parts of doctor's issue-19 checks: the iptables backend states,
VTEP duplicates, the node spec, the checksum kernel table, the network
managers' config readers, the runtimes' config readers and what a plugin
binary is.  No root, no kernel."""

import os

import pytest

from cnilib.ops.doctor import context, report

# ---------------------------------------------------------------- report: safe fixes

def test_a_fix_marked_safe_is_listed_once_in_both_lists():
    c = report.Check("x", "x")
    c.add_fix("print only")
    c.add_fix("ethtool -K flannel.1 tx-checksum-ip-generic off", safe=True)
    c.add_fix("ethtool -K flannel.1 tx-checksum-ip-generic off", safe=True)
    c.set("WARN", "w", [], ["print only"])
    d = c.as_dict()
    assert d["fix"] == ["print only", "ethtool -K flannel.1 tx-checksum-ip-generic off"]
    assert d["safeFix"] == ["ethtool -K flannel.1 tx-checksum-ip-generic off"]


def test_plain_escapes_what_a_program_printed():
    assert report.plain(b"bad\x1b[31m\nsecond\n") == "bad\\x1b[31m | second"
    assert len(report.plain("x" * 1000, 50)) == 50


# ---------------------------------------------------------------- context

@pytest.mark.parametrize("text,want", [("5.4.0-150-generic", (5, 4, 0)),
                                       ("3.10.0-1160.el7.x86_64", (3, 10, 0)),
                                       ("6.18.44-fc-v1300", (6, 18, 44)), ("5.7", (5, 7, 0)), ("junk", None)])
def test_kernel_release(text, want):
    assert context.parse_kernel_release(text) == want


def test_default_iptables_backend_follows_the_alternatives(tmp_path):
    for target, want in (("xtables-nft-multi", "iptables-nft"), ("xtables-legacy-multi", "iptables-legacy"),
                         ("iptables-multi", "iptables-legacy")):
        (tmp_path / target).write_text("")
        link = tmp_path / ("save-" + target)
        os.symlink(str(tmp_path / target), str(link))
        assert context.ipt_default_backend(lambda name, link=link: str(link)) == want
    assert context.ipt_default_backend(lambda name: None) is None


