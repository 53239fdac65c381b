"""``pycni doctor --fix``: each fix a check marks safe, applied on a broken
node built in sandbox namespaces (doctor_env: two flannel nodes), the
checks PASS after, and nothing else on the node changed; the prompt
applies nothing it was not told to; what cannot be attributed is left."""

import json
import os
import re
import time

import pytest
from doctor_env import NET_NAME, NETWORK, Cluster, check, statuses

from cnilib.firewall import naming
from cnilib.ops.cli import cnitool_container_id

pytestmark = pytest.mark.root


@pytest.fixture
def cluster(plugins, netns_factory, tmp_path):
    return Cluster(plugins, netns_factory, tmp_path)


@pytest.fixture
def fabric(cluster):
    """Both nodes up with one pod each."""
    n1, n2 = cluster.up()
    n1.add_pod("a")
    n2.add_pod("b")
    assert n1.ping("a", n2.pod_ip("b"))
    return cluster


def fix(node, *args, answers=None):
    """(exit status, output) of ``pycni doctor --fix ARGS`` in ``node``."""
    import subprocess
    argv = ["ip", "netns", "exec", node.ns.name, node.pycni, "doctor", "--fix", *node.state_args(),
            "--bin-dir", node.cluster.plugins, *args]
    p = subprocess.run(argv, input=answers if answers is not None else "", capture_output=True, text=True,
                       env=node.env(), timeout=300)
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p.returncode, p.stdout + p.stderr


def snapshot(node):
    """Links, addresses, routes, rules (counters aside) and every file under
    the node's dir, the sysctls the fixes touch, and the machine's sysctl.d."""
    out = {}
    for cmd in (("ip", "link"), ("ip", "-4", "addr"), ("ip", "-4", "route"), ("nft", "list", "ruleset"),
                ("iptables-save",), ("ip6tables-save",)):
        out[" ".join(cmd)] = sorted(re.sub(r"counter packets \d+ bytes \d+|\[\d+:\d+\]", "", ln)
                                    for ln in node.sh(*cmd).stdout.splitlines()
                                    if not ln.startswith("#") and "valid_lft" not in ln)
    files = []
    for root, _d, fs in sorted(os.walk(node.dir)):
        for f in sorted(fs):
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                files.append("%s %s" % (p, fh.read()))
    out["files"] = files
    out["sysctl"] = [node.sh("sysctl", "-n", k).stdout.strip() for k in ("net.ipv4.ip_forward",)]
    out["sysctl.d"] = sorted(os.listdir("/etc/sysctl.d")) if os.path.isdir("/etc/sysctl.d") else []
    return out


def changes(before, after):
    """{part: (gone, new)} of what differs."""
    out = {}
    for k in before:
        gone = [x for x in before[k] if x not in after[k]]
        new = [x for x in after[k] if x not in before[k]]
        if gone or new:
            out[k] = (gone, new)
    return out


def applied_lines(node):
    with open(node.cluster.log) as f:
        return [ln for ln in f.read().splitlines() if ln.startswith("  doctor --fix: ")]


# ---------------------------------------------------------------- one fix each

def test_fix_stale_bridge_address(cluster):
    n1, _n2 = cluster.up()
    n1.sh("ip", "link", "add", "cni0", "mtu", "1450", "type", "bridge")
    n1.sh("ip", "addr", "add", "10.244.3.1/24", "dev", "cni0")
    _rc, rep = n1.doctor()
    c = check(rep, "bridge-address")
    assert c["status"] == "FAIL"
    assert c["safeFix"] == ["ip addr del 10.244.3.1/24 dev cni0   # no pod uses it; the next ADD adds "
                            "the gateway"]
    before = snapshot(n1)
    rc, out = fix(n1, "--yes")
    assert rc == 0, out
    assert "[1] bridge-address  ip addr del 10.244.3.1/24 dev cni0" in out, out
    assert "applying [1] ip addr del 10.244.3.1/24 dev cni0\n  done" in out, out
    assert out.rstrip().endswith("pycni doctor: healthy (no check failed)"), out
    d = changes(before, snapshot(n1))
    assert list(d) == ["ip -4 addr"] and not d["ip -4 addr"][1], d
    assert [x for x in d["ip -4 addr"][0] if "10.244.3.1/24" not in x and " cni0: " not in x] == [], d
    assert statuses(n1.doctor()[1])["bridge-address"] == "PASS"
    assert applied_lines(n1) == ["  doctor --fix: applied bridge-address: ip addr del 10.244.3.1/24 dev cni0"]
    with open(cluster.log) as f:
        assert re.search(r" pycni\[\d+\] DOCTOR-FIX applied=1 failed=0 declined=0 exit=0 ", f.read())
    # with a pod on the bridge the fix is a drain, for a person: nothing to apply
    n1.sh("ip", "addr", "add", "10.244.3.1/24", "dev", "cni0")
    pod = cluster.netns_factory()
    n1.sh("ip", "link", "add", "vethstale", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    n1.sh("ip", "link", "set", "vethstale", "master", "cni0")
    before = snapshot(n1)
    rc, out = fix(n1, "--yes")
    assert rc == 1 and "nothing to apply: no failing check marks a fix safe" in out, out
    assert changes(before, snapshot(n1)) == {}


def test_fix_ip_forward(fabric):
    n1, n2 = fabric.nodes
    n2.sh("sysctl", "-qw", "net.ipv4.ip_forward=0")
    assert not n1.ping("a", n2.pod_ip("b"))
    c = check(n2.doctor()[1], "ip-forward")
    assert c["safeFix"] == ["sysctl -w net.ipv4.ip_forward=1"]
    assert any(f.startswith("printf ") and "/etc/sysctl.d/" in f for f in c["fix"])    # a person's
    before = snapshot(n2)
    rc, out = fix(n2, "--yes")
    assert rc == 0, out
    d = changes(before, snapshot(n2))
    assert d == {"sysctl": (["0"], ["1"])}, d            # /etc/sysctl.d untouched
    assert n1.ping("a", n2.pod_ip("b"))


def test_fix_lease_rules_and_records_of_a_dead_pod(fabric):
    """A pod whose netns went away without a DEL: its lease, hostPort rule
    elements, cache entry and flannel file go by one DEL; the live pod stays."""
    n1, n2 = fabric.nodes
    pod, res = n1.add_pod("dead", ports=[(9090, 90, "udp")])
    ip = res["ips"][0]["address"].split("/")[0]
    n1.kill_pod("dead")
    _rc, rep = n1.doctor()
    lines = set()
    for cid in ("ipam-leaks", "leftover-rules", "stale-records"):
        c = check(rep, cid)
        assert c["status"] == "WARN" and len(c["safeFix"]) == 1, c
        assert "is gone: hostport record: netns %s is gone" % pod.path in "\n".join(c["evidence"])
        lines |= set(c["safeFix"])
    assert len(lines) == 1 and " del cbr0 --container-id " in lines.pop()
    live_files = [f for f in snapshot(n1)["files"] if n1.pods["a"][0].path in f or n1.pod_ip("a") in f]
    before = snapshot(n1)
    rc, out = fix(n1, "--yes")
    assert rc == 0, out
    assert out.count("applying [") == 1, out
    st = statuses(n1.doctor()[1])
    assert (st["ipam-leaks"], st["leftover-rules"], st["stale-records"]) == ("PASS", "PASS", "PASS")
    after = snapshot(n1)
    d = changes(before, after)
    cid = cnitool_container_id(pod.path)
    for part, (gone, new) in d.items():
        if part == "nft list ruleset":
            continue        # a set printed over lines reflows when an element goes: keys below
        assert not new, (part, new)
        for x in gone:
            assert ip in x or cid in x, (part, x)
    keys = [set(re.findall(r'comment "pycni ([0-9a-f-]+) ', "\n".join(x["nft list ruleset"])))
            for x in (before, after)]
    assert keys[0] - keys[1] == {"%s-%s" % (naming.net_hash(NET_NAME), naming.attachment_hash(
        NET_NAME, cid, "eth0"))} and not keys[1] - keys[0], keys
    assert not os.path.exists(os.path.join(n1.ipam_dir, NET_NAME, ip))
    assert [f for f in snapshot(n1)["files"] if f in live_files] == live_files
    assert n1.ping("a", n2.pod_ip("b"))


def test_fix_rule_elements_of_a_dead_pod_whose_network_is_gone(fabric):
    """The network's config is gone too: no DEL can run, so the fixes are
    the element deletions its rule records attribute (safe) and the lease
    and cache files by hand (never applied: no plugin lock)."""
    n1, _n2 = fabric.nodes
    conf = n1.write_conflist("20-fwnet.conflist", {"cniVersion": "1.1.0", "name": "fwnet", "plugins": [
        {"type": "bridge", "bridge": "cni-fw", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                  "dataDir": n1.ipam_dir}},
        {"type": "firewall", "backend": "nftables"}]})
    pod = fabric.netns_factory()
    res = json.loads(n1.sh(n1.pycni, "add", "fwnet", pod.path, env=n1.env()).stdout)
    ip = res["ips"][0]["address"].split("/")[0]
    pod.delete()
    os.remove(conf)
    veth = [i["name"] for i in res["interfaces"] if not i.get("sandbox") and i["name"] != "cni-fw"][0]
    for _ in range(500):        # the kernel takes the veth, then the bridge's carrier, a moment later
        if n1.sh("ip", "link", "show", veth, check=False).returncode != 0 and \
                "NO-CARRIER" in n1.sh("ip", "link", "show", "cni-fw").stdout:
            break
        time.sleep(0.02)
    _rc, rep = n1.doctor()
    rules = check(rep, "leftover-rules")
    assert rules["status"] == "WARN" and rules["safeFix"] and rules["safeFix"] == rules["fix"], rules
    assert all(f.startswith("nft delete element inet pycni-") for f in rules["safeFix"]), rules
    leaks = check(rep, "ipam-leaks")
    assert leaks["status"] == "WARN" and leaks["safeFix"] == [], leaks
    assert any(f.startswith("rm ") for f in leaks["fix"])
    before = snapshot(n1)
    rc, out = fix(n1, "--yes")
    assert rc == 0, out
    st = statuses(n1.doctor()[1])
    assert st["leftover-rules"] == "PASS" and st["ipam-leaks"] == "WARN" and st["stale-records"] == "WARN"
    d = changes(before, snapshot(n1))
    assert set(d) == {"nft list ruleset"}, d
    assert all(ip in x or "fwnet" in x or x.strip() in ("", "}") or "elements" in x
               for x in d["nft list ruleset"][0]), d
    assert os.path.exists(os.path.join(n1.ipam_dir, "fwnet", ip))


def test_fix_forward_accept_rules(fabric):
    """Docker's FORWARD DROP and an empty FLANNEL-FWD (an older flanneld):
    the fix is FLANNEL-FWD as flanneld keeps it, not the policy."""
    n1, n2 = fabric.nodes
    n2.sh("iptables", "-P", "FORWARD", "DROP")
    n2.sh("iptables", "-F", "FLANNEL-FWD")
    assert not n1.ping("a", n2.pod_ip("b"))
    c = check(n2.doctor()[1], "forward-policy")
    assert c["status"] == "FAIL"
    assert len(c["safeFix"]) == 1 and " fabric forward-rules --network %s   # " % NETWORK in c["safeFix"][0]
    assert any("-P FORWARD ACCEPT" in f for f in c["fix"])           # print-only
    before = snapshot(n2)
    rc, out = fix(n2, "--yes")
    assert rc == 0, out
    assert n1.ping("a", n2.pod_ip("b"))
    d = changes(before, snapshot(n2))
    assert set(d) - {"nft list ruleset"} == {"iptables-save"}, d      # iptables-nft shows in nft too
    nft = d.get("nft list ruleset", ([], []))
    assert nft[0] == [] and all(NETWORK in x and x.strip().endswith("accept") for x in nft[1]), d
    gone, new = d["iptables-save"]
    assert sorted(new) == sorted(['-A FLANNEL-FWD -s %s -m comment --comment "flanneld forward" -j ACCEPT'
                                  % NETWORK, '-A FLANNEL-FWD -d %s -m comment --comment "flanneld forward" '
                                  '-j ACCEPT' % NETWORK]), d
    assert gone == [] and ":FORWARD DROP " in "\n".join(snapshot(n2)["iptables-save"])
    # idempotent: the same line again changes nothing
    before = snapshot(n2)
    n2.sh(*c["safeFix"][0].split("   #")[0].split(), env=n2.env())
    assert changes(before, snapshot(n2)) == {}
    r = n2.sh(n2.pycni, "fabric", "forward-rules", check=False, env=n2.env())
    assert r.returncode == 1 and "forward-rules needs --network" in r.stderr, r.stderr


# ---------------------------------------------------------------- asking, and what is left

def two_fixes(cluster):
    n1, _n2 = cluster.up()
    n1.sh("ip", "link", "add", "cni0", "mtu", "1450", "type", "bridge")
    n1.sh("ip", "addr", "add", "10.244.3.1/24", "dev", "cni0")
    n1.sh("sysctl", "-qw", "net.ipv4.ip_forward=0")
    return n1


@pytest.mark.parametrize("answers", ["n\nn\n", "", "q\n", "no\nyes\n"])
def test_fix_asks_first(cluster, answers):
    n1 = two_fixes(cluster)
    before = snapshot(n1)
    rc, out = fix(n1, answers=answers)
    assert "apply [1] ip addr del 10.244.3.1/24 dev cni0? [y/N/q]" in out, out
    d = changes(before, snapshot(n1))
    if answers == "no\nyes\n":
        assert "apply [2] sysctl -w net.ipv4.ip_forward=1? [y/N/q]" in out
        assert d == {"sysctl": (["0"], ["1"])}, d          # only the one answered yes
        assert rc == 1 and "1 applied, 0 failed" in out, out
        st = statuses(n1.doctor()[1])
        assert st["ip-forward"] == "PASS" and st["bridge-address"] == "FAIL"
    else:
        assert d == {}, d
        assert rc == 1 and "pycni doctor --fix: nothing applied" in out, out
        assert ("apply [2]" in out) == (answers == "n\nn\n"), out
    assert applied_lines(n1) == ([] if answers != "no\nyes\n" else
                                 ["  doctor --fix: applied ip-forward: sysctl -w net.ipv4.ip_forward=1"])


def test_fix_leaves_what_it_cannot_attribute(fabric):
    """A lease no record places and a veth nothing names: print-only fixes."""
    n1, _n2 = fabric.nodes
    lease = os.path.join(n1.ipam_dir, NET_NAME, "10.244.1.77")
    with open(lease, "w") as f:
        f.write("ghost-container\r\neth0")
    pod = fabric.netns_factory()
    n1.sh("ip", "link", "add", "vethorphan", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns",
          pod.name)
    n1.sh("ip", "link", "set", "vethorphan", "master", "cni0", "up")
    _rc, rep = n1.doctor()
    for cid in ("ipam-leaks", "orphan-veths"):
        c = check(rep, cid)
        assert c["status"] == "WARN" and c["fix"] and c["safeFix"] == [], c
    assert "ghost-container/eth0: not for --fix: no record says where its netns was" in \
        "\n".join(check(rep, "ipam-leaks")["evidence"])
    before = snapshot(n1)
    rc, out = fix(n1, "--yes")
    assert rc == 0 and "nothing to apply" in out, out
    assert changes(before, snapshot(n1)) == {}


def test_fix_options(fabric):
    n1, _n2 = fabric.nodes
    rc, out = fix(n1, "--json")
    assert rc == 2 and "--fix shows and asks; it takes no --json or --bundle" in out
    r = n1.sh(n1.pycni, "doctor", "--yes", *n1.state_args(), check=False, env=n1.env())
    assert r.returncode == 2 and "--yes goes with --fix" in r.stderr
