"""pycni whois on a busy flannel node: every pod found by veth, IP, netns
and container ID; orphans in every layer marked."""

import os

import pytest
from cnitest import run_plugin
from doctor_env import NET_NAME, Cluster

pytestmark = pytest.mark.root
PODS = 20


@pytest.fixture
def cluster(plugins, netns_factory, tmp_path):
    return Cluster(plugins, netns_factory, tmp_path)


def test_whois_finds_every_pod_of_a_busy_node(cluster):
    n1, _n2 = cluster.up()
    for i in range(PODS):
        n1.add_pod("p%02d" % i, ports=[(10000 + i, 80, "tcp")] if i % 4 == 0 else None,
                   pod_ns="team%d" % (i % 3))
    rc, out = n1.whois()
    assert rc == 0 and out["schema"] == "pycni-whois/1" and out["problems"] == []
    rows = out["attachments"]
    assert len(rows) == PODS
    by_pod = {r["pod"]: r for r in rows}
    for i in range(PODS):
        name = "p%02d" % i
        pod, res = n1.pods[name]
        r = by_pod["team%d/%s" % (i % 3, name)]
        assert r["live"] and r["orphan"] == []
        assert r["network"] == NET_NAME and r["ifname"] == "eth0"
        assert r["netns"]["path"] == pod.path and r["netns"]["alive"]
        assert r["ips"] == [res["ips"][0]["address"]]
        assert r["podIf"]["name"] == "eth0" and r["podIf"]["mtu"] == 1450
        host = [i_ for i_ in res["interfaces"] if not i_.get("sandbox") and i_["name"] != "cni0"][0]
        assert r["hostVeth"]["name"] == host["name"]
        assert r["cache"] and r["flannelSaved"] and len(r["leases"]) == 1
        if i % 4 == 0:
            assert [(p["protocol"], p["hostPort"],
                     p["podPort"]) for p in r["hostPorts"]] == [("tcp", 10000 + i, 80)]
            assert r["hostPorts"][0]["source"].startswith("nft inet pycni-hostport ")
        else:
            assert r["hostPorts"] == []
    # each way in names exactly that pod
    for r in rows[::3]:
        ip = r["ips"][0].split("/")[0]
        netns_name = r["netns"]["path"].rsplit("/", 1)[1]
        for q in (r["hostVeth"]["name"], ip, r["ips"][0], netns_name, r["netns"]["path"], r["containerID"],
                  r["containerID"][:14], r["pod"]):
            rc, got = n1.whois(q)
            assert rc == 0 and [x["containerID"] for x in got["attachments"]] == [r["containerID"]], q
    # the table and a block for people
    rc, text = n1.whois(json_out=False)
    lines = text.splitlines()
    assert lines[0].split() == ["NETWORK", "CONTAINER", "IF", "POD", "NETNS", "HOST", "VETH", "IP",
                                "HOSTPORTS", "STATE"]
    assert len(lines) == PODS + 2 and lines[-1] == "%d attachment(s), 0 with an orphan" % PODS
    assert sum(1 for line in lines if line.rstrip().endswith(" ok")) == PODS
    rc, text = n1.whois(rows[0]["hostVeth"]["name"], json_out=False)
    assert "  host veth    %s (ifindex" % rows[0]["hostVeth"]["name"] in text
    assert "  enter        nsenter --net=%s" % rows[0]["netns"]["path"] in text
    # nothing matches: exit 1
    rc, got = n1.whois("10.9.9.9")
    assert rc == 1 and got["attachments"] == []


def test_whois_marks_orphans_in_every_layer(cluster):
    n1, _n2 = cluster.up()
    live, _ = n1.add_pod("live", ports=[(8080, 80, "tcp")])
    dead, res = n1.add_pod("dead", ports=[(9090, 90, "udp")])
    dead_ip = res["ips"][0]["address"].split("/")[0]
    n1.kill_pod("dead")                          # no DEL: lease, rules, cache, saved file stay
    with open(os.path.join(n1.ipam_dir, NET_NAME, "10.244.1.200"), "w") as f:
        f.write("ghost\r\neth0")                  # a lease nothing else knows
    pod = cluster.netns_factory()                # a veth no lease explains
    n1.sh("ip", "link", "add", "vethlost", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    n1.sh("ip", "link", "set", "vethlost", "master", "cni0", "alias", "pycni net=cbr0 cid=lost if=eth0")
    os.makedirs(os.path.join(n1.tuning_dir, NET_NAME))
    with open(os.path.join(n1.tuning_dir, NET_NAME, "gone:eth0.json"), "w") as f:
        f.write("{}")
    rc, out = n1.whois()
    rows = {r["containerID"]: r for r in out["attachments"]}
    dead_row = [r for r in out["attachments"] if dead_ip in [a.split("/")[0] for a in r["ips"]]][0]
    assert sorted(dead_row["orphan"]) == ["cache", "lease", "rules", "saved"]
    assert not dead_row["live"] and dead_row["netns"] == {"path": dead.path, "nsid": None, "alive": False}
    assert [p["hostPort"] for p in dead_row["hostPorts"]] == [9090]
    assert rows["ghost"]["orphan"] == ["lease"]
    assert rows["lost"]["orphan"] == ["veth"] and rows["lost"]["netns"]["path"] == pod.path
    assert rows["gone"]["orphan"] == ["tuning"]
    live_row = [r for r in out["attachments"] if r["netns"] and r["netns"]["path"] == live.path][0]
    assert live_row["orphan"] == [] and live_row["live"]
    rc, out = n1.whois("--orphans")
    assert sorted(r["containerID"] for r in out["attachments"]) == sorted(
        ["ghost", "lost", "gone", dead_row["containerID"]])
    rc, text = n1.whois(json_out=False)
    assert "ORPHAN lease,rules,cache,saved" in text
    assert "4 with an orphan (pycni doctor prints the fixes)" in text
    rc, text = n1.whois(dead_ip, json_out=False)
    assert "ORPHAN" in text and "IPAM lease with no veth and no netns" in text


def test_whois_without_a_veth_alias(cluster, go_plugins):
    """Pods of the Go bridge (no ifalias) are matched through their addresses."""
    n1, _n2 = cluster.up(conflists=False)
    n1.write_conflist("10-go.conflist", {"cniVersion": "0.4.0", "name": "gonet", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": n1.ipam_dir, "ranges": [[{"subnet": "10.244.1.0/24"}]]}}]})
    pods = [cluster.netns_factory() for _ in range(3)]
    conf = {"cniVersion": "0.4.0", "name": "gonet", "type": "bridge", "bridge": "cni0", "isGateway": True,
            "ipam": {"type": "host-local", "dataDir": n1.ipam_dir, "ranges": [[{"subnet": "10.244.1.0/24"}]]}}
    for i, p in enumerate(pods):         # no runtime, no cache: only the kernel and the leases
        r = run_plugin(os.path.join(go_plugins, "bridge"), "ADD", conf, containerid="goctr%d" % i,
                       netns=p.path, ifname="eth0", path=go_plugins, host_netns=n1.ns.name)
        assert r.rc == 0, r
    rc, out = n1.whois()
    rows = sorted(out["attachments"], key=lambda r: r["containerID"])
    assert [r["containerID"] for r in rows] == ["goctr0", "goctr1", "goctr2"]
    for r, p in zip(rows, pods):
        assert r["hostVeth"] and r["netns"]["path"] == p.path and r["orphan"] == [] and r["cache"] is None


def test_gc_dry_run_shows_what_the_plugins_would_free(cluster):
    """pycni gc never guesses the live set; its dry run shows what the
    plugins' GC would free on this node, and flags what is still live."""
    n1, _n2 = cluster.up()
    kept, _ = n1.add_pod("kept")
    forgotten, res = n1.add_pod("forgotten", ports=[(8080, 80, "tcp")])
    ip = res["ips"][0]["address"].split("/")[0]
    os.remove(n1.cache_file_of(forgotten))         # the runtime lost its record: GC would free it
    gone, _ = n1.add_pod("gone")
    n1.kill_pod("gone")                            # still cached, netns gone: stays valid
    r = n1.sh(n1.pycni, "gc", NET_NAME, "--dry-run", env=n1.env())
    out = r.stdout
    assert "valid: 2 attachment(s) from the result cache" in out
    assert "the plugins' GC would free 4 item(s) this node holds outside the valid set:" in out
    lines = [line.split() for line in out.splitlines()]
    layers = sorted(line[0] for line in lines if line and line[0] in ("lease", "veth", "rules", "flannel"))
    assert layers == ["flannel", "lease", "rules", "veth"]
    assert all("LIVE:" in line for line in out.splitlines() if line.split()[:1] in (["lease"], ["veth"],
                                                                                    ["rules"]))
    assert any(line.startswith("    lease    %s " % ip) for line in out.splitlines())
    assert "has a netns that is gone (%s)" % gone.path in out
    assert os.path.exists(os.path.join(n1.ipam_dir, NET_NAME, ip))       # nothing changed
    # for real: the forgotten pod loses its lease and rules; the kept one keeps everything
    n1.sh(n1.pycni, "gc", NET_NAME, env=n1.env())
    assert not os.path.exists(os.path.join(n1.ipam_dir, NET_NAME, ip))
    _rc, out = n1.whois(kept.path)
    assert out["attachments"][0]["orphan"] == [] and out["attachments"][0]["leases"]


def test_whois_escapes_names_a_pod_controls(cluster):
    """A pod names its own interface and its processes: ESC and BEL there
    retitled (or cleared) the operator's terminal when `pycni whois` printed
    them.  Human output escapes them; --json keeps them exact."""
    import subprocess
    import sys
    n1, _n2 = cluster.up()
    pod, res = n1.add_pod("evil")
    veth = [i["name"] for i in res["interfaces"] if not i.get("sandbox") and i["name"] != "cni0"][0]
    evil_if, evil_comm = "\x1b]0;if\x07", "\x1b]2;owned\x07"
    pod.run("ip", "link", "set", "eth0", "name", evil_if)
    holder = subprocess.Popen(
        ["ip", "netns", "exec", pod.name, sys.executable, "-c",
         "import ctypes, sys, time\nctypes.CDLL(None).prctl(15, %r, 0, 0, 0)\n"
         "print('ready', flush=True)\ntime.sleep(120)" % evil_comm.encode()],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        pod.delete()                    # only the process holds the netns now: whois names it by pid
        rc, block = n1.whois(veth, json_out=False)
        rc2, table = n1.whois(json_out=False)
        rc3, js = n1.whois(veth)
    finally:
        holder.kill()
        holder.wait()
    for text in (block, table):
        assert "\x1b" not in text and "\x07" not in text, text
    assert "\\x1b]0;if\\x07" in block and "\\x1b]2;owned\\x07" in block, block
    row = js["attachments"][0]
    assert row["podIf"]["name"] == evil_if and row["netns"]["path"] == "/proc/%d/ns/net" % holder.pid
