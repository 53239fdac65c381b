"""Leaks clean themselves: ``pycni gc --auto``, the command pycni-gc.timer runs.

Pods on a sandboxed node (relnode.RelNode: cbr0 = flannel + portmap on
nftables, bnet = bridge with ipMasq and macspoofchk + portmap, firewall on
iptables + tuning) die without a DEL: their netns deleted, or the process
holding it killed; one pod's netns path is deleted and made again for a new
pod.  Then the timer's own command line (ExecStart of conf/pycni-gc.service)
runs inside the node's netns and a private mount namespace in which the
test's temp dirs are /etc/cni and /var/lib (so the defaults it reads,
/etc/cni/net.d and /var/lib/cni, are the test's), and the node must hold
exactly what the live pods hold: nothing of the dead ones, every live one
untouched.  A view it cannot trust (no conf dir, no config, an unreadable
result cache, no netns mount visible) is refused, changing nothing.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time

import pytest
from cnitest import ROOT, Netns, run_plugin
from relnode import PY_ONLY, RelNode, diff

from cnilib.firewall import naming

pytestmark = pytest.mark.root

UNIT = os.path.join(ROOT, "conf", "pycni-gc.service")


def exec_start():
    """The service's ExecStart, split (the timer runs nothing else)."""
    with open(UNIT) as f:
        lines = [ln.split("=", 1)[1] for ln in f.read().splitlines() if ln.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


class GcNode(RelNode):
    """A RelNode whose conf dir, result cache and rule records live where
    the timer's command looks by default, seen through a private mount
    namespace: <tmp>/etc-cni is /etc/cni there, <tmp>/var-lib is /var/lib."""

    def __init__(self, plugins, tmp, netns_factory):
        super().__init__(plugins, tmp, netns_factory)
        self.etc_cni = os.path.join(self.tmp, "etc-cni")
        self.var_lib = os.path.join(self.tmp, "var-lib")
        conf = os.path.join(self.etc_cni, "net.d")
        os.makedirs(conf)
        for f in os.listdir(self.conf_dir):
            shutil.copy(os.path.join(self.conf_dir, f), conf)
        shutil.rmtree(self.conf_dir)
        self.conf_dir = conf
        self.p["cache"] = os.path.join(self.var_lib, "cni")
        self.p["state"] = os.path.join(self.var_lib, "cni", "pycni")
        os.makedirs(self.p["state"])
        self.holders = []

    def timer_command(self, *extra, etc_cni=None, var_lib=None, script=""):
        """Run the service's ExecStart (with this form's pycni) as the timer
        would: in the node's netns, /etc/cni and /var/lib bound from the
        temp dirs in a mount namespace of its own.  Only the run dir and the
        log are given by the environment (no conf dir, cache or plugin path)."""
        argv = exec_start()
        assert argv[0] == "/usr/libexec/cni/pycni" and argv[1:] == ["gc", "--auto"], argv
        argv = [os.path.join(self.plugins, "pycni")] + argv[1:] + list(extra)
        env = {k: v for k, v in self.env().items()
               if k not in ("NETCONFPATH", "PYCNI_CACHE_DIR", "PYCNI_STATE_DIR", "CNI_PATH")}
        sh = ('mount --bind "$1" /etc/cni && mount --bind "$2" /var/lib && shift 2 && %s exec "$@"'
              % script)
        p = subprocess.run(["ip", "netns", "exec", self.host.name, "unshare", "--mount",
                            "--propagation", "private", "sh", "-c", sh, "gc-sandbox",
                            etc_cni or self.etc_cni, var_lib or self.var_lib] + argv,
                           capture_output=True, text=True, env=env, timeout=300)
        assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
        return p

    def held_pod(self):
        """A pod netns held by a process alone (CNI_NETNS /proc/<pid>/ns/net)."""
        p = subprocess.Popen(["unshare", "--net", "sleep", "600"])
        self.holders.append(p)
        mine = os.readlink("/proc/self/ns/net")
        for _ in range(250):
            try:
                if os.readlink("/proc/%d/ns/net" % p.pid) != mine:
                    return p, "/proc/%d/ns/net" % p.pid
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError("no process-held netns")

    def close(self):
        for p in self.holders:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def gnode(plugins, tmp_path, netns_factory, statedir):
    n = GcNode(plugins, tmp_path, netns_factory)
    yield n
    n.close()


def veth_of(res):
    return [i["name"] for i in res["interfaces"]
            if not i.get("sandbox") and i["name"] not in ("cni0", "br1")][0]


def ping(ns, ip):
    return subprocess.run(["ip", "netns", "exec", ns.name, "ping", "-c1", "-W2", ip],
                          capture_output=True).returncode == 0


def live_state(node, cids):
    """What a live pod holds that a gc must not change: its files, its links
    and addresses inside, and its host veth."""
    snap = node.snapshot(pods=cids)
    files = {f for f in snap["files"] if any(c in f for c in cids)}
    return files, {k: v for k, v in snap.items() if k.startswith("pod ")}


def test_timer_frees_what_dead_pods_left_and_nothing_else(gnode):
    n = gnode
    for net in ("cbr0", "bnet"):      # the bridges and shared tables stay once made
        n.add(net, "warm-%s-00" % net)
        n.delete(net, "warm-%s-00" % net)
    n.settle()
    empty = n.snapshot()
    live = {"live-cbr-01": "cbr0", "live-bnet-02": "bnet"}
    res = {}
    for cid, net in live.items():
        res[cid] = n.add(net, cid)
    # dead pods: netns deleted, no DEL
    for cid, net in (("dead-cbr-04", "cbr0"), ("dead-bnet-05", "bnet")):
        res[cid] = n.add(net, cid)
    # a pod whose netns only a process holds, killed
    holder, path = n.held_pod()
    res["dead-held-06"] = n.add("bnet", "dead-held-06", netns=path)
    # pods whose netns path is deleted and made again for a new pod: one
    # without hostPorts (only the cache says where it was: judged by the new
    # pod's veth peer), one with (its rule record keeps the netns inode)
    reused = {"dead-reused-07": n.pod("dead-reused-07"), "dead-reused-12": n.pod("dead-reused-12")}
    res["dead-reused-07"] = n.add("cbr0", "dead-reused-07", env={"CAP_ARGS": ""})
    res["dead-reused-12"] = n.add("cbr0", "dead-reused-12")
    for cid in ("dead-cbr-04", "dead-bnet-05", "dead-reused-07", "dead-reused-12"):
        n.pods.pop(cid).delete()
    os.kill(n.holders[0].pid, signal.SIGKILL)
    n.holders[0].wait()
    n.settle(live=2)
    for cid, old in (("live-reuser-03", reused["dead-reused-07"]),
                     ("live-reuser-13", reused["dead-reused-12"])):
        n.pods[cid] = Netns(old.name)
        res[cid] = n.add("cbr0", cid)
        live[cid] = "cbr0"
        assert n.pods[cid].path == old.path
    dead = ("dead-cbr-04", "dead-bnet-05", "dead-held-06", "dead-reused-07", "dead-reused-12")
    before = n.snapshot(pods=list(live))
    rules_before = n.rules()
    keep_files, keep_pods = live_state(n, list(live))

    r = n.timer_command()
    assert r.returncode == 0, r.stdout + r.stderr
    nets = {"dead-cbr-04": "cbr0", "dead-bnet-05": "bnet", "dead-held-06": "bnet", "dead-reused-07": "cbr0",
            "dead-reused-12": "cbr0"}
    for cid in dead:
        assert "freed %s/%s/eth0" % (nets[cid], cid) in r.stdout, r.stdout
    assert "was reused: its eth0 is the peer of %s" % veth_of(res["live-reuser-03"]) in r.stdout, r.stdout
    assert "freed cbr0/dead-reused-12/eth0: hostport record: netns %s names another namespace now" \
        % reused["dead-reused-12"].path in r.stdout, r.stdout
    assert not re.search(r"^\s+(freed|keep|left|LEFT|FAILED)\s+\w+/live-", r.stdout, re.M), r.stdout
    after = n.snapshot(pods=list(live))
    # every live pod as it was, and reachable
    assert live_state(n, list(live)) == (keep_files, keep_pods)
    assert ping(n.pods["live-cbr-01"], "10.244.1.1") and ping(n.pods["live-bnet-02"], "10.99.0.1")
    assert ping(n.pods["live-reuser-03"], "10.244.1.1") and ping(n.pods["live-reuser-13"], "10.244.1.1")
    # what went is exactly the dead pods' (their cids, IPs or veths)
    marks = set(dead) | {ip["address"].split("/")[0] for c in dead for ip in res[c]["ips"]} | \
        {veth_of(res[c]) for c in dead} | {naming.attachment_hash(nets[c], c, "eth0") for c in dead} | \
        {naming.go_chain(nets[c], c, p) for c in dead for p in ("CNI-", "CNI-DN-")}
    # (the rule dumps are compared by what they hold per attachment: a set
    # printed over lines reflows when one element goes)
    d = diff({k: v for k, v in before.items() if k not in ("nft", "iptables")},
             {k: v for k, v in after.items() if k not in ("nft", "iptables")})
    d["rules"] = {"gone": sorted(rules_before - n.rules()), "new": sorted(n.rules() - rules_before)}
    for k, change in d.items():
        assert not change["new"], (k, change)
        for item in change["gone"]:
            text = json.dumps(item)
            assert any(m in text for m in marks), (k, item)
    assert d["rules"]["gone"] and d["files"]["gone"]
    # the log: the run's line, and one line per thing freed
    log = n.log_text()
    assert " GC-AUTO conf=/etc/cni/net.d freed=5 failed=0 ok " in log, log
    freed = [ln for ln in log.splitlines() if ln.startswith("  gc --auto: freed ")]
    for cid in dead:
        assert any(cid in ln for ln in freed), (cid, freed)
    assert any(ln.startswith("  gc --auto: freed lease ") for ln in freed)
    assert any(ln.startswith("  gc --auto: freed rules ") for ln in freed)
    # a second run has nothing to do
    r = n.timer_command()
    assert r.returncode == 0 and "0 dead" in r.stdout and "freed 0 attachment" in r.stdout, r.stdout
    # and once the live pods are DELeted too, the node is as empty as it started
    for cid, net in live.items():
        n.delete(net, cid)
    n.settle()
    assert diff(empty, n.snapshot()) == {}


@PY_ONLY
def test_dry_run_changes_nothing(gnode):
    n = gnode
    n.add("bnet", "dry-dead-08")
    n.add("cbr0", "dry-live-09")
    n.pods.pop("dry-dead-08").delete()
    n.settle(live=1)
    before = n.snapshot(pods=["dry-live-09"])
    r = n.timer_command("--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "would free bnet/dry-dead-08/eth0" in r.stdout and "dry-live-09" not in r.stdout, r.stdout
    assert "lease" in r.stdout and "record" in r.stdout
    assert diff(before, n.snapshot(pods=["dry-live-09"])) == {}
    assert " GC-AUTO conf=/etc/cni/net.d freed=0 failed=0 dry-run " in n.log_text()


@PY_ONLY
def test_unattributable_state_is_kept_and_named(gnode):
    """A lease no record places (host-local exec'd alone: no cache entry, no
    rule record), its netns deleted: nothing says where its netns was."""
    n = gnode
    conf = {"cniVersion": "1.1.0", "name": "bnet", "ipam": n.plugin_conf("bnet", "bridge")["ipam"]}
    r = run_plugin(os.path.join(n.plugins, "host-local"), "ADD", conf, containerid="orphan-lease",
                   netns=n.pod("orphan-lease").path, ifname="eth0", path=n.plugins,
                   host_netns=n.host.name, extra_env=n.env())
    assert r.rc == 0, r
    n.pods.pop("orphan-lease").delete()
    # and a link planted as a lease: not followed, not a reason to refuse
    target = os.path.join(n.tmp, "elsewhere")
    with open(target, "w") as f:
        f.write("someone\r\neth0")
    os.symlink(target, os.path.join(n.p["ipam"], "bnet", "10.99.0.200"))
    before = n.snapshot()
    r = n.timer_command()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "keep  bnet/orphan-lease/eth0: no record says where its netns was" in r.stdout, r.stdout
    assert diff(before, n.snapshot()) == {}
    assert os.path.islink(os.path.join(n.p["ipam"], "bnet", "10.99.0.200"))


@PY_ONLY
@pytest.mark.parametrize("case", ["no conf dir", "no config loads", "cache not a dir", "no netns visible"])
def test_an_empty_or_unreadable_view_is_refused(gnode, case):
    n = gnode
    n.add("bnet", "ref-dead-10")
    n.add("cbr0", "ref-live-11")
    n.pods.pop("ref-dead-10").delete()
    n.settle(live=1)
    kw, script = {}, ""
    results = os.path.join(n.p["cache"], "results")
    before = n.snapshot(pods=["ref-live-11"])
    if case == "no conf dir":
        empty = os.path.join(n.tmp, "empty-etc-cni")
        os.makedirs(empty)
        kw["etc_cni"] = empty
        want = "no network config dir /etc/cni/net.d"
    elif case == "no config loads":
        broken = os.path.join(n.tmp, "broken-etc-cni", "net.d")
        os.makedirs(broken)
        with open(os.path.join(broken, "10-x.conflist"), "w") as f:
            f.write("{not json")
        kw["etc_cni"] = os.path.dirname(broken)
        want = "no network config loads in /etc/cni/net.d: 10-x.conflist"
    elif case == "cache not a dir":
        os.rename(results, results + ".real")
        with open(results, "w") as f:
            f.write("")
        want = "the result cache /var/lib/cni/results is not a directory (a file)"
    else:
        # every netns mount out of sight, as in a mount namespace without the node's /run/netns
        script = ("grep ' - nsfs ' /proc/self/mountinfo | cut -d' ' -f5 | "
                  "while read m; do umount -l \"$m\"; done; ")
        want = "no network namespace mount is visible here"
    r = n.timer_command(script=script, **kw)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "REFUSED: " + want in r.stderr, r.stderr
    if case == "cache not a dir":
        os.unlink(results)
        os.rename(results + ".real", results)
    assert diff(before, n.snapshot(pods=["ref-live-11"])) == {}
    assert " GC-AUTO conf=/etc/cni/net.d freed=0 failed=0 refused " in n.log_text()
    if case == "no netns visible":
        r = n.timer_command("--allow-no-netns", script=script)
        assert r.returncode == 0 and "freed bnet/ref-dead-10/eth0" in r.stdout, r.stdout + r.stderr
