"""doctor --fix without root: how a safe line becomes one command, which
lines are proposed, the prompt, and the run (with fixes that are plain
programs: ``true``, ``false``, ``sh``)."""

import io
import types

import pytest

from cnilib.ops.doctor import fix
from cnilib.ops.doctor.report import Check, report


def test_parse_one_command_with_its_env_and_comment():
    assert fix.parse("sysctl -w net.ipv4.ip_forward=1") == ({}, ["sysctl", "-w", "net.ipv4.ip_forward=1"])
    env, argv = fix.parse("NETCONFPATH='/a b' CNI_PATH=/x:/y pycni del cbr0 --container-id 'c 1'   # why")
    assert env == {"NETCONFPATH": "/a b", "CNI_PATH": "/x:/y"}
    assert argv == ["pycni", "del", "cbr0", "--container-id", "c 1"]
    assert fix.parse("ip addr del 10.0.0.1/24 dev cni0   # no pod uses it")[1][-1] == "cni0"


@pytest.mark.parametrize("line", [
    "iptables -A FORWARD -s 10.244.0.0/16 -j ACCEPT && iptables -A FORWARD -d 10.244.0.0/16 -j ACCEPT",
    "echo 1 > /proc/sys/net/ipv4/ip_forward", "a | b", "a ; b", "X=1", "   # only a comment", "'unclosed",
])
def test_parse_refuses_what_is_not_one_command(line):
    with pytest.raises(fix.NotACommand):
        fix.parse(line)


def check(cid, status, fixes, safe):
    c = Check(cid, cid)
    c.status = status
    for f in fixes:
        c.add_fix(f, safe=f in safe)
    return c


def test_proposals_are_the_safe_lines_of_failing_checks_once_in_order():
    checks = [check("a", "FAIL", ["x", "y", "z"], {"y", "z"}), check("b", "PASS", ["p"], {"p"}),
              check("c", "WARN", ["z", "w"], {"z", "w"}), check("d", "SKIP", ["s"], {"s"})]
    assert fix.proposals(checks) == [("a", "y"), ("a", "z"), ("c", "w")]
    assert checks[0].as_dict()["safeFix"] == ["y", "z"]


def test_ask():
    out = io.StringIO()
    assert fix.ask("q? ", io.StringIO("y\n"), out) == "y" and out.getvalue() == "q? y\n"
    assert fix.ask("q? ", io.StringIO("YES\n"), io.StringIO()) == "y"
    for a in ("\n", "n\n", "maybe\n", "y es\n"):
        assert fix.ask("q? ", io.StringIO(a), io.StringIO()) == "n", a
    assert fix.ask("q? ", io.StringIO("q\n"), io.StringIO()) == "q"
    out = io.StringIO()
    assert fix.ask("q? ", io.StringIO(""), out) == "q" and "end of input" in out.getvalue()


class Node:
    """A fake node whose checks read a file the fixes write."""

    def __init__(self, tmp_path):
        self.flag = tmp_path / "flag"
        self.rounds = 0

    def check_node(self):
        self.rounds += 1
        fixed = self.flag.exists()
        a = check("a", "PASS" if fixed else "FAIL", ["touch %s" % self.flag, "rm -rf /"],
                  {"touch %s" % self.flag})
        b = check("b", "WARN", ["false   # a fix that fails"], {"false   # a fix that fails"})
        checks = [a, b]
        loc = types.SimpleNamespace(as_dict=lambda: {})
        return checks, report(checks, loc, [])


def run(tmp_path, answers=None, yes=False, monkeypatch=None):
    node = Node(tmp_path)
    out = io.StringIO()
    rc = fix.main(types.SimpleNamespace(yes=yes), node.check_node, stdin=io.StringIO(answers or ""),
                  stdout=out)
    return rc, out.getvalue(), node


def test_yes_applies_every_safe_line_and_checks_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PYCNI_LOG", str(tmp_path / "log"))
    rc, out, node = run(tmp_path, yes=True)
    assert node.flag.exists()
    assert "applying [1] touch %s\n  done" % node.flag in out
    assert "applying [2] false\n  FAILED: exit 1" in out
    assert "rm -rf" not in out.split("mark safe")[1].split("applying")[0]      # print-only, not proposed
    assert node.rounds == 2 and rc == 1            # no re-check before applying with --yes; b still fails
    log = (tmp_path / "log").read_text()
    assert "DOCTOR-FIX applied=1 failed=1 declined=0 exit=1" in log
    assert "  doctor --fix: applied a: touch %s\n" % node.flag in log
    assert "  doctor --fix: FAILED b: false (exit 1)" in log


def test_answers_decide_and_a_fresh_look_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PYCNI_LOG", str(tmp_path / "log"))
    rc, out, node = run(tmp_path, answers="n\nn\n")
    assert not node.flag.exists() and "nothing applied" in out and node.rounds == 1
    rc, out, node = run(tmp_path, answers="y\nq\n")
    assert node.flag.exists() and node.rounds == 3        # before, fresh look, after
    assert "applying [2]" not in out
    assert "DOCTOR-FIX applied=1 failed=0 declined=1" in (tmp_path / "log").read_text()
    # a line the fresh look no longer proposes is not applied
    node.flag.unlink()

    def flaky():
        checks, rep = Node.check_node(node)
        if node.rounds == 1:
            node.flag.touch()             # someone fixed it while we asked
        return checks, rep
    node.rounds = 0
    out = io.StringIO()
    fix.main(types.SimpleNamespace(yes=False), flaky, stdin=io.StringIO("y\nn\n"), stdout=out)
    assert "[1] not applied: the checks no longer propose it" in out.getvalue()
