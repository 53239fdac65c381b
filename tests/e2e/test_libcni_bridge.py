"""bridge + host-local through Debian's libcni (the Go driver, as containerd
calls it), for the versions libcni 1.1.2 speaks, with containerd's habit of
sending DEL twice: the second time libcni has no cached result left, so the
plugins get no prevResult."""

import json
import os
import re

import pytest
from cnitest import unique

pytestmark = pytest.mark.root


def ok(run):
    assert run.rc == 0, run
    return run


@pytest.fixture
def bclients(clients, tmp_path):
    """``clients`` with the suite's run and state dirs in tmp as well."""
    base = clients.env
    clients.env = lambda **over: dict(base(**over), PYCNI_RUN_DIR=str(tmp_path / "run"),
                                      PYCNI_STATE_DIR=str(tmp_path / "pstate"))
    return clients


# what an attachment owns in nftables: a table of the previous design, or an
# element of the shared tables whose comment names it
OWNED = re.compile(r'pycni-[a-z]+-[0-9a-f]{12}-[0-9a-f]{16}|comment "pycni [0-9a-f]{12}-[0-9a-f]{16}')


def _leftovers(host):
    links = [n for n in host.links() if n.startswith("veth")]
    owned = OWNED.findall(host.run("nft", "list", "ruleset").stdout)
    return links, owned


@pytest.mark.parametrize("v", ["0.3.1", "0.4.0", "1.0.0"])
def test_bridge_and_host_local_through_libcni(bclients, plugins, netns_factory, tmp_path, v):
    clients = bclients
    clients.use(plugins)
    ctr = netns_factory()
    data = str(tmp_path / "ipam")
    br = unique("br")
    bridge = {"type": "bridge", "bridge": br, "isDefaultGateway": True, "ipMasq": True,
              "hairpinMode": True, "ipam": {"type": "host-local", "subnet": "10.88.0.0/24",
                                            "dataDir": data}}
    conf = clients.conflist("e2ebr", v, [bridge])
    kw = dict(netns=ctr.path, cid="e2e-ctr", ifname="eth0", args="IgnoreUnknown=1;K8S_POD_NAME=web")
    res = json.loads(ok(clients.drive("add", conf, **kw)).stdout)
    assert res["cniVersion"] == v
    assert [i["name"] for i in res["interfaces"]][0::2] == [br, "eth0"]
    assert res["interfaces"][2]["sandbox"] == ctr.path
    assert res["ips"][0]["address"] == "10.88.0.2/24" and res["ips"][0]["interface"] == 2
    assert {"dst": "0.0.0.0/0", "gw": "10.88.0.1"} in res["routes"]
    assert ctr.run("ping", "-c1", "-W3", "10.88.0.1").returncode == 0
    assert os.listdir(os.path.join(data, "e2ebr")).count("10.88.0.2") == 1
    cached = clients.cache_entry("e2ebr", "e2e-ctr", "eth0")
    assert cached["result"]["ips"][0]["address"] == "10.88.0.2/24"
    if v != "0.3.1":
        ok(clients.drive("check", conf, **kw))
    ok(clients.drive("del", conf, **kw))                # with the cached result as prevResult
    assert clients.cache_entry("e2ebr", "e2e-ctr", "eth0") is None
    assert "eth0" not in ctr.links()
    assert "10.88.0.2" not in os.listdir(os.path.join(data, "e2ebr"))
    assert _leftovers(clients.host) == ([], [])
    ok(clients.drive("del", conf, **kw))                # containerd's second DEL, no prevResult
    assert _leftovers(clients.host) == ([], [])
    assert os.listdir(tmp_path / "pstate" / "nft" / "masq") == []


def _pod_links(ns):
    return sorted((i["ifname"], i.get("mtu"), i.get("address"),
                   tuple("%s/%s" % (a["local"], a["prefixlen"]) for a in i.get("addr_info", [])))
                  for i in json.loads(ns.run("ip", "-j", "addr", "show").stdout))


@pytest.mark.parametrize("client", ["driver", "pycni"])
def test_gc_spares_the_pod_that_reused_a_stale_attachment_s_netns_path(bclients, plugins, netns_factory,
                                                                      tmp_path, client):
    """Pod old1's sandbox went away without a DEL and its netns path was
    made again for pod new1.  GC of the network (libcni >= 1.2's
    GCNetworkList, which the driver does over libcni 1.1.2, or ``pycni
    gc``) DELs old1 in its cached netns, new1's now: bridge must not delete
    new1's eth0 (its host veth's alias names new1), nor tuning put old1's
    MTU back on it; old1's lease and cache entry go."""
    clients = bclients
    clients.use(plugins)
    data = str(tmp_path / "ipam")
    bridge = {"type": "bridge", "bridge": unique("br"), "isGateway": True, "ipMasq": True,
              "ipam": {"type": "host-local", "subnet": "10.88.0.0/24", "dataDir": data}}
    tuning = {"type": "tuning", "mtu": 1400, "dataDir": str(tmp_path / "tuning")}
    conf = clients.conflist("reuse", "1.0.0", [bridge, tuning])
    old = netns_factory()
    # old1 was attached by a client that caches its netns (libcni >= 1.2, pycni)
    ok(clients.pycni(plugins, "add", "reuse", old.path, "--container-id", "old1"))
    old.delete()
    new = netns_factory(name=old.name)
    ok(clients.drive("add", conf, netns=new.path, cid="new1"))
    held = _pod_links(new)
    assert ("eth0", 1400) in [x[:2] for x in held]
    valid = [{"containerID": "new1", "ifname": "eth0"}]
    if client == "driver":
        r = clients.drive("gc", conf, valid=valid)
        # libcni 1.1.2 speaks 1.0.0 at most: the plugins refuse the GC verb
        # itself; the stale attachment's DEL before it went through
        err = json.loads(r.stdout) if r.rc else {"msg": ""}
        assert "stale" not in err["msg"], r
        assert all(line.startswith("failed to GC plugin") for line in err["msg"].splitlines()), r
    else:
        vf = tmp_path / "valid.json"
        vf.write_text(json.dumps(valid))
        ok(clients.pycni(plugins, "gc", "reuse", "--valid", str(vf)))
    assert _pod_links(new) == held
    assert new.run("ping", "-c1", "-W3", "10.88.0.1", check=False).returncode == 0
    assert clients.cache_entry("reuse", "old1", "eth0") is None
    leases = [f for f in os.listdir(os.path.join(data, "reuse")) if f[0].isdigit()]
    assert len(leases) == 1
    with open(os.path.join(data, "reuse", leases[0])) as f:
        assert f.read().startswith("new1")
    ok(clients.drive("del", conf, netns=new.path, cid="new1"))
    assert _leftovers(clients.host) == ([], [])
