"""Quoting of input-derived text in iptables rule lines (issue 16 item 14).

A legal CNI_IFNAME (up to 15 bytes, anything but '/', ':', NUL and blanks)
ends up in the firewall plugin's rule comment.  The line must be read by
iptables-restore as the comment we meant, and equal what iptables-save
prints back (CHECK compares the two).  ``iptables.quote`` follows
libxtables' xtables_save_string; ``iptables.split`` is iptables-restore's
tokenizer; the integration tier holds both to the real tools
(tests/integration/test_firewall.py).
"""

from hypothesis import example, given
from hypothesis import strategies as st

from cnilib.cni import skel
from cnilib.firewall import forward, iptables, portmap_rules

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"


def legal_ifname(name):
    try:
        skel.check_ifname(name)
    except Exception:
        return False
    return True


# every character the kernel and the skel let through, weighted to the
# ones iptables' quoting cares about
ifnames = st.text(st.one_of(st.sampled_from('"\\\'`$;#&|*?!()[]{}<>~%^=,+@é€😀\x1b\x07\x7f'),
                            st.characters(blacklist_categories=("Cs",))),
                  min_size=1, max_size=15).filter(legal_ifname)
names = st.text(st.sampled_from(NAME_CHARS), min_size=1, max_size=128).filter(lambda s: s[0].isalnum())


@given(st.text(st.characters(blacklist_characters="\x00\n\r")))
@example('a\\"b')
@example("")
@example("plain_-09")
def test_split_reads_back_what_quote_wrote(text):
    line = "-A FORWARD -m comment --comment %s -j ACCEPT" % iptables.quote(text)
    assert iptables.split(line) == ["-A", "FORWARD", "-m", "comment", "--comment", text, "-j", "ACCEPT"]


def test_quote_is_what_iptables_save_prints():
    # outputs of iptables v1.8.9 (nf_tables) iptables-save on this machine
    assert iptables.quote("plain_-09") == "plain_-09"
    assert iptables.quote("a.b") == '"a.b"'
    assert iptables.quote("a\"b\\c'd é$x`y;z") == '"a\\"b\\\\c\\\'d é$x`y;z"'


@given(ifnames, names, names)
@example('\\"', "cbr0", "c1")
@example('a\\"b', "n" * 128, "c" * 128)
@example("€€€€€", "n" * 128, "c" * 128)
@example("eth\x1b]0;x\x07", "cbr0", "c1")
def test_every_legal_ifname_gives_a_comment_iptables_reads_back(ifname, network, cid):
    note = forward.comment(network, cid, ifname)
    assert len(note.encode("utf-8")) <= iptables.COMMENT_MAX
    assert note.isprintable()
    for line in forward.accept_rules(["10.1.2.3"], 4, note):
        toks = iptables.split(line)
        assert toks[toks.index("--comment") + 1] == note
        assert toks[-2:] == ["-j", "ACCEPT"]
    # the key survives any cut; the names come back when they all fit
    nh, ah, got = forward.parse_comment(note)
    assert "pycni fw %s-%s" % (nh, ah) == forward.key(network, cid, ifname)
    if got:
        assert got["net"] == network and got["id"] == cid
        assert got["if"] == "".join(c if c.isprintable() else "?" for c in ifname)


def test_a_quote_in_the_ifname_no_longer_ends_the_comment():
    """The case filed: `a\\"b` rendered as "...if=a\\\\"b" made iptables-restore
    end the comment at the quote (ADD failed with 999)."""
    note = forward.comment("cbr0", "c1", 'a\\"b')
    line = forward.accept_rules(["10.1.2.3"], 4, note)[1]
    assert line.endswith('if=a\\\\\\"b" -j ACCEPT')
    toks = iptables.split(line)
    assert toks[toks.index("--comment") + 1] == note


def test_comments_are_cut_by_bytes_on_a_character_boundary():
    note = forward.comment("n" * 128, "c" * 128, "€€€€€")
    assert len(note.encode()) <= 255 and note.endswith("...")
    assert forward.comment("n" * 90, "c" * 90, "€€€€€").endswith("if=€€€€€")
    assert len(portmap_rules.trim_comment("é" * 200).encode()) <= 255


@given(st.text(st.characters(blacklist_characters="\x00\n\r"), min_size=1))
def test_conditions_reach_iptables_restore_as_the_tokens_given(token):
    line = "-A X %s -j Y" % portmap_rules.ipt_quote(token)
    assert iptables.split(line) == ["-A", "X", token, "-j", "Y"]
