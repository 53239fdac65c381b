"""Helpers for the bridge integration tests: a node sandbox and what it holds.

A ``Node`` is a host network namespace made for one test, with the bridge
plugin's state (IPAM dataDir, run dir, state dir, log) in the test's temp
dir and a bridge name of its own.  CNI_PATH is ``<dist form>:/usr/lib/cni``,
so IPAM is whatever ``host-local`` comes first: the Go one until the suite
has its own, then ours (in-process).

For cniVersion 1.1.0 (GC, STATUS), which the Go host-local 1.1.1 refuses,
``fake-ipam`` stands in: a small stdlib-only IPAM plugin installed into the
temp dir that hands out the address in its config and records every call.
"""

import json
import os
import re
import sys
import time

import pytest
from cnitest import GO_CNI, read_text, run_plugin, sh, unique

FAKE_IPAM = r'''
import json, os, sys
conf = json.load(sys.stdin)
ipam = conf.get("ipam", {})
cmd = os.environ.get("CNI_COMMAND")
ver = conf.get("cniVersion", "0.1.0")
if cmd == "VERSION":
    print(json.dumps({"cniVersion": ver, "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}))
    sys.exit(0)
with open(ipam["callLog"], "a") as f:
    f.write(json.dumps({"cmd": cmd, "cid": os.environ.get("CNI_CONTAINERID", ""),
                        "valid": conf.get("cni.dev/valid-attachments")}) + "\n")
if cmd == "STATUS" and os.path.exists(ipam.get("notReadyFile", "/nonexistent")):
    print(json.dumps({"cniVersion": ver, "code": 50, "msg": "fake pool exhausted"}))
    sys.exit(1)
if cmd == "ADD":
    ip = {"address": ipam["address"]}
    if ipam.get("gateway"):
        ip["gateway"] = ipam["gateway"]
    print(json.dumps({"cniVersion": ver, "ips": [ip], "routes": ipam.get("routes", [])}))
'''


def install_fake_ipam(d):
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "fake-ipam")
    with open(path, "w") as f:
        f.write("#!%s -I\n%s" % (sys.executable, FAKE_IPAM))
    os.chmod(path, 0o755)
    return path


class Node:
    def __init__(self, plugins, host, tmp_path, netns_factory, statedir):
        self.plugins, self.host, self.tmp = plugins, host, tmp_path
        self.netns_factory = netns_factory
        self.exe = os.path.join(plugins, "bridge")
        self.data_dir = str(tmp_path / "ipam")
        self.fake_dir = str(tmp_path / "fakebin")
        install_fake_ipam(self.fake_dir)
        self.path = "%s:%s:%s" % (plugins, self.fake_dir, GO_CNI)
        self.env = {"PYCNI_RUN_DIR": str(tmp_path / "run"), "PYCNI_STATE_DIR": str(statedir)}
        self.log = os.environ["PYCNI_LOG"]
        self.bridge = unique("br")
        self.calls = str(tmp_path / "ipam-calls.jsonl")

    # -- configs ---------------------------------------------------------
    def ipam(self, version="1.0.0", subnet="10.22.0.0/24", **kw):
        """host-local for versions it speaks; fake-ipam for 1.1.0 while the
        suite has no host-local of its own (the Go one stops at 1.0.0)."""
        if version == "1.1.0" and not os.path.exists(os.path.join(self.plugins, "host-local")):
            host = subnet.split("/")[0].rsplit(".", 1)[0] + ".%d" % kw.pop("host", 2)
            return dict({"type": "fake-ipam", "address": "%s/%s" % (host, subnet.split("/")[1]),
                         "callLog": self.calls}, **kw)
        kw.pop("host", None)
        return dict({"type": "host-local", "subnet": subnet, "dataDir": self.data_dir}, **kw)

    def conf(self, version="1.0.0", name="bnet", ipam=None, subnet="10.22.0.0/24", **kw):
        c = {"cniVersion": version, "name": name, "type": "bridge", "bridge": self.bridge}
        if ipam is None:
            ipam = self.ipam(version, subnet)
        if ipam:
            c["ipam"] = ipam
        c.update(kw)
        return c

    def container(self, **kw):
        return self.netns_factory(**kw)

    # -- running the plugin ------------------------------------------------
    def run(self, command, conf, ctr=None, cid="c1", ifname="eth0", args="", netns=None,
            exe=None, path=None, env=None, timeout=60):
        e = dict(self.env)
        e.update(env or {})
        if netns is None:
            netns = ctr.path if ctr is not None else ""
        return run_plugin(exe or self.exe, command, conf, containerid=cid, netns=netns,
                          ifname=ifname, args=args, path=path or self.path,
                          host_netns=self.host.name, extra_env=e, timeout=timeout)

    def add(self, conf, ctr, **kw):
        r = self.run("ADD", conf, ctr, **kw)
        assert r.rc == 0, r
        return r.json

    def delete(self, conf, ctr, **kw):
        r = self.run("DEL", conf, ctr, **kw)
        assert r.rc == 0 and r.stdout == "", r
        return r

    def check(self, conf, ctr, prev, **kw):
        return self.run("CHECK", dict(conf, prevResult=prev), ctr, **kw)

    # -- what the node holds -------------------------------------------------
    def links(self):
        return self.host.links()

    def veths(self):
        return sorted(n for n, link in self.links().items() if link.get("link_type") == "ether"
                      and n.startswith("veth"))

    def leases(self, name="bnet"):
        d = os.path.join(self.data_dir, name)
        if not os.path.isdir(d):
            return []
        return sorted(f for f in os.listdir(d)
                      if f != "lock" and not f.startswith(("last_reserved", ".pycni-attachments")))

    def nft_tables(self):
        out = self.host.run("nft", "-j", "list", "tables").stdout
        return sorted("%s %s" % (t["table"]["family"], t["table"]["name"])
                      for t in json.loads(out)["nftables"] if "table" in t)

    def nft_elements(self, table="pycni-masq", family="inet"):
        """[(set, value, comment)] of one of the suite's shared tables."""
        r = self.host.run("nft", "-j", "list", "table", family, table, check=False)
        if r.returncode != 0:
            return []
        return [e for item in json.loads(r.stdout)["nftables"] for e in _set_elements(item)]

    def masq_owners(self):
        """{(ip, container ID)} of the masquerade elements."""
        return {(v, c.split(" id=")[1].split(" ")[0]) for _s, v, c in self.nft_elements() if c}

    def owned(self):
        """Every nftables object an attachment owns, whoever made it: the
        previous design's tables, elements whose comment names an
        attachment, per-attachment chains, the Go plugins' tables."""
        out = ["table %s" % t for t in self.nft_tables() if OLD_TABLE.search(t) or "cni_plugins" in t]
        items = json.loads(self.host.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
        for item in items:
            out += ["element %s %s %s" % (s, v, c) for s, v, c in _set_elements(item) if KEYED.match(c or "")]
            c = item.get("chain")
            if c and c["name"].startswith("hp-"):
                out.append("chain %s %s" % (c["table"], c["name"]))
        return out

    def records(self):
        """Files in the suite's per-attachment record dirs."""
        root = os.path.join(self.env["PYCNI_STATE_DIR"], "nft")
        return sorted(os.path.join(d, f) for d, _s, files in os.walk(root) for f in files)

    def nat_rules(self):
        lines = []
        for tool in ("iptables-save", "ip6tables-save"):
            out = self.host.run(tool, "-t", "nat", check=False).stdout
            lines += [ln for ln in out.splitlines() if "CNI-" in ln]
        return lines

    def addrs(self, dev):
        return self.host.addrs(dev)

    def bridge_ports(self):
        out = self.host.run("bridge", "-j", "-d", "link", "show").stdout
        return {p["ifname"]: p for p in json.loads(out or "[]")}

    def log_text(self):
        return read_text(self.log)

    def settle_veths(self):
        """Wait (bounded) until the kernel has destroyed the veths of deleted
        namespaces: ``ip netns del`` returns before the namespace is gone."""
        for _ in range(500):
            if not self.veths():
                return
            time.sleep(0.02)

    def assert_clean(self, name="bnet"):
        """Nothing of any attachment is left: veths, leases, rules."""
        assert self.veths() == []
        assert self.leases(name) == []
        assert self.owned() == []
        assert self.records() == []
        assert self.nat_rules() == []


OLD_TABLE = re.compile(r"pycni-[a-z]+-[0-9a-f]{12}-[0-9a-f]{16}$")
KEYED = re.compile(r"pycni [0-9a-f]{12}-[0-9a-f]{16}")


def _set_elements(item):
    """[(set, value, comment)] of a set or map in ``nft -j`` output."""
    s = item.get("set") or item.get("map")
    out = []
    for e in (s or {}).get("elem") or ():
        v = e[0] if isinstance(e, list) else e
        comment = None
        if isinstance(v, dict) and "elem" in v:
            v, comment = v["elem"]["val"], v["elem"].get("comment")
        out.append((s["name"], json.dumps(v) if isinstance(v, dict) else str(v), comment))
    return out


@pytest.fixture
def node(plugins, host, tmp_path, netns_factory, statedir):
    return Node(plugins, host, tmp_path, netns_factory, statedir)


def ping(ctr, ip, count=1):
    argv = ["ping", "-6" if ":" in ip else "-4", "-c", str(count), "-W", "3", ip]
    return ctr.run(*argv, check=False).returncode == 0


def ctr_link(ctr, name="eth0"):
    return ctr.links().get(name)


def ctr_routes(ctr, family="-4"):
    return json.loads(ctr.run("ip", "-j", family, "route", "show").stdout or "[]")


def vlan_filtering_supported(host):
    name = unique("vf")[:12]
    r = sh("ip", "link", "add", name, "type", "bridge", "vlan_filtering", "1", netns=host.name,
           check=False)
    if r.returncode == 0:
        sh("ip", "link", "del", name, netns=host.name, check=False)
    return r.returncode == 0
