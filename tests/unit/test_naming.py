"""Chain, table and comment names: the reference's test vectors, and ours."""

from cnilib.firewall import naming


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
