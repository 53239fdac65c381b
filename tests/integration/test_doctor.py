"""pycni doctor on a two-node flannel fabric in namespaces: a healthy fabric
passes clean, and each way the seed article's network breaks is reproduced
on a node and named by doctor (check id, FAIL or WARN, the fix).  Where the
fix is a command, the test runs it and checks that traffic flows again."""

import json
import os
import re
import time

import pytest
from cnitest import schema_errors
from doctor_env import NET_NAME, NETWORK, Cluster, check, statuses

from cnilib.firewall import naming
from cnilib.ops.doctor import report as doctor

pytestmark = pytest.mark.root


@pytest.fixture
def cluster(plugins, netns_factory, tmp_path):
    return Cluster(plugins, netns_factory, tmp_path)


@pytest.fixture
def fabric(cluster):
    """Both nodes up with one pod each (node1's publishes hostPort 8080)."""
    n1, n2 = cluster.up()
    n1.add_pod("a", ports=[(8080, 80, "tcp")])
    n2.add_pod("b")
    assert n1.ping("a", n2.pod_ip("b"))
    return cluster


def assert_names(rep, cid, status, fix_part=None, evidence_part=None):
    c = check(rep, cid)
    assert c["status"] == status, json.dumps(c, indent=1)
    if fix_part is not None:
        assert any(fix_part in f for f in c["fix"]), json.dumps(c, indent=1)
    if evidence_part is not None:
        assert any(evidence_part in e for e in c["evidence"]), json.dumps(c, indent=1)
    return c


def run_fix(node, line):
    """Run a fix line doctor printed (a shell command line; comments dropped)."""
    cmd = line.split("   #")[0]
    return node.sh("sh", "-c", cmd, env=node.env())


# ---------------------------------------------------------------- healthy

def test_healthy_two_node_fabric_passes_clean(fabric):
    for n in fabric.nodes:
        n.add_pod("second")
        rc, rep = n.doctor()
        assert rc == 0, json.dumps(rep, indent=1)
        assert schema_errors(doctor.JSON_SCHEMA, rep) == []
        st = statuses(rep)
        bad = {k: v for k, v in st.items() if v not in ("PASS", "SKIP")}
        assert bad == {}, json.dumps(rep, indent=1)
        for cid in ("conflists", "plugins", "subnet-env", "bridge-address", "ip-forward",
                    "forward-policy", "vxlan-port", "vxlan-local", "public-ip", "mtu",
                    "ipam-leaks", "orphan-veths", "leftover-rules", "state-files"):
            assert st[cid] == "PASS", (cid, json.dumps(check(rep, cid), indent=1))
        rc, text = n.doctor_text()
        assert rc == 0 and text.rstrip().endswith("pycni doctor: healthy (no check failed)")
        assert all(line[:4] in ("PASS", "SKIP", "pycn", "note") for line in text.splitlines()), text


def test_doctor_reads_only(fabric):
    """Nothing on the node changes: links, addresses, routes, rules and state files."""
    n1 = fabric.nodes[0]

    def snapshot():
        # the kernel's own churn is not doctor's doing: IPv6 DAD finishing
        # (tentative flags, new link-local routes), learned fdb entries, and
        # rule counters (IGMP reports of links that just came up)
        lines = []
        for cmd in (("ip", "link"), ("ip", "-4", "addr"), ("ip", "-4", "route"),
                    ("nft", "list", "ruleset"), ("iptables-save",), ("ip6tables-save",),
                    ("iptables-legacy-save",), ("ip6tables-legacy-save",)):
            lines += [re.sub(r"counter packets \d+ bytes \d+", "counter", line)
                      for line in n1.sh(*cmd).stdout.splitlines() if not line.startswith("#")]
        lines += [line for line in n1.sh("bridge", "fdb").stdout.splitlines() if "permanent" in line]
        for root, _d, fs in sorted(os.walk(n1.dir)):
            for f in sorted(fs):
                st = os.stat(os.path.join(root, f))
                lines.append("%s %d %d" % (os.path.join(root, f), st.st_size, st.st_mtime_ns))
        return lines
    before = snapshot()
    n1.doctor()
    n1.whois()
    after = snapshot()
    assert [x for x in after if x not in before] == [] and [x for x in before if x not in after] == []


# ---------------------------------------------------------------- the seed's cases

def test_forward_policy_drop(fabric):
    """Docker's FORWARD DROP on node2 with no rule accepting the pod network."""
    n1, n2 = fabric.nodes
    n2.sh("iptables", "-P", "FORWARD", "DROP")
    rc, rep = n2.doctor()
    assert rc == 0 and check(rep, "forward-policy")["status"] == "PASS"     # FLANNEL-FWD accepts
    assert_names(rep, "forward-policy", "PASS", evidence_part="FLANNEL-FWD -s 10.244.0.0/16")
    n2.sh("iptables", "-F", "FLANNEL-FWD")                                 # an older flanneld
    assert not n1.ping("a", n2.pod_ip("b"))
    rc, rep = n2.doctor()
    assert rc == 1
    c = assert_names(rep, "forward-policy", "FAIL",
                     "iptables -A FORWARD -s %s -j ACCEPT && iptables -A FORWARD -d %s -j ACCEPT"
                     % (NETWORK, NETWORK), "DROP by policy DROP of filter FORWARD")
    run_fix(n2, c["fix"][0])
    assert n1.ping("a", n2.pod_ip("b"))
    assert n2.doctor()[0] == 0


def test_forward_reject_rule_and_nft_drop(fabric):
    n1, n2 = fabric.nodes
    n2.sh("iptables", "-I", "FORWARD", "1", "-i", "flannel.1", "-j", "REJECT")
    rc, rep = n2.doctor()
    c = assert_names(rep, "forward-policy", "FAIL", "iptables -I FORWARD 1 -s %s -j ACCEPT" % NETWORK,
                     "REJECT by -A FORWARD -i flannel.1 -j REJECT")
    run_fix(n2, c["fix"][0])
    assert statuses(n2.doctor()[1])["forward-policy"] == "PASS"
    n2.sh("nft", "table inet guard { chain guardfwd { type filter hook forward priority 0; "
                 "policy accept; ip saddr 10.244.1.0/24 drop; }; }")
    assert not n1.ping("a", n2.pod_ip("b"))
    rc, rep = n2.doctor()
    c = assert_names(rep, "forward-policy", "FAIL", "nft insert rule inet guard guardfwd ip saddr %s accept"
                     % NETWORK,
                     "DROP by nft inet guard chain guardfwd: ip saddr == 10.244.1.0/24 drop")
    run_fix(n2, c["fix"][0])
    assert n1.ping("a", n2.pod_ip("b"))


def test_firewall_rejects_vxlan(fabric):
    """The seed's 'admin prohibited filter': node2 rejects udp/8472."""
    n1, n2 = fabric.nodes
    n2.sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", "8472", "-j", "REJECT",
          "--reject-with", "icmp-admin-prohibited")
    assert not n1.ping("a", n2.pod_ip("b"))
    rc, rep = n2.doctor()
    assert rc == 1
    c = assert_names(rep, "vxlan-port", "FAIL",
                     "iptables -I INPUT 1 -p udp --dport 8472 -s 192.0.2.1 -j ACCEPT",
                     "REJECT by -A INPUT -p udp -m udp --dport 8472 -j REJECT")
    assert any("firewall-cmd --permanent --add-port=8472/udp" in f for f in c["fix"])
    assert statuses(n1.doctor()[1])["vxlan-port"] == "PASS"                # node1's side is fine
    run_fix(n2, c["fix"][0])
    assert n1.ping("a", n2.pod_ip("b"))
    # the same with nftables, on the way out of node1
    n1.sh("nft", "table inet fw { chain out { type filter hook output priority 0; udp dport 8472 drop; }; }")
    assert not n1.ping("a", n2.pod_ip("b"))
    rc, rep = n1.doctor()
    c = assert_names(rep, "vxlan-port", "FAIL", "nft insert rule inet fw out udp dport 8472 accept",
                     "DROP by nft inet fw chain out: udp dport == 8472 drop")
    run_fix(n1, c["fix"][0])
    assert n1.ping("a", n2.pod_ip("b"))


def test_stale_cni0_address(cluster):
    """cni0 left with an address of an earlier lease (10.244.3.0/24)."""
    n1, _n2 = cluster.up()
    n1.sh("ip", "link", "add", "cni0", "type", "bridge")
    n1.sh("ip", "addr", "add", "10.244.3.1/24", "dev", "cni0")
    rc, rep = n1.doctor()
    assert rc == 1
    c = assert_names(rep, "bridge-address", "FAIL", "ip addr del 10.244.3.1/24 dev cni0",
                     "cni0 holds 10.244.3.1/24, outside 10.244.1.0/24")
    # with a port attached the fix is to drain, then delete the bridge
    pod = cluster.netns_factory()
    n1.sh("ip", "link", "add", "vethstale", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    n1.sh("ip", "link", "set", "vethstale", "master", "cni0")
    _rc, rep = n1.doctor()
    assert_names(rep, "bridge-address", "FAIL", "ip link delete cni0")
    n1.sh("ip", "link", "del", "vethstale")
    run_fix(n1, c["fix"][0])
    n1.add_pod("a")
    assert statuses(n1.doctor()[1])["bridge-address"] == "PASS"


def test_multihomed_node_announces_its_default_route_address(cluster, netns_factory, tmp_path):
    """node1 has a second NIC with the default route; flannel.1 was made on it
    (flanneld without --iface), but node2 is reached through eth0."""
    n1, n2 = cluster.nodes
    wan = netns_factory()
    n1.sh("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", wan.name)
    n1.sh("ip", "addr", "add", "198.51.100.1/24", "dev", "eth1")
    n1.sh("ip", "link", "set", "eth1", "up")
    n1.sh("ip", "route", "add", "default", "via", "198.51.100.254", "dev", "eth1", "onlink")
    wrong = cluster.write_nodes(str(tmp_path / "wrong.json"), [("node1", "198.51.100.1", "10.244.1.0/24"),
                                                               ("node2", "192.0.2.2", "10.244.2.0/24")])
    n1.fabric(wrong)
    n2.fabric()
    n1.write_conflist()
    n2.write_conflist()
    n1.add_pod("a")
    rc, rep = n1.doctor()
    assert rc == 1
    c = assert_names(rep, "vxlan-local", "FAIL", "flanneld --iface=eth0 (or --public-ip=192.0.2.1)",
                     "peer 192.0.2.2: route get -> dev eth0 src 192.0.2.1")
    assert any("flannel.1 sends from 198.51.100.1 on eth1" in e for e in c["evidence"])
    # strict rp_filter on the underlay makes the asymmetry bite twice
    n1.sh("sysctl", "-qw", "net.ipv4.conf.eth1.rp_filter=1")
    _rc, rep = n1.doctor()
    assert_names(rep, "rp-filter", "WARN", "rp_filter=2")
    # the fix, in pycni fabric terms: node1 announces 192.0.2.1
    n1.fabric()
    assert statuses(n1.doctor()[1])["vxlan-local"] == "PASS"


def test_duplicate_public_ips(fabric, tmp_path):
    n1, _n2 = fabric.nodes
    nodes = tmp_path / "dup-nodes.json"
    nodes.write_text(json.dumps([{"name": "node1", "publicIP": "192.0.2.1", "subnet": "10.244.1.0/24"},
                                 {"name": "node3", "publicIP": "192.0.2.1", "subnet": "10.244.3.0/24"}]))
    rc, rep = n1.doctor("--nodes", str(nodes))
    assert rc == 1
    assert_names(rep, "public-ip", "FAIL", "--public-ip on node1, node3",
                 "192.0.2.1 is announced by node1, node3")
    ann = tmp_path / "nodes-annotated.json"
    ann.write_text(json.dumps({"kind": "List", "items": [
        {"metadata": {"name": n, "annotations": {"flannel.alpha.coreos.com/public-ip": "10.0.2.15"}}}
        for n in ("vagrant1", "vagrant2")]}))
    _rc, rep = n1.doctor("--annotations", str(ann))
    assert_names(rep, "public-ip", "FAIL", "public-ip-overwrite",
                 "10.0.2.15 is announced by vagrant1, vagrant2")
    _rc, rep = n1.doctor("--annotations", str(ann), "--node", "vagrant1")
    assert_names(rep, "public-ip", "FAIL", None,
                 "this node (vagrant1) announces 10.0.2.15, which none of its")
    # live: a second VTEP pointing at node2's address in node1's fdb
    n1.sh("bridge", "fdb", "append", "0e:fe:c0:00:02:99", "dev", "flannel.1", "dst", "192.0.2.2")
    _rc, rep = n1.doctor()
    assert_names(rep, "public-ip", "FAIL", None, "all point at 192.0.2.2")
    n1.sh("bridge", "fdb", "del", "0e:fe:c0:00:02:99", "dev", "flannel.1", "dst", "192.0.2.2")
    assert statuses(n1.doctor()[1])["public-ip"] == "PASS"


def test_mtu_chain(fabric):
    n1, _n2 = fabric.nodes
    veth = n1.whois(n1.pod_ip("a"))[1]["attachments"][0]["hostVeth"]["name"]
    n1.sh("ip", "link", "set", veth, "mtu", "1400")
    rc, rep = n1.doctor()
    assert rc == 1
    c = assert_names(rep, "mtu", "FAIL", "recreate the pods of %s" % veth,
                     "mismatch: veth %s (default/a) mtu 1400" % veth)
    n1.sh("ip", "link", "set", veth, "mtu", "1450")
    n1.sh("ip", "link", "set", "eth0", "mtu", "1400")
    rc, rep = n1.doctor()
    c = assert_names(rep, "mtu", "FAIL", "ip link set flannel.1 mtu 1350",
                     "mismatch: flannel.1 mtu 1450 needs an underlay of 1500; eth0 has 1400")
    n1.sh("ip", "link", "set", "eth0", "mtu", "1500")
    n1.sh("ip", "link", "set", "cni0", "mtu", "1400")
    c = assert_names(n1.doctor()[1], "mtu", "FAIL", "ip link set cni0 mtu 1450")
    run_fix(n1, c["fix"][0])
    assert statuses(n1.doctor()[1])["mtu"] == "PASS"


def test_ip_forward_off(fabric):
    n1, n2 = fabric.nodes
    n2.sh("sysctl", "-qw", "net.ipv4.ip_forward=0")
    assert not n1.ping("a", n2.pod_ip("b"))
    rc, rep = n2.doctor()
    assert rc == 1
    c = assert_names(rep, "ip-forward", "FAIL", "sysctl -w net.ipv4.ip_forward=1", "net.ipv4.ip_forward = 0")
    run_fix(n2, c["fix"][0])
    assert n1.ping("a", n2.pod_ip("b"))


# ---------------------------------------------------------------- leftovers

def test_dead_pod_leaves_lease_rules_and_records(fabric):
    """A pod whose netns went away without DEL: its lease, hostPort table,
    cache entry and flannel saved file are named, and the printed DEL frees them."""
    n1, _n2 = fabric.nodes
    pod, res = n1.add_pod("dead", ports=[(9090, 90, "udp")])
    ip = res["ips"][0]["address"].split("/")[0]
    n1.kill_pod("dead")
    rc, rep = n1.doctor()
    assert rc == 0                                     # leftovers warn, nothing is broken yet
    c = assert_names(rep, "ipam-leaks", "WARN", "pycni del cbr0 --container-id",
                     "cbr0 %s held by" % ip)
    assert_names(rep, "leftover-rules", "WARN", "pycni del cbr0", "DNAT udp 9090 -> %s:90" % ip)
    assert_names(rep, "stale-records", "WARN", "pycni del cbr0", "netns %s gone" % pod.path)
    run_fix(n1, c["fix"][0])
    rc, rep = n1.doctor()
    st = statuses(rep)
    assert (st["ipam-leaks"], st["leftover-rules"], st["stale-records"]) == ("PASS", "PASS", "PASS")
    assert not os.path.exists(os.path.join(n1.ipam_dir, NET_NAME, ip))


def test_leaked_lease_without_any_record(fabric):
    n1, _n2 = fabric.nodes
    lease = os.path.join(n1.ipam_dir, NET_NAME, "10.244.1.77")
    with open(lease, "w") as f:
        f.write("ghost-container\r\neth0")
    _rc, rep = n1.doctor()
    c = assert_names(rep, "ipam-leaks", "WARN", "rm %s" % lease,
                     "cbr0 10.244.1.77 held by ghost-container/eth0")
    run_fix(n1, c["fix"][0])
    assert statuses(n1.doctor()[1])["ipam-leaks"] == "PASS"


def test_orphan_veths(fabric):
    n1, _n2 = fabric.nodes
    pod = fabric.netns_factory()
    n1.sh("ip", "link", "add", "vethorphan", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    n1.sh("ip", "link", "set", "vethorphan", "master", "cni0", "up")
    n1.sh("ip", "link", "set", "vethorphan", "alias", "pycni net=cbr0 cid=ghost if=eth0")
    pod2 = fabric.netns_factory()
    n1.sh("ip", "link", "add", "vethnoalias", "type", "veth", "peer", "name", "eth0", "netns", pod2.name)
    n1.sh("ip", "link", "set", "vethnoalias", "master", "cni0", "up")
    _rc, rep = n1.doctor()
    c = assert_names(rep, "orphan-veths", "WARN", "ip link delete vethorphan",
                     "its attachment cbr0/ghost/eth0 holds no lease")
    assert "ip link delete vethnoalias" in c["fix"]
    for f in c["fix"]:
        run_fix(n1, f)
    assert statuses(n1.doctor()[1])["orphan-veths"] == "PASS"


def test_leftover_portmap_chain_of_a_dead_pod_whose_hostport_was_taken_over(fabric):
    """A pod killed without DEL keeps its portmap chain; a new pod mapping the
    same hostPort takes it over (the holder's netns is gone), and doctor
    flags what is left of the dead one with the commands that remove it."""
    n1, _n2 = fabric.nodes
    pod, _res = n1.add_pod("old", ports=[(8081, 80, "tcp")])
    os.remove(n1.cache_file_of(pod))             # the runtime forgot it
    n1.kill_pod("old")
    n1.add_pod("new", ports=[(8081, 80, "tcp")])
    _rc, rep = n1.doctor()
    # its rule record says its netns is gone: the DEL through cbr0's plugins, safe for --fix
    c = assert_names(rep, "leftover-rules", "WARN", "pycni del cbr0 --container-id", "(portmap) of cbr0/")
    assert c["safeFix"] == c["fix"]
    assert not any("8081" in e for e in c["evidence"])        # the port is the new pod's now
    for f in c["fix"]:
        run_fix(n1, f)
    assert statuses(n1.doctor()[1])["leftover-rules"] == "PASS"


def _wait_gone(node, link, timeout=10):
    """The kernel frees a deleted netns, and the veth whose peer it held,
    a moment after the last reference goes: until then the pod looks live."""
    deadline = time.monotonic() + timeout
    while node.sh("ip", "link", "show", "dev", link, check=False).returncode == 0:
        assert time.monotonic() < deadline, "%s outlived its pod's netns" % link
        time.sleep(0.05)


def test_leftover_masquerade_and_firewall_rules_of_a_dead_pod(fabric):
    """A bridge + firewall network (ipMasq, nftables) whose pod dies without
    DEL and whose cache entry is lost: doctor names its masquerade and
    firewall elements, and the fixes it prints remove them."""
    n1, _n2 = fabric.nodes
    n1.write_conflist("20-fwnet.conflist", {"cniVersion": "1.1.0", "name": "fwnet", "plugins": [
        {"type": "bridge", "bridge": "cni-fw", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                  "dataDir": n1.ipam_dir}},
        {"type": "firewall", "backend": "nftables"}]})
    pod = fabric.netns_factory()
    res = json.loads(n1.sh(n1.pycni, "add", "fwnet", pod.path, env=n1.env()).stdout)
    ip = res["ips"][0]["address"].split("/")[0]
    _rc, rep = n1.doctor()
    assert statuses(rep)["leftover-rules"] == "PASS", rep
    os.remove(n1.cache_file_of(pod))                  # the runtime forgot it ...
    pod.delete()                                      # ... and its netns went away
    _wait_gone(n1, res["interfaces"][1]["name"])
    lease = os.path.join(n1.ipam_dir, "fwnet", ip)
    os.remove(lease)                                  # only the rules are left
    _rc, rep = n1.doctor()
    c = assert_names(rep, "leftover-rules", "WARN")
    text = "\n".join(c["evidence"])
    assert "inet pycni-fw" in text and "(firewall) of fwnet/" in text, text
    assert "inet pycni-masq" in text and "(bridge ipMasq) of fwnet/" in text, text
    # whois shows the same leftovers as the row of a gone attachment
    _rc, who = n1.whois()
    rows = [r for r in who["attachments"] if r["network"] == "fwnet"]
    assert len(rows) == 1 and not rows[0]["live"] and "rules" in rows[0]["orphan"], rows
    wheres = " | ".join(g["where"] for g in rows[0]["rules"])
    assert "inet pycni-fw" in wheres and "inet pycni-masq" in wheres, wheres
    for f in c["fix"]:
        run_fix(n1, f)
    assert statuses(n1.doctor()[1])["leftover-rules"] == "PASS"
    assert not [r for r in n1.whois()[1]["attachments"] if r["network"] == "fwnet"]


# ---------------------------------------------------------------- configs and files

def test_shadowing_conflists(fabric):
    n1, _n2 = fabric.nodes
    old = n1.write_conflist("05-old.conflist", {"cniVersion": "1.0.0", "name": "oldnet", "plugins": [
        {"type": "bridge", "bridge": "cni-old", "ipam": {"type": "host-local",
                                                          "ranges": [[{"subnet": "10.88.0.0/16"}]]}}]})
    rc, rep = n1.doctor()
    assert rc == 1
    assert_names(rep, "conflists", "FAIL", "mv %s /root/" % old,
                 "1. 05-old.conflist: network oldnet (bridge)")
    os.remove(old)
    n1.write_conflist("20-dup.conflist", {"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.7.0/24"}]]}}]})
    n1.write_conflist("30-other.conflist", {"cniVersion": "1.0.0", "name": "other", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.5.0/24"}]]}}]})
    _rc, rep = n1.doctor()
    c = assert_names(rep, "conflists", "FAIL", "20-dup.conflist /root/")
    assert "network cbr0 is defined by 10-flannel.conflist, 20-dup.conflist" in c["summary"]
    assert "networks cbr0 (10.244.0.0/16, 10-flannel.conflist) and other (10.244.5.0/24, " \
           "30-other.conflist) overlap" in c["summary"]


def test_missing_plugin(fabric):
    n1, _n2 = fabric.nodes
    with open(os.path.join(n1.conf_dir, "10-flannel.conflist")) as f:
        conf = json.load(f)
    conf["plugins"].append({"type": "bandwidth"})
    n1.write_conflist(conf=conf)
    rc, rep = n1.doctor()
    assert rc == 1
    c = assert_names(rep, "plugins", "FAIL", "install bandwidth into %s" % fabric.plugins)
    assert "network cbr0 needs bandwidth: not in %s" % fabric.plugins in c["summary"]


def test_corrupt_state_files(fabric):
    """A 0-byte flannel saved file (a VM restart mid-write, cni-plugin#43), a
    broken cache entry and a torn lease; pycni del repairs the first."""
    n1, _n2 = fabric.nodes
    _pod, res = n1.add_pod("c")
    ip = res["ips"][0]["address"].split("/")[0]
    cid = n1.whois(ip)[1]["attachments"][0]["containerID"]
    saved = os.path.join(n1.flannel_dir, cid)
    open(saved, "w").close()
    rc, rep = n1.doctor()
    assert rc == 1
    c = assert_names(rep, "state-files", "FAIL", "pycni del <network> --container-id %s" % cid,
                     "flannel saved config %s is empty" % saved)
    run_fix(n1, c["fix"][0].replace("<network>", NET_NAME))
    assert not os.path.exists(saved)
    assert not os.path.exists(os.path.join(n1.ipam_dir, NET_NAME, ip))
    with open(os.path.join(n1.cache, "results", "cbr0-broken-eth0"), "w") as f:
        f.write("{not json")
    open(os.path.join(n1.ipam_dir, NET_NAME, "10.244.1.99"), "w").close()
    _rc, rep = n1.doctor()
    c = assert_names(rep, "state-files", "FAIL",
                     "rm %s" % os.path.join(n1.cache, "results", "cbr0-broken-eth0"),
                     "lease %s holds no owner" % os.path.join(n1.ipam_dir, NET_NAME, "10.244.1.99"))


def test_subnet_env_missing_or_broken(fabric):
    n1, _n2 = fabric.nodes
    with open(n1.subnet_file) as f:
        good = f.read()
    os.remove(n1.subnet_file)
    rc, rep = n1.doctor()
    assert rc == 1
    assert_names(rep, "subnet-env", "FAIL", "start flanneld", "%s: %s does not exist"
                 % (n1.subnet_file, n1.subnet_file))
    with open(n1.subnet_file, "w") as f:
        f.write("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.245.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert_names(n1.doctor()[1], "subnet-env", "FAIL", None, "FLANNEL_SUBNET 10.245.1.0/24 is outside")
    with open(n1.subnet_file, "w") as f:
        f.write(good.replace("FLANNEL_MTU=1450\n", ""))
    assert_names(n1.doctor()[1], "subnet-env", "FAIL", "restart flanneld", "is missing FLANNEL_MTU")


# ---------------------------------------------------------------- output, bundle, exit codes

def test_human_output_and_exit_codes(fabric, tmp_path):
    n1, n2 = fabric.nodes
    n2.sh("sysctl", "-qw", "net.ipv4.ip_forward=0")
    rc, text = n2.doctor_text()
    assert rc == 1
    lines = text.splitlines()
    assert lines[0].startswith("pycni doctor ") and "FAIL 1" in lines[0]
    i = next(i for i, line in enumerate(lines) if line.startswith("FAIL  ip-forward"))
    assert lines[i + 1].startswith("        net.ipv4.ip_forward = 0")
    assert lines[i + 2] == "    fix: sysctl -w net.ipv4.ip_forward=1"
    assert lines[-1] == "pycni doctor: FAILED: see the fix lines above"
    # a check that cannot read its input and nothing failed: 2
    rc, rep = n1.doctor("--nodes", str(tmp_path / "missing.json"))
    assert rc == 2 and rep["exit"] == 2
    assert check(rep, "public-ip")["error"].startswith("cannot read --nodes")
    r = n1.sh(n1.pycni, "doctor", "--only", "nope", check=False)
    assert r.returncode == 2 and "unknown check nope" in r.stderr
    rc, rep = n1.doctor("--only", "mtu,ip-forward")
    assert rc == 0 and [c["id"] for c in rep["checks"]] == ["ip-forward", "mtu"]


def test_bundle(fabric, tmp_path):
    n1, _n2 = fabric.nodes
    with open(fabric.log, "a") as f:
        f.write("2026-01-01T00:00:00.000Z bridge ADD marker-line-for-the-bundle\n")
    out = tmp_path / "bundle"
    rc, text = n1.doctor_text("--bundle", str(out), "--log", fabric.log)
    assert rc == 0 and ("bundle: " in text)
    names = sorted(os.listdir(out))
    assert names == sorted(["README.txt", "conflists", "doctor.json", "doctor.txt", "whois.json", "whois.txt",
                            "subnet.env", "ipam.txt", "state.txt", "nft-ruleset.txt", "iptables-save.txt",
                            "links.txt", "routes.txt", "sysctl.txt", "log-tail.txt", "versions.txt"])
    assert os.listdir(out / "conflists") == ["10-flannel.conflist"]
    rep = json.loads((out / "doctor.json").read_text())
    assert schema_errors(doctor.JSON_SCHEMA, rep) == [] and rep["exit"] == 0
    assert "FLANNEL_SUBNET=10.244.1.1/24" in (out / "subnet.env").read_text()
    assert "cbr0/10.244.1.2" in (out / "ipam.txt").read_text()
    assert "pycni-hostport" in (out / "nft-ruleset.txt").read_text()
    assert "FLANNEL-FWD" in (out / "iptables-save.txt").read_text()
    assert "flannel.1" in (out / "links.txt").read_text()
    assert "10.244.2.0/24" in (out / "routes.txt").read_text()
    assert "marker-line-for-the-bundle" in (out / "log-tail.txt").read_text()
    assert "net.ipv4.ip_forward = 1" in (out / "sysctl.txt").read_text()
    assert len(json.loads((out / "whois.json").read_text())["attachments"]) == 1
    assert "doctor.json" in (out / "README.txt").read_text()


def test_bundle_is_private_and_never_follows_a_link(cluster, tmp_path):
    """``--bundle DIR`` as root: a DIR that exists gets a fresh 0700 dir of
    its own inside (links planted in DIR as the bundle's file names are
    never written through); a DIR that does not exist is made 0700; only
    regular files are copied or shown, never the target of a link planted
    in a lease dir, a flannel dir or the conf dir."""
    import stat
    n1, _n2 = cluster.up()
    n1.add_pod("a")
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-KEY\n")
    os.chmod(secret, 0o600)
    (tmp_path / "secretdir").mkdir()
    (tmp_path / "secretdir" / "10.244.1.7").write_text("TOP-SECRET-KEY\n")
    os.symlink(secret, os.path.join(n1.ipam_dir, "cbr0", "10.244.1.99"))
    os.symlink(tmp_path / "secretdir", os.path.join(n1.ipam_dir, "cbr9"))
    os.symlink(secret, os.path.join(n1.flannel_dir, "deadbeef"))
    os.symlink(secret, os.path.join(n1.conf_dir, "20-evil.conflist"))
    given = tmp_path / "given"
    given.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    for name in ("doctor.json", "README.txt", "ipam.txt", "state.txt", "conflists"):
        os.symlink(victim, given / name)
    rc, text = n1.doctor_text("--bundle", str(given), "--log", cluster.log)
    assert rc in (0, 1), text
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    made = [p for p in given.iterdir() if not p.is_symlink()]
    assert len(made) == 1 and made[0].name.startswith("pycni-bundle-"), made
    out = made[0]
    st = out.lstat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert "bundle: " in text and str(out) in text
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"doctor.json", "ipam.txt", "state.txt", "10-flannel.conflist"}
    for p in files:
        assert "TOP-SECRET" not in p.read_text(errors="replace"), p
        assert stat.S_IMODE(p.lstat().st_mode) == 0o600 and not p.is_symlink(), p
    assert not any(p.is_symlink() for p in out.rglob("*"))
    ipam = (out / "ipam.txt").read_text()
    assert "10.244.1.99 -> %s (symbolic link, not followed)" % secret in ipam, ipam
    assert "cbr9 -> %s (symbolic link, not followed)" % (tmp_path / "secretdir") in ipam, ipam
    assert "deadbeef -> %s (symbolic link, not followed)" % secret in (out / "state.txt").read_text()
    assert "20-evil.conflist" in (out / "README.txt").read_text()          # named as not copied
    assert not (out / "conflists" / "20-evil.conflist").exists()
    # a DIR that does not exist yet is the bundle itself, made private
    new = tmp_path / "deeper" / "new"
    rc, text = n1.doctor_text("--bundle", str(new), "--log", cluster.log)
    assert rc in (0, 1) and "bundle: " in text and str(new) in text
    assert stat.S_IMODE(new.stat().st_mode) == 0o700 and (new / "doctor.json").is_file()


def test_go_plugins_state_is_read(cluster, go_plugins):
    """A node whose pods the Go reference plugins attached (no alias on the
    veth, iptables masquerade chains): whois and doctor still map them."""
    n1, _n2 = cluster.up(conflists=False)
    conf = {"cniVersion": "0.4.0", "name": "gonet", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "dataDir": n1.ipam_dir, "ranges": [[{"subnet": "10.244.1.0/24"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    n1.write_conflist("10-go.conflist", conf)
    pod = cluster.netns_factory()
    env = n1.env(CNI_PATH=go_plugins, CAP_ARGS=json.dumps({"portMappings": [
        {"hostPort": 7070, "containerPort": 70, "protocol": "tcp"}]}))
    n1.sh(n1.pycni, "add", "gonet", pod.path, env=env)
    rc, out = n1.whois()
    row = out["attachments"][0]
    assert row["network"] == "gonet" and row["hostVeth"] and row["netns"]["path"] == pod.path
    assert [p["hostPort"] for p in row["hostPorts"]] == [7070]
    assert {r["where"].split()[-1].startswith("CNI-") for r in row["rules"]} == {True}
    rc, rep = n1.doctor("--bin-dir", go_plugins)
    st = statuses(rep)
    assert (st["orphan-veths"], st["leftover-rules"], st["ipam-leaks"]) == ("PASS", "PASS", "PASS"), rep
    # DEL by the Go plugins, then a leftover masquerade chain made by hand
    n1.sh(n1.pycni, "del", "gonet", pod.path, env=n1.env(CNI_PATH=go_plugins))
    chain = naming.go_chain("gonet", "deadcid")
    n1.sh("iptables", "-t", "nat", "-N", chain)
    n1.sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.244.1.50/32", "-m", "comment", "--comment",
          'name: "gonet" id: "deadcid"', "-j", chain)
    _rc, rep = n1.doctor("--bin-dir", go_plugins)
    c = assert_names(rep, "leftover-rules", "WARN", "iptables -t nat -X %s" % chain)
    for f in c["fix"]:
        run_fix(n1, f)
    assert statuses(n1.doctor("--bin-dir", go_plugins)[1])["leftover-rules"] == "PASS"
