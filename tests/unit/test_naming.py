"""Chain, table and comment names: the reference's test vectors, and ours."""

from hypothesis import given
from hypothesis import strategies as st

from cnilib.firewall import naming, portmap_rules


def test_go_vectors():
    # plugin-features.md section 1.6, name=cbr0 id=abc123
    assert naming.go_chain("cbr0", "abc123") == "CNI-3e9a3d0f9583cdc0e7133af3"
    assert naming.go_chain("cbr0", "abc123", "CNI-DN-") == "CNI-DN-3e9a3d0f9583cdc0e7133"
    assert naming.go_chain("cbr0", "abc123", "CNI-SN-") == "CNI-SN-3e9a3d0f9583cdc0e7133"
    assert naming.go_nft_masq_key("cbr0", "abc123", "eth0") == "cb6e746fae1a4d6c-ebce0e3dd4dafae3"
    assert naming.go_comment("cbr0", "abc123") == 'name: "cbr0" id: "abc123"'


def test_attachment_tables_are_keyed_and_bounded():
    a = naming.attachment_table("masq", "cbr0", "abc123", "eth0")
    b = naming.attachment_table("masq", "cbr0", "abc123", "eth1")
    c = naming.attachment_table("masq", "cbr1", "abc123", "eth0")
    assert len({a, b, c}) == 3
    assert a.startswith(naming.network_table_prefix("masq", "cbr0"))
    assert not c.startswith(naming.network_table_prefix("masq", "cbr0"))
    assert len(a) <= 64 and all(ch.isalnum() or ch == "-" for ch in a)


def test_element_comments_name_the_attachment_within_nft_limits():
    key = naming.element_key("cbr0", "abc123", "eth0")
    assert key == "5806acf520ba-58116a59a3570ffb"
    assert naming.element_comment("cbr0", "abc123", "eth0") == "pycni %s net=cbr0 id=abc123 if=eth0" % key
    long = naming.element_comment("n" * 253, "c" * 253, "eth0")
    assert len(long.encode()) == 127 and naming.comment_key(long) == naming.element_key("n" * 253, "c" * 253,
                                                                                        "eth0")
    assert naming.element_comment('a"b', "c\\d", "eth0").count('"') == 0
    for bad in (None,
                "", "pycni", "pycni fw 5806acf520ba-58116a59a3570ffb", "pycni 5806acf520ba-58116a59a3570ff",
                "pycni portmap: route_localnet is on here", "pycni XYZ6acf520ba-58116a59a3570ffb"):
        assert naming.comment_key(bad) is None, bad


def test_attachment_chains_carry_the_key():
    c = naming.attachment_chain("hp", "cbr0", "abc123", "eth0")
    assert c == "hp-5806acf520ba-58116a59a3570ffb"
    assert naming.chain_key("hp", c) == naming.element_key("cbr0", "abc123", "eth0")
    assert naming.chain_key("hp", "hostports") is None and naming.chain_key("hp", "hairpin-0123") is None


def test_veth_alias_round_trip():
    a = naming.veth_alias("cbr0", "abc123", "eth0", pod="kube-system/coredns-1")
    assert a == "pycni net=cbr0 cid=abc123 if=eth0 pod=kube-system/coredns-1"
    assert naming.parse_veth_alias(a) == {"net": "cbr0", "cid": "abc123", "if": "eth0",
                                          "pod": "kube-system/coredns-1"}
    assert naming.parse_veth_alias("something else") is None
    hostile = naming.veth_alias("n", "c", "eth0", pod="ns/evil name;rm -rf /\n")
    assert "\n" not in hostile and " rm" not in hostile
    long = naming.veth_alias("n" * 128, "c" * 128, "eth0")
    assert len(long) <= 255 and naming.parse_veth_alias(long)["att"]


def test_veth_alias_other_says_when_a_veth_is_another_attachment_s():
    """DEL and GC in a cached netns leave a link whose host end names
    another attachment (issue 16 item 17); no alias keeps the reference's
    behaviour (the Go plugin tags nothing)."""
    mine = ("cbr0", "abc123", "eth0")
    assert not naming.veth_alias_other(naming.veth_alias(*mine, pod="ns/p"), *mine)
    for other in (("cbr0", "new456", "eth0"), ("bnet", "abc123", "eth0"), ("cbr0", "abc123", "eth1")):
        assert naming.veth_alias_other(naming.veth_alias(*other), *mine), other
    long_mine = ("n" * 128, "c" * 128, "eth0")
    assert not naming.veth_alias_other(naming.veth_alias(*long_mine), *long_mine)
    assert naming.veth_alias_other(naming.veth_alias("n" * 128, "d" * 128, "eth0"), *long_mine)
    for none in (None, "", "operator's note", "pycni"):
        assert not naming.veth_alias_other(none, *mine)


# ---- every name built here is read back here, by the reader whois and doctor use

# short enough that an element comment keeps every name (nft's 127 bytes)
NAMES = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_."), min_size=1, max_size=20)


@given(NAMES, NAMES, st.sampled_from(("CNI-", "CNI-DN-", "CNI-SN-")))
def test_go_chains_and_comments_read_back(name, cid, prefix):
    assert naming.go_chain_prefix(naming.go_chain(name, cid, prefix)) == prefix
    assert naming.parse_go_comment(naming.go_comment(name, cid)) == (name, cid)
    assert naming.parse_go_comment(portmap_rules.entry_comment(name, cid)) == (name, cid)


@given(NAMES, NAMES, NAMES, st.sampled_from(("hp", "masq", "fw", "spoof")))
def test_attachment_tables_and_comments_read_back(net, cid, ifname, kind):
    table = naming.attachment_table(kind, net, cid, ifname)
    assert naming.parse_attachment_table(table) == (kind, naming.net_hash(net),
                                                    naming.attachment_hash(net, cid, ifname))
    said = naming.comment_names(naming.element_comment(net, cid, ifname))
    assert said == {"net": net, "id": cid, "if": ifname}


def test_name_parsers_refuse_other_names():
    for chain in ("CNI-FORWARD", "CNI-HOSTPORT-DNAT", "CNI-DN-3e9a3d0f9583cdc0e713",
                  "CNI-3E9A3D0F9583CDC0E7133AF3", "KUBE-SVC-3e9a3d0f9583cdc0e71", ""):
        assert naming.go_chain_prefix(chain) is None, chain
    for table in ("pycni-hostport", "pycni-hp-5d836c054814", "pycni-HP-5d836c054814-0bc075e822934d00",
                  "pycni-hp-5d836c05481x-0bc075e822934d00", "cni-hp-5d836c054814-0bc075e822934d00", None):
        assert naming.parse_attachment_table(table) is None, table
    for comment in ('name: "a" id: "b', 'name: "a\\"b" id: "c"', "name: a id: b", None, ""):
        assert naming.parse_go_comment(comment) is None, comment
    assert naming.comment_names("flanneld masq") == {} and naming.comment_names(None) == {}
