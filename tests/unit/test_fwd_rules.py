"""firewall rule text and input checks (no root needed).

The reference-style lines are what Debian's firewall plugin 1.1.1
(/usr/lib/cni/firewall) leaves in iptables-save.
"""

import pytest
from cnitest import pydantic_why

# before cnilib.cni.validate installs its pydantic_core stub
pytest.importorskip("pydantic", reason=pydantic_why())

from cnilib.base import errors
from cnilib.firewall import forward  # noqa: E402

KEY = forward.key("cbr0", "abc123", "eth0")
NOTE = forward.comment("cbr0", "abc123", "eth0")


def test_names():
    assert KEY == "pycni fw 5806acf520ba-58116a59a3570ffb"
    assert NOTE == KEY + " net=cbr0 id=abc123 if=eth0"
    assert forward.network_key_prefix("cbr0") == "pycni fw 5806acf520ba-"
    assert len(forward.comment("n" * 128, "c" * 128, "eth0")) == 255


def test_a_comment_is_cut_in_bytes_on_a_character():
    """iptables keeps at most 255 *bytes* of a comment (1.8.9 cuts the rest
    silently): an ifname in another script made a comment of 255 characters
    and 262 bytes, cut by iptables in the middle of a character."""
    text = forward.comment("n" * 128, "c" * 69, "\u00e9" * 7)
    assert len(text.encode()) == 255 and text.endswith(" if=\u00e9\u00e9...")
    assert text.startswith(forward.key("n" * 128, "c" * 69, "\u00e9" * 7) + " net=")


def test_comments_read_back():
    nh, ah = KEY.split()[2].split("-")
    assert forward.parse_comment(NOTE) == (nh, ah, {"net": "cbr0", "id": "abc123", "if": "eth0"})
    assert forward.parse_comment(KEY) == (nh, ah, {})
    cut = forward.comment("n" * 128, "c" * 128, "eth0")          # cut to 255: the names are lost
    assert forward.parse_comment(cut)[1] == forward.key("n" * 128, "c" * 128, "eth0").split("-")[-1]
    assert forward.parse_comment(cut)[2] == {}
    for other in ("CNI firewall plugin rules", "pycni fw nothex-58116a59a3570ffb", "pycni hp " + KEY[9:],
                  None):
        assert forward.parse_comment(other) is None


def test_reference_lines():
    assert forward.jump_rules() == [
        ('-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD', True),
        ('-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN', True)]
    assert forward.reference_rules(["10.88.0.3"], 4) == [
        "-A CNI-FORWARD -d 10.88.0.3/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A CNI-FORWARD -s 10.88.0.3/32 -j ACCEPT"]


def test_keyed_accept_rules():
    assert forward.accept_rules(["fd00::2"], 6, NOTE) == [
        '-A CNI-FORWARD -d fd00::2/128 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "%s" '
        "-j ACCEPT" % NOTE,
        '-A CNI-FORWARD -s fd00::2/128 -m comment --comment "%s" -j ACCEPT' % NOTE]


def test_isolation_rules_follow_the_reference():
    rules = forward.isolation_rules("cni0", isolated=True)
    assert [(c, first) for c, _l, first in rules] == [
        ("FORWARD", True), ("CNI-ISOLATION-STAGE-1", True), ("CNI-ISOLATION-STAGE-1", True),
        ("CNI-ISOLATION-STAGE-1", False), ("CNI-ISOLATION-STAGE-2", True), ("CNI-ISOLATION-STAGE-2", False)]
    assert rules[1][1] == ('-A CNI-ISOLATION-STAGE-1 -i cni0 ! -o cni0 -m comment --comment '
                           '"CNI firewall plugin rules (ingressPolicy: isolated)" -j CNI-ISOLATION-STAGE-2')
    assert rules[2][1].endswith("-i cni0 -o cni0 -m comment --comment "
                                '"CNI firewall plugin rules (ingressPolicy: isolated)" -j DROP')
    assert len(forward.isolation_rules("cni0", isolated=False)) == 5


SAVED = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:CNI-ADMIN - [0:0]
:CNI-FORWARD - [0:0]
-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
-A CNI-FORWARD -d 10.88.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED \
-m comment --comment "%(n)s" -j ACCEPT
-A CNI-FORWARD -s 10.88.0.2/32 -m comment --comment "%(n)s" -j ACCEPT
-A CNI-FORWARD -s 10.88.0.9/32 -m comment --comment "%(k)s0 net=cbr0 id=x if=eth0" -j ACCEPT
-A CNI-FORWARD -d 10.88.0.3/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A CNI-FORWARD -s 10.88.0.3/32 -j ACCEPT
COMMIT
""" % {"n": NOTE, "k": KEY}


def test_rules_are_found_by_exact_key():
    assert len(forward.rules_with_key(SAVED,
                                      KEY)) == 2                 # not the one whose key only starts alike
    keyed = forward.keyed_rules(SAVED, forward.network_key_prefix("cbr0"))
    assert [k for _r, k in keyed] == [KEY, KEY, KEY + "0"]


def test_add_batch_first_time_and_again():
    new = forward.accept_rules(["10.88.0.2"], 4, NOTE)
    first = forward.ipt_add_lines("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n", "CNI-ADMIN", new, KEY)
    assert first == [":CNI-FORWARD - [0:0]", ":CNI-ADMIN - [0:0]",
                     '-I FORWARD 1 -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD',
                     '-I CNI-FORWARD 1 -m comment --comment "CNI firewall plugin admin overrides" '
                     '-j CNI-ADMIN'] + new
    again = forward.ipt_add_lines(SAVED, "CNI-ADMIN", new, KEY)
    assert again == ["-D" + r[2:] for r in new] + new
    iso = forward.isolation_rules("cni0", False)
    lines = forward.ipt_add_lines(SAVED, "CNI-ADMIN", new, KEY, iso)
    assert ":CNI-ISOLATION-STAGE-1 - [0:0]" in lines and lines[-1].startswith("-A CNI-ISOLATION-STAGE-2 ")


def test_delete_batch():
    ref = forward.reference_rules(["10.88.0.3", "10.88.0.77"], 4)
    assert forward.ipt_del_lines(SAVED, KEY, ref) == [
        "-D CNI-FORWARD -d 10.88.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "
        '"%s" -j ACCEPT' % NOTE,
        '-D CNI-FORWARD -s 10.88.0.2/32 -m comment --comment "%s" -j ACCEPT' % NOTE,
        "-D CNI-FORWARD -d 10.88.0.3/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-D CNI-FORWARD -s 10.88.0.3/32 -j ACCEPT"]
    assert forward.ipt_del_lines(SAVED, forward.key("cbr0", "gone", "eth0")) == []


def test_nft_skeleton_and_elements():
    assert forward.render_skeleton() == (
        'add table inet pycni-fw { comment "pycni firewall: accept the forwarded traffic of containers" ; }\n'
        "add set inet pycni-fw ips4 { type ipv4_addr ; }\n"
        "add set inet pycni-fw ips6 { type ipv6_addr ; }\n"
        "add chain inet pycni-fw forward { type filter hook forward priority 0 ; policy accept ; }\n"
        "flush chain inet pycni-fw forward\n"
        "add rule inet pycni-fw forward ip daddr @ips4 ct state established,related accept\n"
        "add rule inet pycni-fw forward ip saddr @ips4 accept\n"
        "add rule inet pycni-fw forward ip6 daddr @ips6 ct state established,related accept\n"
        "add rule inet pycni-fw forward ip6 saddr @ips6 accept\n")
    elems = forward.nft_elements({4: ["10.88.0.2"], 6: ["fd00::2"]})
    assert [(e.set, e.key.hex(), e.chain, e.label) for e in elems] == [
        ("ips4", "0a580002", None,
         "10.88.0.2"), ("ips6", "fd000000000000000000000000000002", None, "fd00::2")]


class Args:
    def __init__(self, conf):
        self.conf, self.container_id, self.ifname, self.version = conf, "c1", "eth0", "1.0.0"
        self.netns = ""


PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.88.0.2/24", "interface": 1}, {"address": "fd00::2/64", "interface": 1}]}


def test_parse():
    cfg = forward.parse(Args({"cniVersion": "1.0.0", "name": "n", "type": "firewall", "prevResult": PREV,
                          "ingressPolicy": "same-bridge", "backend": ""}), need_prev=True)
    assert cfg.ips == {4: ["10.88.0.2"], 6: ["fd00::2"]} and cfg.bridge == "cni0" and cfg.backend is None
    assert forward.parse(Args({"cniVersion": "1.0.0", "name": "n", "type": "firewall"}),
                         need_prev=False).ips == {}


@pytest.mark.parametrize("extra,msg", [
    ({"backend": "firewalld"}, "firewalld"),
    ({"iptablesAdminChainName": "X -j ACCEPT"}, "iptablesAdminChainName"),
    ({"ingressPolicy": "paranoid"}, "ingressPolicy"),
    ({"prevResult": None}, "prevResult"),
    ({"ingressPolicy": "isolated", "prevResult": dict(PREV, interfaces=[{"name": 'br" -j ACCEPT'}])},
     "bridge"),
])
def test_parse_refusals(extra, msg):
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "firewall", "prevResult": PREV}
    conf.update(extra)
    with pytest.raises(errors.InvalidConfig) as e:
        forward.parse(Args(conf), need_prev=True)
    assert msg in e.value.msg + e.value.details
