"""Vanished state: a pod netns deleted before DEL, and a node "reboot".

DEL after the pod's netns is gone must exit 0 and release everything (the
kernel takes the veth pair with the namespace; the lease, the saved
delegate config, the rules, the tuning record and the runtime's cache are
ours to free), with or without the cached result.

A reboot deletes every namespace and link but keeps the state dirs; then
GC runs on a fresh node netns where two new pods live, with an empty
(``--all``), a partial and a full list of valid attachments, through
``pycni gc`` (libcni's GC: DEL of stale cached attachments, then GC on
every plugin) and by exec'ing each plugin's GC with the runner's cache
lost.  Exactly the leases, saved files, tuning records, rules and veths of
the attachments outside the list must go.
"""

import json
import os

import pytest
from relnode import NETWORKS, PY_ONLY, diff

pytestmark = pytest.mark.root


def owners(node, net):
    """{container ID: number of leases} in network ``net``'s lease dir."""
    out = {}
    d = os.path.join(node.p["ipam"], net)
    for f in os.listdir(d) if os.path.isdir(d) else ():
        if f[0].isdigit() or ":" in f:
            with open(os.path.join(d, f), "rb") as fh:
                cid = fh.read().decode().split("\r\n")[0]
            out[cid] = out.get(cid, 0) + 1
    return out


def listing(d, suffix=""):
    return sorted(f[:-len(suffix)] if suffix else f for f in (os.listdir(d) if os.path.isdir(d) else ())
                  if f.endswith(suffix) and not f.startswith("."))


def saved(node):
    return listing(node.p["flannel"])


def tuning_records(node):
    return sorted(f.split(":")[0] for f in listing(os.path.join(node.p["tuning"], "bnet"), ".json"))


def cached(node):
    return sorted(listing(os.path.join(node.p["cache"], "results")))


@pytest.mark.parametrize("cache", ["kept", "lost"])
@pytest.mark.parametrize("net", NETWORKS)
def test_del_after_the_pod_netns_is_gone_releases_everything(rnode, net, cache):
    rnode.add(net, "warm1")
    rnode.delete(net, "warm1")
    rnode.settle()
    base = rnode.snapshot()
    res = rnode.add(net, "gone1")
    assert rnode.snapshot() != base
    path = rnode.pods["gone1"].path
    rnode.pods.pop("gone1").delete()
    if cache == "lost":
        os.unlink(os.path.join(rnode.p["cache"], "results", "%s-gone1-eth0" % net))
    for _ in range(2):
        r = rnode.pycni("del", net, "gone1", netns=path)
        assert r.rc == 0, r
    rnode.settle()
    assert diff(base, rnode.snapshot()) == {}
    assert res["ips"]


def test_direct_del_of_never_added_or_gone_attachments_exits_0(rnode):
    """Every plugin's DEL, exec'd alone, for an attachment that never
    existed, with a netns path that is gone, and with no netns at all."""
    base = rnode.snapshot()
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "10.99.0.77/24"}]}
    for net in NETWORKS:
        for p in rnode.conflists()[net]:
            for netns in ("/var/run/netns/pycni-never-made", ""):
                for with_prev in (False, True):
                    conf = rnode.plugin_conf(net, p["type"])
                    if with_prev:
                        conf["prevResult"] = prev
                    r = rnode.exec_plugin(p["type"], "DEL", conf, cid="never1", netns=netns)
                    assert r.rc == 0 and r.stdout == "", (p["type"], netns, r)
    assert diff(base, rnode.snapshot()) == {}


OLD = {"cbr0": ["a1", "a2", "a3"], "bnet": ["b1", "b2", "b3"]}
NEW = {"cbr0": ["a9"], "bnet": ["b9"]}
VALID = {
    "empty": [],
    "partial": ["a9", "b9", "a1", "b2"],
    "full": ["a1", "a2", "a3", "a9", "b1", "b2", "b3", "b9"],
}


def net_of(cid):
    return "cbr0" if cid.startswith("a") else "bnet"


@PY_ONLY
@pytest.mark.parametrize("via", ["pycni", "direct"])
@pytest.mark.parametrize("valid", sorted(VALID))
def test_gc_after_a_reboot_frees_exactly_the_stale_attachments(rnode, valid, via):
    for net in NETWORKS:
        for cid in OLD[net]:
            rnode.add(net, cid)
    rnode.reboot()
    assert rnode.links() == {("lo", "", "")}
    rules_of, veth_of = {}, {}
    for net in NETWORKS:
        for cid in NEW[net]:
            before = rnode.rules()
            res = rnode.add(net, cid)
            rules_of[cid] = rnode.rules() - before
            veth_of[cid] = [i["name"] for i in res["interfaces"] if i["name"].startswith("veth")]
            assert rules_of[cid] and veth_of[cid]
    everyone = sorted(c for n in NETWORKS for c in OLD[n] + NEW[n])
    assert sorted(owners(rnode, "cbr0")) + sorted(owners(rnode, "bnet")) == everyone
    assert saved(rnode) == OLD["cbr0"] + NEW["cbr0"]
    assert tuning_records(rnode) == OLD["bnet"] + NEW["bnet"]

    keep = VALID[valid]
    if via == "direct":
        # the runtime lost its cache too: only the plugins' own GC frees things
        for f in cached(rnode):
            os.unlink(os.path.join(rnode.p["cache"], "results", f))
    for net in NETWORKS:
        atts = [{"containerID": c, "ifname": "eth0"} for c in keep if net_of(c) == net]
        if via == "pycni":
            vf = os.path.join(rnode.tmp, "valid-%s.json" % net)
            with open(vf, "w") as f:
                json.dump(atts, f)
            r = rnode.pycni("gc", net, extra=["--valid", vf] + (["--all"] if not atts else []))
            assert r.rc == 0, r
        else:
            for p in rnode.conflists()[net]:
                conf = rnode.plugin_conf(net, p["type"], **{"cni.dev/valid-attachments": atts})
                r = rnode.exec_plugin(p["type"], "GC", conf)
                assert r.rc == 0, (p["type"], r)
    rnode.settle(live=len([c for c in keep if c in NEW["cbr0"] + NEW["bnet"]]))

    live = [c for c in keep if c in rules_of]
    assert sorted(owners(rnode, "cbr0")) == sorted(c for c in keep if net_of(c) == "cbr0")
    assert sorted(owners(rnode, "bnet")) == sorted(c for c in keep if net_of(c) == "bnet")
    assert set(owners(rnode, "bnet").values()) <= {2}             # dual-stack: both leases kept
    assert saved(rnode) == sorted(c for c in keep if net_of(c) == "cbr0")
    assert tuning_records(rnode) == sorted(c for c in keep if net_of(c) == "bnet")
    assert rnode.rules() == set().union(*[rules_of[c] for c in live])
    assert rnode.veths() == sorted(v for c in live for v in veth_of[c])
    if via == "pycni":
        assert cached(rnode) == sorted("%s-%s-eth0" % (net_of(c), c) for c in keep)



@pytest.mark.parametrize("key", ["none", "cni.dev/attachments"])
def test_gc_without_the_valid_list_or_with_its_old_spelling_frees_nothing(rnode, key):
    """libcni always sends cni.dev/valid-attachments, but a GC without it
    (or with only the spec's earlier cni.dev/attachments) must not be read
    as "nothing is valid" by any plugin."""
    for net in NETWORKS:
        rnode.add(net, net[0] + "1")
    base = rnode.snapshot()
    for net in NETWORKS:
        atts = [{"containerID": net[0] + "1", "ifname": "eth0"}]
        for p in rnode.conflists()[net]:
            conf = rnode.plugin_conf(net, p["type"])
            if key != "none":
                conf[key] = atts
            r = rnode.exec_plugin(p["type"], "GC", conf)
            assert r.rc == 0, (p["type"], r)
            assert diff(base, rnode.snapshot()) == {}, "%s GC freed a valid attachment" % p["type"]


def corrupt(path, how):
    with open(path, "wb") as f:
        f.write(b"" if how == "empty" else b"\x00\x00{garbage")


@pytest.mark.parametrize("how", ["empty", "garbage"])
@pytest.mark.parametrize("net", NETWORKS)
def test_del_with_every_state_file_of_the_attachment_corrupt_releases_everything(rnode, net, how):
    """A crash or a full disk can leave any file of an attachment empty or
    torn (user-pain #16): DEL still exits 0 and frees everything."""
    rnode.add(net, "warm1")
    rnode.delete(net, "warm1")
    rnode.settle()
    base = rnode.snapshot()
    rnode.add(net, "torn1")
    # leases excepted: an unreadable one is no lease, reclaimed by the next ADD
    # that wants the address (host-local's own tests); the rest must go
    mine = [os.path.join(rnode.tmp, f) for f in rnode.files() - base["files"]
            if os.path.isfile(os.path.join(rnode.tmp, f)) and not f.startswith("ipam/")]
    # the cache entry, the saved config or tuning record, and the nftables records
    # (masquerade, hostPorts): DEL then finds their elements by comment
    nft_records = [p for p in mine if "/state/nft/" in p]
    assert len(mine) - len(nft_records) == 2 and nft_records, mine
    for path in mine:
        corrupt(path, how)
    for _ in range(2):
        r = rnode.pycni("del", net, "torn1")
        assert r.rc == 0, r
    rnode.settle()
    assert diff(base, rnode.snapshot()) == {}


# ---- a sandbox netns path reused by a new pod (issue 16 item 17) --------------------------------

REUSE = {
    "bnet": ("bnet", False),                    # bridge (+ portmap, firewall, tuning mtu 1400)
    "cbr0": ("cbr0", False),                    # flannel -> bridge, portmap
    "cbr0, no saved config": ("cbr0", True),    # flannel's DEL without its saved file or subnet.env
}


def pod_state(rnode, ns):
    """What the live pod holds: its links (name, kind, mtu, mac) and addresses."""
    out = json.loads(ns.run("ip", "-j", "addr", "show").stdout)
    return sorted((i["ifname"], i.get("mtu"), i.get("address"),
                   tuple(sorted("%s/%s" % (a["local"], a["prefixlen"]) for a in i.get("addr_info", []))))
                  for i in out)


@PY_ONLY
@pytest.mark.parametrize("case", sorted(REUSE))
def test_gc_of_a_stale_attachment_spares_the_pod_that_reused_its_netns_path(rnode, case):
    """The sandbox of pod old1 went away without a DEL, its netns path was
    made again for the sandbox of pod new1: libcni's GC (``pycni gc``)
    DELs old1 with its cached netns, which is new1's now.  new1 keeps its
    eth0, addresses and MTU (tuning does not put old1's values on it), its
    traffic flows; old1's lease, cache entry and records go."""
    net, no_saved = REUSE[case]
    old = rnode.pod("old1")
    path = old.path
    rnode.add(net, "old1")
    rnode.add(net, "probe1")                       # a pod that stays, on the same bridge
    old.delete()                                   # the sandbox is gone, no DEL
    rnode.settle(live=1)
    new = rnode.netns_factory(name=old.name)       # ... and its path made again for a new sandbox
    rnode.pods["new1"] = new
    res = rnode.add(net, "new1", netns=path)
    ip4 = next(i["address"].split("/")[0] for i in res["ips"] if "." in i["address"])
    gw = next(i["gateway"] for i in res["ips"] if "." in i["address"])
    held = pod_state(rnode, new)
    assert any(n == "eth0" for n, *_ in held)
    if net == "bnet":     # tuning alone first: old1's saved MTU (1500) must not land on new1's eth0
        r = rnode.exec_plugin("tuning", "DEL", rnode.plugin_conf(net, "tuning"), cid="old1", netns=path)
        assert r.rc == 0, r
        assert pod_state(rnode, new) == held
    if no_saved:
        os.unlink(os.path.join(rnode.p["flannel"], "old1"))
        os.rename(rnode.subnet_file, rnode.subnet_file + ".away")
    vf = os.path.join(rnode.tmp, "valid.json")
    with open(vf, "w") as f:
        json.dump([{"containerID": c, "ifname": "eth0"} for c in ("new1", "probe1")], f)
    r = rnode.pycni("gc", net, extra=["--valid", vf])
    if no_saved:
        os.rename(rnode.subnet_file + ".away", rnode.subnet_file)
    assert r.rc == 0, r
    assert pod_state(rnode, new) == held
    assert new.run("ping", "-c1", "-W3", gw, check=False).returncode == 0
    assert rnode.host.run("ping", "-c1", "-W3", ip4, check=False).returncode == 0
    assert sorted(owners(rnode, net)) == ["new1", "probe1"]
    assert "%s-old1-eth0" % net not in cached(rnode)
    assert "belongs to another attachment" in rnode.log_text()
    for cid in ("new1", "probe1"):
        rnode.delete(net, cid)
    rnode.settle()
    assert rnode.rules() == set() and rnode.veths() == [] and owners(rnode, net) == {}
