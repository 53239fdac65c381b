"""The shared nftables tables at work: records and elements through ADD, DEL
and GC, a hostPort clash, a lost record, the previous design's tables, and
a node holding 300 attachments (no timing asserts: speed lives in bench/).

Masquerade runs through the built bridge plugin (bridge_env.Node); portmap
through the built portmap plugin on containers the Go bridge attached
(chained.Node).  Bulk state is made by calling the library inside the
test's host netns, the way a busy node would have accumulated it.
"""

import json
import os
import sys

import chained
import pytest
from chained import HOST4, OUT4
from cnitest import ROOT, assert_cni_error, run_plugin

from cnilib.firewall import naming

pytestmark = pytest.mark.root

MAPS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8081, "containerPort": 80, "protocol": "udp"}]


def lib(ns, env, code):
    """Run ``code`` (with cnilib importable, ``log`` a Log) inside netns ``ns``."""
    prog = ("import sys; sys.path[0:0] = [%r]\nfrom cnilib.base.log import Log\nlog = Log('test', {})\n%s\n"
            % (ROOT, code))
    return ns.run(sys.executable, "-I", "-c", prog, env=dict(os.environ, **env))


def gc_conf(base, valid):
    return dict(base, cniVersion="1.1.0",
                **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in valid]})


# ------------------------------------------------------------------ bridge masquerade

def test_masquerade_record_and_elements_live_and_die_with_the_attachment(node):
    conf = node.conf("1.1.0", isGateway=True, ipMasq=True)
    ctr = node.container()
    node.add(conf, ctr, cid="r1")
    (path,) = node.records()
    rec = json.loads(open(path).read())
    assert (rec["net"], rec["cid"], rec["if"]) == ("bnet", "r1", "eth0")
    assert os.path.basename(path) == naming.attachment_hash("bnet", "r1", "eth0")
    assert [e[3] for e in rec["elems"]] == ["10.22.0.2"]
    assert node.masq_owners() == {("10.22.0.2", "r1")}
    node.delete(conf, ctr, cid="r1")
    node.delete(conf, None, cid="r1")          # again, without a netns: nothing to do, no error
    assert node.records() == [] and node.masq_owners() == set()
    node.assert_clean()


def test_del_with_a_torn_record_finds_the_elements_by_comment(node):
    conf = node.conf(isGateway=True, ipMasq=True, macspoofchk=True)
    ctr = node.container()
    node.add(conf, ctr, cid="torn")
    assert len(node.records()) == 2                     # masquerade and macspoofchk
    for path in node.records():
        with open(path, "wb") as f:
            f.write(b"\x00{torn")
    node.delete(conf, ctr, cid="torn")
    assert node.owned() == [] and node.records() == []
    assert "unreadable" in node.log_text()


def test_gc_sweeps_elements_whose_record_was_lost(node):
    conf = node.conf("1.1.0", isGateway=True, ipMasq=True)
    a, b = node.container(), node.container()
    node.add(conf, a, cid="keep")
    node.add(dict(conf, ipam=node.ipam("1.1.0", host=3)), b, cid="lost")
    for path in node.records():
        if json.loads(open(path).read())["cid"] == "lost":
            os.unlink(path)
    node.delete(conf, None, cid="lost", netns="")   # no record: DEL cannot know, the element stays
    assert {cid for _ip, cid in node.masq_owners()} == {"keep", "lost"}
    r = node.run("GC", gc_conf(conf, ["keep"]))
    assert r.rc == 0, r
    assert {cid for _ip, cid in node.masq_owners()} == {"keep"}
    assert len(node.records()) == 1


def old_tables(ns, network, cid, ifname="eth0"):
    """Make the previous design's four per-attachment tables, as it wrote them."""
    script = ""
    for family, kind, hook in (("inet", "masq", "type nat hook postrouting priority srcnat"),
                               ("inet", "hp", "type nat hook prerouting priority -100"),
                               ("inet", "fw", "type filter hook forward priority 0"),
                               ("bridge", "spoof", "type filter hook prerouting priority -300")):
        t = "%s %s" % (family, naming.attachment_table(kind, network, cid, ifname))
        script += ('add table %s { comment "%s" ; }\nadd chain %s c { %s ; policy accept ; }\n'
                   "add rule %s c counter\n" % (t, "pycni %s net=%s id=%s if=%s"
                                                % (kind, network, cid, ifname),
                                                t, hook, t))
    ns.run("nft", "-f", "-", input=script)


def test_tables_of_the_previous_design_are_removed_by_del_and_gc(node, tmp_path):
    conf = node.conf("1.1.0", isGateway=True, ipMasq=True, macspoofchk=True)
    ctr = node.container()
    node.add(conf, ctr, cid="up1")                      # an attachment made after the upgrade
    old_tables(node.host, "bnet", "up1", "eth0")        # and what the old plugin left for it
    old_tables(node.host, "bnet", "gone1", "eth0")      # one whose DEL never came
    old_tables(node.host, "bnet", "live1", "eth0")      # one still running
    old_tables(node.host, "othernet", "gone1", "eth0")  # another network's
    node.delete(conf, ctr, cid="up1")                   # bridge's kinds go; portmap's and firewall's
    left = [t for t in node.nft_tables() if "pycni-" in t and t.split()[1].count("-") == 3]
    up1 = naming.attachment_hash("bnet", "up1", "eth0")
    assert len(left) == 14 and sorted(t.split()[1].split("-")[1] for t in left if up1 in t) == ["fw", "hp"]
    # bridge GC takes masq and spoof tables; portmap and firewall GC take theirs
    assert node.run("GC", gc_conf(conf, ["live1"])).rc == 0
    for plugin in ("portmap", "firewall"):
        r = run_plugin(os.path.join(node.plugins, plugin), "GC",
                       {"cniVersion": "1.1.0", "name": "bnet", "type": plugin,
                        "cni.dev/valid-attachments": [{"containerID": "live1", "ifname": "eth0"}]},
                       path=node.plugins, host_netns=node.host.name, extra_env=node.env)
        assert r.rc == 0, r
    left = sorted(t for t in node.nft_tables() if "pycni-" in t and t.split()[1].count("-") == 3)
    live = naming.attachment_hash("bnet", "live1", "eth0")
    assert len(left) == 8 and all(live in t or naming.net_hash("othernet") in t for t in left), left


def test_a_node_with_300_attachments(node):
    """300 attachments' elements on the node: one more ADD and DEL work
    through the plugin, and GC leaves nothing of the 300."""
    conf = node.conf("1.1.0", ipam=node.ipam("1.1.0", subnet="10.22.0.0/22"), isGateway=True, ipMasq=True)
    lib(node.host, node.env,
        "from cnilib.firewall import masquerade\n"
        "for i in range(300):\n"
        "    masquerade.setup('nftables', 'bnet', 'bulk%d' % i, 'eth0',\n"
        "                 ['10.22.%d.%d/22' % (1 + i // 250, 1 + i % 250)], log)\n")
    assert len(node.masq_owners()) == 300 and len(node.records()) == 300
    ctr = node.container()
    res = node.add(conf, ctr, cid="one")
    ip = res["ips"][0]["address"].split("/")[0]
    assert (ip, "one") in node.masq_owners()
    assert node.check(conf, ctr, res, cid="one").rc == 0
    node.delete(conf, ctr, cid="one")
    assert len(node.masq_owners()) == 300 and ("one" not in {c for _i, c in node.masq_owners()})
    assert node.run("GC", gc_conf(conf, [])).rc == 0
    node.assert_clean()


# ------------------------------------------------------------------ portmap


@pytest.fixture
def pmnode(netns_factory, tmp_path, go_plugins, statedir):
    n = chained.Node(netns_factory, tmp_path)
    n.env = {"PYCNI_RUN_DIR": str(tmp_path / "run"), "PYCNI_STATE_DIR": str(tmp_path / "pstate"),
             "PYCNI_LOG": os.environ["PYCNI_LOG"]}
    yield n
    n.close()


def pm(n, plugins, verb, conf, cid):
    ns = n.ctrs.get(cid)
    return run_plugin(os.path.join(plugins, "portmap"), verb, conf, containerid=cid,
                      netns=ns.path if ns else "", ifname="eth0", path=plugins,
                      host_netns=n.host.name, extra_env=n.env)


def pm_conf(n, cid, maps=MAPS, **kw):
    return chained.chained_conf("portmap", n.results[cid], backend="nftables",
                                runtimeConfig={"portMappings": maps}, **kw)


def hp_records(n):
    root = os.path.join(n.env["PYCNI_STATE_DIR"], "nft", "hostport")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def hp_owned(n):
    """Keyed elements and per-attachment chains in inet pycni-hostport."""
    r = n.host.run("nft", "-j", "list", "table", "inet", "pycni-hostport", check=False)
    if r.returncode:
        return []
    out = []
    for item in json.loads(r.stdout)["nftables"]:
        s = item.get("map") or item.get("set")
        for e in (s or {}).get("elem") or ():
            v = e[0] if isinstance(e, list) else e
            if isinstance(v, dict) and naming.comment_key(v.get("elem", {}).get("comment")):
                out.append("%s %s" % (s["name"], v["elem"]["comment"].split(" id=")[1].split()[0]))
        c = item.get("chain")
        if c and c["name"].startswith("hp-"):
            out.append("chain " + c["name"])
    return sorted(out)


def test_a_hostport_held_by_a_live_pod_is_a_clear_error(plugins, pmnode):
    n = pmnode
    n.attach("c1")
    n.attach("c2")
    n.serve("c1")
    n.serve("c2")
    assert pm(n, plugins, "ADD", pm_conf(n, "c1"), "c1").rc == 0
    err = assert_cni_error(pm(n, plugins, "ADD", pm_conf(n, "c2"), "c2"), 999)
    assert "hostPort 8080/tcp (IPv4) is already held by another attachment (network pmnet, container c1, " \
           "interface eth0)" in err["msg"], err
    assert n.ask(n.outside, "tcp", HOST4, 8080) == "c1 " + OUT4        # the holder keeps its port
    assert [x for x in hp_owned(n) if x.endswith(" c2")] == [] and len(hp_records(n)) == 1
    assert pm(n, plugins, "DEL", pm_conf(n, "c2"), "c2").rc == 0      # the runtime's DEL after the failure
    assert n.ask(n.outside, "tcp", HOST4, 8080) == "c1 " + OUT4
    assert pm(n, plugins, "DEL", chained.chained_conf("portmap", None), "c1").rc == 0
    assert pm(n, plugins, "ADD", pm_conf(n, "c2"), "c2").rc == 0      # free again
    assert n.ask(n.outside, "tcp", HOST4, 8080) == "c2 " + OUT4
    assert pm(n, plugins, "DEL", pm_conf(n, "c2"), "c2").rc == 0
    assert hp_owned(n) == [] and hp_records(n) == []


def test_a_hostport_of_a_pod_without_record_is_taken_over_and_gc_sweeps(plugins, pmnode):
    n = pmnode
    n.attach("c1")
    n.attach("c2")
    n.serve("c2")
    assert pm(n, plugins, "ADD", pm_conf(n, "c1", cniVersion="1.1.0"), "c1").rc == 0
    for name in hp_records(n):                      # c1's record is lost (a crash, a wiped disk)
        os.unlink(os.path.join(n.env["PYCNI_STATE_DIR"], "nft", "hostport", name))
    r = pm(n, plugins, "ADD", pm_conf(n, "c2", cniVersion="1.1.0"), "c2")
    assert r.rc == 0, r
    assert n.ask(n.outside, "tcp", HOST4, 8080) == "c2 " + OUT4
    with open(os.environ["PYCNI_LOG"]) as f:
        assert "taken over" in f.read()
    assert any(x.endswith(" c1") for x in hp_owned(n))          # c1's masquerade element and chain
    r = run_plugin(os.path.join(plugins, "portmap"), "GC",
                   gc_conf({"name": "pmnet", "type": "portmap"}, ["c2"]), path=plugins,
                   host_netns=n.host.name, extra_env=n.env)
    assert r.rc == 0, r
    assert not any(x.endswith(" c1") for x in hp_owned(n))
    assert not any(naming.attachment_chain("hp", "pmnet", "c1", "eth0") in x for x in hp_owned(n))
    assert n.ask(n.outside, "tcp", HOST4, 8080) == "c2 " + OUT4


def test_portmap_with_300_attachments(plugins, pmnode):
    n = pmnode
    n.attach("c1")
    n.serve("c1")
    lib(n.host, n.env,
        "from cnilib.firewall import portmap\n"
        "from cnilib.firewall import portmap_rules as R\n"
        "cfg = portmap.Config()\n"
        "for i in range(300):\n"
        "    cfg.name, cfg.cid, cfg.ifname = 'pmnet', 'bulk%d' % i, 'eth0'\n"
        "    cfg.mappings = [R.Mapping(20000 + i, 80, 'tcp'), R.Mapping(20000 + i, 53, 'udp')]\n"
        "    cfg.ctrs = {4: ('10.88.%d.%d' % (1 + i // 250, 1 + i % 250), 24)}\n"
        "    portmap.NFTABLES.add(cfg, None, log)\n")
    assert len(hp_records(n)) == 300 and len(hp_owned(n)) == 300 * 4
    conf = pm_conf(n, "c1", cniVersion="1.1.0")
    assert pm(n, plugins, "ADD", conf, "c1").rc == 0
    assert n.ask(n.outside, "tcp", HOST4, 8080) == "c1 " + OUT4
    assert pm(n, plugins, "CHECK", conf, "c1").rc == 0
    assert pm(n, plugins, "DEL", conf, "c1").rc == 0
    assert n.ask(n.outside, "tcp", HOST4, 8080).startswith("ERR")
    assert len(hp_owned(n)) == 300 * 4
    r = run_plugin(os.path.join(plugins, "portmap"), "GC", gc_conf({"name": "pmnet", "type": "portmap"}, []),
                   path=plugins, host_netns=n.host.name, extra_env=n.env)
    assert r.rc == 0, r
    assert hp_owned(n) == [] and hp_records(n) == []
