"""firewall through the built plugins: the cure for a FORWARD policy DROP.

The sandbox host drops forwarded traffic (iptables -P FORWARD DROP, as
Docker leaves it); with br_netfilter, even two pods on one bridge cannot
talk.  firewall ADD lets each pod's traffic through, keyed by attachment:
DEL removes exactly that attachment's rules, with or without a prevResult.
"""

import os

import chained
import pytest
from chained import OUT4
from cnitest import GO_CNI, assert_cni_error, run_plugin

from cnilib.firewall import naming

pytestmark = pytest.mark.root


@pytest.fixture
def node(netns_factory, tmp_path, go_plugins, statedir):
    n = chained.Node(netns_factory, tmp_path)
    n.run_dir = str(tmp_path / "run")
    n.env = {"PYCNI_RUN_DIR": n.run_dir, "PYCNI_STATE_DIR": str(tmp_path / "pstate")}
    yield n
    n.close()


def drop_forward(node):
    for cmd in ("iptables", "ip6tables"):
        node.host.run(cmd, "-P", "FORWARD", "DROP")


def fw(node, plugins, verb, conf, cid="c1", ifname="eth0"):
    ns = node.ctrs.get(cid)
    return run_plugin(os.path.join(plugins, "firewall"), verb, conf, containerid=cid,
                      netns=ns.path if ns else "", ifname=ifname, path=plugins,
                      host_netns=node.host.name, extra_env=node.env)


def fw_conf(node, cid, **kw):
    return chained.chained_conf("firewall", node.results[cid], **kw)


def ping(node, src, dst):
    fam = "-6" if ":" in dst else "-4"
    return node.ctrs[src].run("ping", fam, "-c1", "-W1", dst, check=False).returncode == 0


def keyed(node, cid, ifname="eth0"):
    from cnilib.firewall import forward
    k = forward.key("pmnet", cid, ifname)
    return [ln for c in ("iptables-save", "ip6tables-save")
            for ln in node.host.run(c, "-t", "filter").stdout.splitlines() if k in ln]


def test_forward_drop_is_cured_and_del_removes_only_its_rules(plugins, node):
    node.attach("c1")
    node.attach("c2")
    drop_forward(node)
    ip1, ip2, ip2v6 = node.ip("c1"), node.ip("c2"), node.ip("c2", 6)
    assert not ping(node, "c1", ip2) and not ping(node, "c1", OUT4)
    for cid in ("c1", "c2"):
        r = fw(node, plugins, "ADD", fw_conf(node, cid), cid=cid)
        assert r.rc == 0, r
        assert r.json == {k: v for k, v in node.results[cid].items() if v != {}}
    assert ping(node, "c1", ip2) and ping(node, "c2", ip1) and ping(node, "c1", ip2v6)
    assert ping(node, "c1", OUT4)                                  # routed out, and back in
    assert len(keyed(node, "c1")) == 4 and len(keyed(node, "c2")) == 4
    for cid in ("c1", "c2"):
        assert fw(node, plugins, "CHECK", fw_conf(node, cid), cid=cid).rc == 0
    assert fw(node, plugins, "ADD", fw_conf(node, "c1")).rc == 0     # again: no duplicates
    assert len(keyed(node, "c1")) == 4
    # DEL without prevResult finds c2's rules by key
    r = fw(node, plugins, "DEL", chained.chained_conf("firewall", None), cid="c2")
    assert r.rc == 0, r
    assert keyed(node, "c2") == [] and len(keyed(node, "c1")) == 4
    assert ping(node, "c1", ip2)                                   # c1 may still start connections
    assert not ping(node, "c2", ip1)                               # c2 no longer
    assert_cni_error(fw(node, plugins, "CHECK", fw_conf(node, "c2"), cid="c2"), 999)
    assert fw(node, plugins, "DEL", fw_conf(node, "c1")).rc == 0
    assert fw(node, plugins, "DEL", fw_conf(node, "c1")).rc == 0     # DEL again
    assert keyed(node, "c1") == []
    assert not ping(node, "c1", ip2)


def test_rules_of_the_go_plugin_are_removed(plugins, node):
    node.attach("c1")
    drop_forward(node)
    prev = dict(node.results["c1"], cniVersion="0.4.0")
    prev["ips"] = [dict(ip, version="6" if ":" in ip["address"] else "4") for ip in prev["ips"]]
    conf = chained.chained_conf("firewall", prev, version="0.4.0", backend="iptables")
    r = run_plugin(os.path.join(GO_CNI, "firewall"), "ADD", conf, containerid="c1",
                   netns=node.ctrs["c1"].path, ifname="eth0", path=GO_CNI, host_netns=node.host.name)
    assert r.rc == 0, r
    ip = node.ip("c1")
    assert "-s %s/32 -j ACCEPT" % ip in node.ruleset()
    assert fw(node, plugins, "DEL", conf).rc == 0
    assert ip not in node.ruleset()


def test_nftables_backend(plugins, node):
    node.attach("c1")
    # no DROP in iptables' FORWARD: the choice falls on the shared nftables table
    assert fw(node, plugins, "ADD", fw_conf(node, "c1")).rc == 0
    text = node.ruleset()
    assert "table inet pycni-fw {" in text and "CNI-FORWARD" not in text
    assert '%s comment "pycni ' % node.ip("c1") in text and '%s comment "pycni ' % node.ip("c1", 6) in text
    assert fw(node, plugins, "CHECK", fw_conf(node, "c1")).rc == 0
    assert fw(node, plugins, "DEL", chained.chained_conf("firewall", None)).rc == 0
    text = node.ruleset()
    assert "%s comment" % node.ip("c1") not in text
    assert 'comment "pycni %s' % naming.net_hash("pmnet") not in text
    assert_cni_error(fw(node, plugins, "CHECK", fw_conf(node, "c1", backend="nftables")), 999)


@pytest.mark.parametrize("added,deleted", [("nftables", "iptables"), ("iptables", "nftables")])
def test_del_after_a_backend_switch_cleans_everything(plugins, node, added, deleted):
    """ADD under one backend, DEL with a config naming the other: DEL tears
    down both backends."""
    node.attach("c1")
    assert fw(node, plugins, "ADD", fw_conf(node, "c1", backend=added)).rc == 0
    mine = '%s comment "pycni ' % node.ip("c1")
    if added == "iptables":
        assert len(keyed(node, "c1")) == 4
    else:
        assert mine in node.ruleset()
    assert fw(node, plugins, "DEL", fw_conf(node, "c1", backend=deleted)).rc == 0
    assert keyed(node, "c1") == [] and mine not in node.ruleset()


def test_isolated_ingress_policy(plugins, node):
    node.attach("c1")
    node.attach("c2")
    drop_forward(node)
    for cid in ("c1", "c2"):
        assert fw(node, plugins, "ADD", fw_conf(node, cid, ingressPolicy="isolated"), cid=cid).rc == 0
    assert not ping(node, "c1", node.ip("c2"))                     # same bridge, isolated
    assert ping(node, "c1", OUT4)
    assert "CNI-ISOLATION-STAGE-1" in node.ruleset()


def test_gc_removes_only_stale_attachments(plugins, node):
    node.attach("c1")
    node.attach("c2")
    drop_forward(node)
    for cid in ("c1", "c2"):
        assert fw(node, plugins, "ADD", fw_conf(node, cid, cniVersion="1.1.0"), cid=cid).rc == 0
    gc = {"cniVersion": "1.1.0", "name": "pmnet", "type": "firewall",
          "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    r = run_plugin(os.path.join(plugins, "firewall"), "GC", gc, path=plugins, host_netns=node.host.name,
                   extra_env=node.env)
    assert r.rc == 0, r
    assert len(keyed(node, "c1")) == 4 and keyed(node, "c2") == []


@pytest.mark.parametrize("extra", [{"backend": "firewalld"}, {"ingressPolicy": "open-sesame"},
                                   {"iptablesAdminChainName": "A -j ACCEPT"}, {"prevResult": None}])
def test_bad_config_refused_with_nothing_changed(plugins, node, extra):
    node.attach("c1")
    before = node.ruleset()
    assert_cni_error(fw(node, plugins, "ADD", dict(fw_conf(node, "c1"), **extra)), 7)
    assert node.ruleset() == before


def test_a_held_iptables_lock_gives_code_11_naming_the_holder(plugins, node):
    """Issue 16 item 13, for the firewall plugin's iptables backend."""
    import fcntl
    node.attach("c1")
    os.makedirs(node.run_dir, exist_ok=True)
    fd = os.open(os.path.join(node.run_dir, "iptables.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        node.env["PYCNI_IPTABLES_LOCK_WAIT"] = "1"
        err = assert_cni_error(fw(node, plugins, "ADD", fw_conf(node, "c1", backend="iptables")), 11)
        assert "by pid %d" % os.getpid() in err["msg"], err
        assert keyed(node, "c1") == []
    finally:
        os.close(fd)
        node.env.pop("PYCNI_IPTABLES_LOCK_WAIT")
    assert fw(node, plugins, "ADD", fw_conf(node, "c1", backend="iptables")).rc == 0
    assert keyed(node, "c1")
    assert fw(node, plugins, "DEL", fw_conf(node, "c1", backend="iptables")).rc == 0
    assert keyed(node, "c1") == []


# legal CNI_IFNAMEs that iptables' quoting cares about (at most 15 bytes)
QUOTY = ['a\\"b', '"', "\\", "x'y\\z", 'q"\'\\`$;#', "é€$(id)"]


@pytest.mark.parametrize("ifname", QUOTY)
def test_every_quote_in_a_legal_ifname_survives_the_rule_comment(plugins, node, ifname):
    """Issue 16 item 14: an ifname holding `\\"` ended the comment's quoting
    early and ADD failed with 999; the comment now goes in and comes back as
    iptables-save prints it, so CHECK matches and DEL finds it."""
    from cnilib.firewall import forward, iptables
    node.attach("c1")
    drop_forward(node)
    conf = fw_conf(node, "c1", backend="iptables")
    r = fw(node, plugins, "ADD", conf, ifname=ifname)
    assert r.rc == 0, r
    mine = keyed(node, "c1", ifname)
    assert len(mine) == 4, node.ruleset()
    note = forward.comment("pmnet", "c1", ifname)
    assert all(iptables.split(ln)[iptables.split(ln).index("--comment") + 1] == note for ln in mine)
    assert ping(node, "c1", OUT4)
    assert fw(node, plugins, "CHECK", conf, ifname=ifname).rc == 0
    assert fw(node, plugins, "DEL", conf, ifname=ifname).rc == 0
    assert keyed(node, "c1", ifname) == []


def test_quote_and_split_are_held_to_iptables_restore_and_save(netns_factory):
    """What iptables.quote renders, iptables-restore reads as the text meant
    and iptables-save prints back byte for byte (CHECK relies on it)."""
    from cnilib.firewall import iptables
    ns = netns_factory()
    texts = QUOTY + ["plain_-09", "a.b", "sp ace", "\\\\", '""', "'", "\x1b]0;t\x07", "日本語", "é" * 127]
    lines = ["-A FORWARD -m comment --comment %s -j ACCEPT" % iptables.quote(iptables.comment_text(t))
             for t in texts]
    ns.run("iptables-restore", "--noflush", input="*filter\n%s\nCOMMIT\n" % "\n".join(lines))
    saved = [ln for ln in ns.run("iptables-save", "-t", "filter").stdout.splitlines() if ln.startswith("-A")]
    assert saved == lines
    assert [iptables.split(ln)[5] for ln in saved] == [iptables.comment_text(t) for t in texts]
