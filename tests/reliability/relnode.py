"""A sandboxed node for the reliability tier, and what it holds.

``RelNode`` is a host network namespace made for one test, with every state
path in the test's temp dir (runner cache, flannel dataDir, IPAM dataDir,
tuning dataDir, run dir, state dir, log) and two networks of the shapes a
real node runs, both at cniVersion 1.1.0:

  cbr0  flannel -> bridge (cni0) -> host-local, then portmap (nftables)
  bnet  bridge (br1, dual-stack, ipMasq on iptables, macspoofchk) ->
        host-local, then portmap (iptables), firewall (iptables), tuning

They are driven as a runtime does, through ``pycni add|del|gc`` (libcni's
behaviour, result cache in the temp dir) run under ``ip netns exec``, or by
exec'ing one plugin.  ``snapshot()`` is everything a leak could hide in:
state files, the links, addresses and routes of the node and of its pods,
the nftables ruleset and iptables-save of both families.
"""

import json
import os
import re
import subprocess
import time

import pytest
from cnitest import Netns, PluginRun, forms, read_text, run_plugin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLANNEL_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
               "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
NETWORKS = ("cbr0", "bnet")
# Tests of the suite's logic rather than of its packaging run in the py form
# only (the bundle runs the same code): ``@PY_ONLY`` narrows the ``form`` fixture.
PY_ONLY = pytest.mark.parametrize("form", [f for f in forms() if f == "py"], indirect=True)
# figures the tier measures, printed at the end of the run (conftest.py)
FIGURES = {}


def count(what, n=1):
    FIGURES[what] = FIGURES.get(what, 0) + n
STATE_DIRS = ("cache", "run", "state", "flannel", "ipam", "tuning")
# files that persist by design: flock targets and host-local's round-robin cursor
PERSISTENT = re.compile(r"(^|/)(lock|\.lock|[^/]*\.lock|last_reserved_ip\.\d+)$")
_COUNTERS = re.compile(r"counter packets \d+ bytes \d+")
_IPT_COUNTERS = re.compile(r"\[\d+:\d+\]")


def failpoints_in_code():
    """{name: [file, ...]} of every failpoint.hit("...") in cnilib/ and plugins/."""
    pat = re.compile(r"""failpoint\.hit\(\s*["']([^"']+)["']\s*\)""")
    out = {}
    for top in ("cnilib", "plugins"):
        for d, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    with open(path) as fh:
                        for name in pat.findall(fh.read()):
                            out.setdefault(name, []).append(os.path.relpath(path, ROOT))
    return out


class NetnsSet:
    """A netns factory for fixtures wider than one test; ``close`` deletes them."""

    def __init__(self):
        self.made = []

    def __call__(self, **kw):
        ns = Netns(**kw)
        self.made.append(ns)
        return ns

    def close(self):
        for ns in reversed(self.made):
            ns.delete()


class RelNode:
    def __init__(self, plugins, tmp, netns_factory, name="node", lite=False):
        self.plugins = plugins
        self.lite = lite
        self.tmp = str(tmp / name)
        os.makedirs(self.tmp)
        self.netns_factory = netns_factory
        self.host = netns_factory()
        self._prepare_host()
        self.p = {d: os.path.join(self.tmp, d) for d in STATE_DIRS}
        self.conf_dir = os.path.join(self.tmp, "conf")
        self.subnet_file = os.path.join(self.tmp, "flannel-run", "subnet.env")
        self.log = os.path.join(self.tmp, "pycni.log")
        self.trace = os.path.join(self.tmp, "failpoints.trace")
        self.pods = {}
        os.makedirs(self.conf_dir)
        os.makedirs(os.path.dirname(self.subnet_file))
        with open(self.subnet_file, "w") as f:
            f.write(FLANNEL_ENV)
        for net, plugins_ in self.conflists().items():
            with open(os.path.join(self.conf_dir, "%s.conflist" % net), "w") as f:
                json.dump({"name": net, "cniVersion": "1.1.0", "plugins": plugins_}, f, indent=1)

    def _prepare_host(self):
        self.host.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                      "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")

    def reboot(self):
        """All namespaces and links gone, the state dirs kept: the pods' netns
        and the node netns are deleted and a fresh node netns takes its place."""
        for ns in self.pods.values():
            ns.delete()
        self.pods = {}
        self.host.delete()
        self.host = self.netns_factory()
        self._prepare_host()

    # -- configs ---------------------------------------------------------------
    def conflists(self):
        return self.lite_conflists() if self.lite else self.full_conflists()

    def full_conflists(self):
        return {
            "cbr0": [
                {"type": "flannel", "subnetFile": self.subnet_file, "dataDir": self.p["flannel"],
                 "delegate": {"hairpinMode": True, "isDefaultGateway": True},
                 "ipam": {"dataDir": self.p["ipam"]}},
                {"type": "portmap", "backend": "nftables", "capabilities": {"portMappings": True}},
            ],
            "bnet": [
                {"type": "bridge", "bridge": "br1", "isGateway": True, "ipMasq": True,
                 "ipMasqBackend": "iptables", "macspoofchk": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": self.p["ipam"],
                          "ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd99::/64"}]]}},
                {"type": "portmap", "backend": "iptables", "capabilities": {"portMappings": True}},
                {"type": "firewall", "backend": "iptables"},
                {"type": "tuning", "mtu": 1400, "dataDir": self.p["tuning"]},
            ],
        }

    def lite_conflists(self):
        """The churn's networks: bridge + host-local + portmap, one behind flannel."""
        full = self.full_conflists()
        return {"cbr0": full["cbr0"],
                "bnet": [{"type": "bridge", "bridge": "br1", "isGateway": True, "ipMasq": True,
                          "ipam": {"type": "host-local", "dataDir": self.p["ipam"],
                                   "ranges": [[{"subnet": "10.99.0.0/24"}]]}},
                         {"type": "portmap", "backend": "iptables",
                          "capabilities": {"portMappings": True}}]}

    def plugin_conf(self, net, ptype, **extra):
        """The stdin the runner builds for plugin ``ptype`` of ``net`` (no prevResult)."""
        for p in self.conflists()[net]:
            if p["type"] == ptype:
                c = dict(p, name=net, cniVersion="1.1.0")
                c.update(extra)
                return c
        raise KeyError(ptype)

    def env(self, **over):
        e = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETCONFPATH": self.conf_dir, "CNI_PATH": self.plugins,
            "PYCNI_CACHE_DIR": self.p["cache"], "PYCNI_RUN_DIR": self.p["run"],
            "PYCNI_STATE_DIR": self.p["state"], "PYCNI_LOG": self.log,
            "PYCNI_AGENT_SOCKET": "off", "PYCNI_FAILPOINTS_TRACE": self.trace,
        }
        e.update({k: v for k, v in over.items() if v is not None})
        return e

    # -- pods --------------------------------------------------------------------
    def pod(self, cid):
        """The netns of container ``cid`` (made on first use)."""
        if cid not in self.pods:
            self.pods[cid] = self.netns_factory()
        return self.pods[cid]

    @staticmethod
    def host_port(cid):
        return 20000 + int.from_bytes(cid.encode()[-2:], "big") % 20000

    def cap_args(self, cid):
        return json.dumps({"portMappings": [
            {"hostPort": self.host_port(cid), "containerPort": 80, "protocol": "tcp"},
            {"hostPort": self.host_port(cid), "containerPort": 53, "protocol": "udp"}]})

    def pycni(self, verb, net, cid=None, netns=None, ifname="eth0", extra=(), env=None, timeout=120):
        """``pycni VERB NET [NETNS] --container-id CID`` inside the node netns."""
        argv = ["ip", "netns", "exec", self.host.name, os.path.join(self.plugins, "pycni"), verb, net]
        if verb in ("add", "del", "check"):
            if netns is None:
                netns = self.pod(cid).path
            if netns:
                argv.append(netns)
            argv += ["--container-id", cid, "--ifname=" + ifname]
        argv += list(extra)
        e = self.env(CAP_ARGS=self.cap_args(cid) if cid else None)
        e.update(env or {})
        p = subprocess.run(argv, capture_output=True, env=e, timeout=timeout)
        return PluginRun(p.returncode, p.stdout.decode("utf-8", "replace"),
                         p.stderr.decode("utf-8", "replace"))

    def add(self, net, cid, **kw):
        r = self.pycni("add", net, cid, **kw)
        assert r.rc == 0, r
        return json.loads(r.stdout)

    def delete(self, net, cid, **kw):
        r = self.pycni("del", net, cid, **kw)
        assert r.rc == 0, r
        return r

    def exec_plugin(self, ptype, command, conf, cid="", netns="", ifname="eth0", args="", env=None):
        """One plugin exec'd directly, as libcni would, inside the node netns."""
        e = self.env()
        e.update(env or {})
        return run_plugin(os.path.join(self.plugins, ptype), command, conf, containerid=cid,
                          netns=netns, ifname=ifname, args=args, path=self.plugins,
                          host_netns=self.host.name, extra_env=e)

    def traced(self):
        """Failpoints passed since the last call, in order."""
        try:
            with open(self.trace) as f:
                names = f.read().split()
        except FileNotFoundError:
            return []
        os.unlink(self.trace)
        return names

    # -- what the node holds ------------------------------------------------------
    def files(self):
        """Every state file and directory (relative paths), persistent ones excepted."""
        out = set()
        for d in STATE_DIRS:
            top = self.p[d]
            for base, dirs, files in os.walk(top):
                for n in dirs + files:
                    rel = os.path.relpath(os.path.join(base, n), self.tmp)
                    if not PERSISTENT.search(rel):
                        out.add(rel)
        return out

    def leases(self, net):
        return sorted(f for f in self.files() if f.startswith("ipam/%s/" % net))

    def links(self, ns=None):
        return {(n, kind, master) for n, kind, master, _a in self._ip_addr(ns)}

    def addrs(self, ns=None):
        return {(n, a) for n, _k, _m, addrs in self._ip_addr(ns) for a in addrs}

    def veths(self):
        return sorted(n for n, kind, _m in self.links() if kind == "veth")

    def _ip_addr(self, ns):
        """[(ifname, kind, master, [address/plen])] from one ``ip -d addr`` dump."""
        ns = ns or self.host
        got = json.loads(_ip(ns, "-j", "-d", "addr", "show") or "[]")
        return [(link["ifname"], link.get("linkinfo", {}).get("info_kind", ""), link.get("master", ""),
                 ["%s/%s" % (a["local"], a["prefixlen"]) for a in link.get("addr_info", [])])
                for link in got]

    def routes(self, ns=None):
        ns = ns or self.host
        out = set()
        for fam in ("-4", "-6"):
            for r in json.loads(_ip(ns, "-j", fam, "route", "show") or "[]"):
                out.add((r.get("dst"), r.get("dev"), r.get("gateway")))
        return out

    def nft(self, ns=None):
        ns = ns or self.host
        return _COUNTERS.sub("counter", ns.run("nft", "list", "ruleset").stdout)

    def iptables(self, ns=None):
        ns = ns or self.host
        text = ""
        for tool in ("iptables-save", "ip6tables-save"):
            out = ns.run(tool, check=False).stdout
            text += "".join(_IPT_COUNTERS.sub("[0:0]", ln) + "\n"
                            for ln in out.splitlines() if not ln.startswith("#"))
        return text

    def rules(self, ns=None):
        """Names of what our plugins keep per attachment in the packet filter:
        the attachment keys in element comments and portmap chains of the
        shared nftables tables, the previous design's per-attachment tables,
        and iptables chains (shared tables and chains excluded)."""
        ns = ns or self.host
        text = self.nft(ns)
        found = set(re.findall(r"^table \w+ (pycni-[a-z]+-[0-9a-f]{12}-[0-9a-f]{16})", text, re.M))
        found |= {"element " + k for k in re.findall(r'comment "pycni ([0-9a-f]{12}-[0-9a-f]{16})', text)}
        found |= set(re.findall(r"^\s*chain (hp-[0-9a-f]{12}-[0-9a-f]{16})", text, re.M))
        found |= set(re.findall(r"^:(CNI-(?:DN-|SN-)?[0-9a-f]{10,}) ", self.iptables(ns), re.M))
        return found

    def snapshot(self, pods=()):
        """Everything a leak could hide in (see the module docstring)."""
        dump = self._ip_addr(None)
        snap = {"files": self.files(), "links": {d[:3] for d in dump},
                "addrs": {(d[0], a) for d in dump for a in d[3]},
                "routes": self.routes(), "nft": self.nft(), "iptables": self.iptables()}
        for cid in pods:
            ns = self.pods.get(cid)
            if ns is not None:
                dump = self._ip_addr(ns)
                snap["pod %s links" % cid] = {d[:3] for d in dump}
                snap["pod %s addrs" % cid] = {(d[0], a) for d in dump for a in d[3]}
        return snap

    def settle(self, live=0, timeout=10.0):
        """Wait (bounded) until at most ``live`` veths are left on the node:
        ``ip netns del`` returns before the kernel destroys the namespace
        and the veth pairs in it."""
        deadline = time.monotonic() + timeout
        while len(self.veths()) > live and time.monotonic() < deadline:
            time.sleep(0.02)

    def log_text(self):
        return read_text(self.log)


def _ip(ns, *argv):
    """``ip -n NS ARGV`` (no ``ip netns exec``: one exec fewer)."""
    return subprocess.run(["ip", "-n", ns.name] + list(argv), capture_output=True, text=True,
                          check=True).stdout


def diff(before, after):
    """Human-readable differences between two snapshots ({} when equal)."""
    out = {}
    for k in sorted(set(before) | set(after)):
        a, b = before.get(k), after.get(k)
        if a == b:
            continue
        if isinstance(a, set) or isinstance(b, set):
            a, b = a or set(), b or set()
            out[k] = {"gone": sorted(a - b), "new": sorted(b - a)}
        else:
            al, bl = (a or "").splitlines(), (b or "").splitlines()
            out[k] = {"gone": [x for x in al if x not in bl], "new": [x for x in bl if x not in al]}
    return out
