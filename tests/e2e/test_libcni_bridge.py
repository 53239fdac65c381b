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
