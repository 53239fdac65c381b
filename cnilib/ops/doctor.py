"""``pycni doctor``: check this node's CNI setup, with the fix for each failure.

The seed article's operator works through the ways a flannel network
breaks, one tool at a time: ``iptables -P FORWARD ACCEPT`` after Docker set
DROP, a firewall answering VXLAN with "admin prohibited filter", cni0 keeping
an address from an older lease, a multi-homed host whose flannel.1 sends
from its default-route address, every node announcing 10.0.2.15.  doctor
runs those checks (user-pain.md section (b)) against the current network
namespace and prints, for each, PASS / WARN / FAIL / SKIP, the evidence, and
the command that fixes it.  It reads only: it never writes, creates, loads
or deletes anything (``--bundle`` writes only into the directory given).

Checks (ids are stable; ``--only id,id`` runs some):

  conflists        the conf dir in load order: the network a runtime loads
                   (the first file), duplicate names, overlapping subnets,
                   files that do not parse, a flannel network shadowed
  plugins          every plugin type the configs name (flannel's delegate
                   and IPAM included) is an executable in the bin dirs
  subnet-env       flannel's subnet.env present, complete, SUBNET inside NETWORK
  bridge-address   cni0 (each CNI bridge) holds the gateway of its subnet and
                   no address from another subnet
  ip-forward       net.ipv4.ip_forward (and IPv6 forwarding for v6 networks)
  rp-filter        strict reverse-path filtering where the pod path is asymmetric
  br-netfilter     net.bridge.bridge-nf-call-ip{,6}tables (SKIP where the kernel lacks them)
  forward-policy   a pod-to-pod packet through FORWARD (iptables and nftables):
                   policy DROP or a DROP/REJECT rule with no accept for the pod network
  vxlan-port       a VXLAN datagram from each peer (UDP 8472) through INPUT and OUTPUT
  vxlan-local      flannel.1's local address is on the interface that reaches the peers
  public-ip        no two nodes announce the same public IP (--nodes, --annotations,
                   and flannel.1's fdb), and this node's is one of its addresses
  mtu              underlay >= flannel.1 + 50; FLANNEL_MTU = flannel.1 = cni0 = every veth
  ipam-leaks       host-local leases with no live attachment (FAIL when the range is full)
  orphan-veths     host veths no lease or record explains
  leftover-rules   portmap/masquerade/firewall rules of attachments that are gone
                   (FAIL when a hostPort is DNATed to a dead pod and a live one)
  stale-records    result cache entries, flannel saved files and tuning
                   originals of attachments that are gone
  state-files      empty or corrupt state files (flannel saved files, cache
                   entries, leases, tuning originals)

Exit status: 0 no check failed (WARN and SKIP included), 1 a check failed,
2 doctor could not run (bad options, or a check could not read what it needs
and nothing failed).

``--json`` prints one object, described by JSON_SCHEMA below (the README
shows it too, and tests/unit/test_doctor_lib.py keeps the two equal).
``summary`` counts the statuses; ``evidence`` lines are what was observed;
``fix`` lines are commands (or one-line instructions) that cure a WARN or
FAIL; ``error`` is set when the check itself could not run (it then shows
as SKIP); ``problems`` lists state layers that could not be read.
"""

import ipaddress
import os
import sys

from cnilib.base import errors, paths
from cnilib.ops import nodestate

JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pycni doctor report (pycni-doctor/1)",
    "type": "object",
    "required": ["schema", "version", "exit", "summary", "checks", "locations", "problems"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": "pycni-doctor/1"},
        "version": {"type": "string"},
        "exit": {"enum": [0, 1, 2]},
        "summary": {"type": "object", "required": ["PASS", "WARN", "FAIL", "SKIP"],
                    "additionalProperties": False,
                    "properties": {"PASS": {"type": "integer", "minimum": 0},
                                   "WARN": {"type": "integer", "minimum": 0},
                                   "FAIL": {"type": "integer", "minimum": 0},
                                   "SKIP": {"type": "integer", "minimum": 0}}},
        "checks": {"type": "array", "items": {
            "type": "object",
            "required": ["id", "title", "status", "summary", "evidence", "fix", "error"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^[a-z0-9-]+$"},
                "title": {"type": "string"},
                "status": {"enum": ["PASS", "WARN", "FAIL", "SKIP"]},
                "summary": {"type": "string"},
                "evidence": {"type": "array", "items": {"type": "string"}},
                "fix": {"type": "array", "items": {"type": "string"}},
                "error": {"type": ["string", "null"]}}}},
        "locations": {"type": "object"},
        "problems": {"type": "array", "items": {"type": "string"}}}}

STATUSES = ("PASS", "WARN", "FAIL", "SKIP")
VXLAN_OVERHEAD = 50
OUTSIDE_PROBE = "203.0.113.1"     # TEST-NET-3: only asked of the routing table, never sent to
ANNOTATION = "flannel.alpha.coreos.com/"


class Check:
    """One check's outcome."""

    __slots__ = ("id", "title", "status", "summary", "evidence", "fix", "error")

    def __init__(self, cid, title):
        self.id, self.title = cid, title
        self.status, self.summary, self.evidence, self.fix, self.error = "SKIP", "", [], [], None

    def set(self, status, summary, evidence=(), fix=()):
        self.status, self.summary = status, summary
        self.evidence += list(evidence)
        self.fix += list(fix)
        return self

    def as_dict(self):
        return {"id": self.id, "title": self.title, "status": self.status, "summary": self.summary,
                "evidence": list(self.evidence), "fix": list(self.fix), "error": self.error}


def _cmd(argv):
    import shlex
    return " ".join(shlex.quote(str(a)) for a in argv)


def _worst(statuses):
    for s in ("FAIL", "WARN", "PASS"):
        if s in statuses:
            return s
    return "SKIP"


# ====================================================================== pure parts

def flannel_networks(loc):
    """[(network, plugin conf)] of the configs using the flannel plugin."""
    return [(n, p) for n in loc.networks() for p in n.plugins if p.get("type") == "flannel"]


def plugin_types(net):
    """Every plugin binary ``net`` needs: its plugins, flannel's delegate
    (bridge by default) and IPAM (host-local by default), any ipam.type."""
    out = []
    for p in net.plugins:
        out.append(p.get("type"))
        ipam = p.get("ipam") if isinstance(p.get("ipam"), dict) else {}
        if p.get("type") == "flannel":
            d = p.get("delegate") if isinstance(p.get("delegate"), dict) else {}
            out.append(d.get("type") or "bridge")
            out.append(ipam.get("type") or "host-local")
        elif isinstance(ipam.get("type"), str):
            out.append(ipam["type"])
    return [t for i, t in enumerate(out) if isinstance(t, str) and t and t not in out[:i]]


def config_subnets(net, subnet_env_of):
    """[(cidr string, where)] the network hands out: host-local ranges
    (and the legacy ``subnet`` key), or flannel's FLANNEL_NETWORK(s) read
    by ``subnet_env_of(path)`` (returns SubnetEnv or None)."""
    out = []
    for p in net.plugins:
        ipam = p.get("ipam") if isinstance(p.get("ipam"), dict) else {}
        if p.get("type") == "flannel":
            env = subnet_env_of(p.get("subnetFile") or paths.FLANNEL_SUBNET_FILE)
            for n in (env.all_networks() if env else ()):
                out.append((n, "flannel FLANNEL_NETWORK"))
            continue
        for rs in ipam.get("ranges") or ():
            for r in rs if isinstance(rs, list) else ():
                if isinstance(r, dict) and isinstance(r.get("subnet"), str):
                    out.append((r["subnet"], "%s ipam range" % p.get("type")))
        if isinstance(ipam.get("subnet"), str):
            out.append((ipam["subnet"], "%s ipam subnet" % p.get("type")))
    return out


def conf_dir_findings(configs, subnet_env_of=lambda path: None, flannel_live=False):
    """The conflists check on runner.load_all's [(path, NetworkList or CniError)]:
    returns (status, summary, evidence, fix).  Pure.

    A runtime (containerd, cri-o) uses the first file in lexical order as
    the pod network, and containerd refuses to go on when that file does
    not parse; libcni finds a network by name in *.conflist first, then
    *.conf/*.json, so of two files with one name the other is never loaded."""
    if not configs:
        return ("FAIL", "no network config: the runtime reports the network not ready "
                "(NetworkPluginNotReady / cni config uninitialized)", [],
                ["install a conflist there (flannel: kube-flannel's install-cni writes "
                 "10-flannel.conflist)"])
    good = [(p, n) for p, n in configs if not isinstance(n, errors.CniError)]
    bad = [(p, n) for p, n in configs if isinstance(n, errors.CniError)]
    evidence, fails, warns, fix = [], [], [], []
    for i, (p, n) in enumerate(configs, 1):
        base = os.path.basename(p)
        if isinstance(n, errors.CniError):
            evidence.append("%d. %s: does not load: %s" % (i, base, n.msg))
        else:
            evidence.append("%d. %s: network %s (%s), cniVersion %s" % (
                i, base, n.name, ", ".join(str(p.get("type")) for p in n.plugins), n.version))
    first_path, first = configs[0]
    if isinstance(first, errors.CniError):
        fails.append("the first file, %s, does not load: containerd stops there and has no pod "
                     "network" % os.path.basename(first_path))
        fix.append("fix or move aside %s" % first_path)
    for p, _n in bad[1 if bad and bad[0][0] == first_path else 0:]:
        warns.append("%s does not load (runtimes skip or stop at it)" % os.path.basename(p))
        fix.append("fix or move aside %s" % p)
    names = {}
    for p, n in good:
        names.setdefault(n.name, []).append(p)
    for name, files in sorted(names.items()):
        if len(files) > 1:
            won = sorted(files, key=lambda x: (not x.endswith(".conflist"), x))[0]
            fails.append("network %s is defined by %s: libcni loads %s by name, the other%s never"
                         % (name, ", ".join(os.path.basename(x) for x in files),
                            os.path.basename(won), "s" if len(files) > 2 else ""))
            fix += ["mv %s /root/   # a duplicate of %s" % (x, name) for x in files if x != won]
    nets = []
    for p, n in good:
        for cidr, where in config_subnets(n, subnet_env_of):
            try:
                nets.append((ipaddress.ip_network(cidr, strict=False), n.name, p, where))
            except ValueError:
                continue
    for i, (a, an, ap, _w) in enumerate(nets):
        for b, bn, bp, _w2 in nets[i + 1:]:
            if an != bn and a.version == b.version and a.overlaps(b):
                fails.append("networks %s (%s, %s) and %s (%s, %s) overlap" % (
                    an, a, os.path.basename(ap), bn, b, os.path.basename(bp)))
                fix.append("give one of them another subnet, or move aside the one not in use")
    if good:
        dp, dn = good[0]
        others = [(p, n) for p, n in good[1:] if n.name != dn.name]
        if others:
            text = "the runtime's pod network is %s (%s, first in lexical order); %s load only by " \
                   "name" % (dn.name, os.path.basename(dp),
                             ", ".join("%s (%s)" % (n.name, os.path.basename(p)) for p, n in others))
            shadowed_flannel = [n for p, n in others
                                if any(x.get("type") == "flannel" for x in n.plugins)]
            default_flannel = any(x.get("type") == "flannel" for x in dn.plugins)
            if flannel_live and shadowed_flannel and not default_flannel:
                fails.append(text + "; this node runs flannel, yet its flannel network %s is "
                             "shadowed" % shadowed_flannel[0].name)
                fix.append("mv %s /root/   # the file shadowing the flannel conflist" % dp)
            else:
                warns.append(text)
                fix.append("if %s is not the network pods should get, move %s out of %s"
                           % (dn.name, os.path.basename(dp), os.path.dirname(dp)))
    if fails:
        return "FAIL", "; ".join(fails), evidence + ["also: " + w for w in warns], fix
    if warns:
        return "WARN", "; ".join(warns), evidence, fix
    dp, dn = good[0]
    return "PASS", "%d config(s); the runtime loads %s (network %s)" % (
        len(configs), os.path.basename(dp), dn.name), evidence, []


def remote_address(network, local):
    """An address in ``network`` outside ``local`` (a pod on another node)."""
    if local.prefixlen <= network.prefixlen:
        return None
    for sub in network.subnets(new_prefix=local.prefixlen):
        if sub != local:
            return sub.network_address + 2
    return None


def parse_node_list(data):
    """[(name, public IP)] from the fabric's nodes file (a list or {"nodes": [...]})."""
    if isinstance(data, dict) and "nodes" in data:
        data = data["nodes"]
    out = []
    for i, item in enumerate(data if isinstance(data, list) else ()):
        if isinstance(item, dict):
            out.append((str(item.get("name") or "node %d" % i), item.get("publicIP")))
    return out


def parse_annotations(data):
    """[(name, public IP, VtepMAC or None)] from node annotations: kubectl's
    ``get nodes -o json`` List, a list of node objects, or {name: {annotation: value}}."""
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]
    nodes = []
    if isinstance(data, list):
        for i, n in enumerate(data):
            md = n.get("metadata", {}) if isinstance(n, dict) else {}
            nodes.append((md.get("name") or "node %d" % i, md.get("annotations") or {}))
    elif isinstance(data, dict):
        nodes = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    out = []
    for name, ann in nodes:
        ip = ann.get(ANNOTATION + "public-ip-overwrite") or ann.get(ANNOTATION + "public-ip")
        mac = None
        bd = ann.get(ANNOTATION + "backend-data")
        if isinstance(bd, str):
            from cnilib.base import jsonio
            try:
                bd = jsonio.loads(bd)
            except ValueError:
                bd = None
        if isinstance(bd, dict):
            mac = bd.get("VtepMAC")
        out.append((name, ip, mac))
    return out


def duplicates(pairs):
    """{value: [names]} for values more than one name holds."""
    seen = {}
    for name, value in pairs:
        if value:
            seen.setdefault(str(value).lower(), []).append(name)
    return {v: ns for v, ns in seen.items() if len(ns) > 1}


# ====================================================================== the node

class Context:
    """What the checks read, each piece once."""

    def __init__(self, args, loc):
        from cnilib.kernel import netlink
        self.args, self.loc = args, loc
        self.netlink = netlink
        self.nl = netlink.Netlink()
        self.problems = []
        from cnilib.ops import whois
        self.node = whois.build(loc, self.nl)
        self.problems += self.node.problems
        self.links = self.node.links
        self.by_name = {link.name: link for link in self.links}
        self.by_index = {link.index: link for link in self.links}
        self.addrs = netlink.addrs(self.nl)
        self._envs = {}
        self._vxlan = self._fdb = None

    def close(self):
        self.nl.close()

    def subnet_env(self, path):
        """(SubnetEnv or None, SubnetEnvError or None) for ``path``, read once."""
        if path not in self._envs:
            from cnilib import flannel
            try:
                self._envs[path] = (flannel.load_subnet_env(path), None)
            except flannel.SubnetEnvError as exc:
                self._envs[path] = (None, exc)
        return self._envs[path]

    def subnet_files(self):
        if self.loc.subnet_files:
            return self.loc.subnet_files
        return [paths.FLANNEL_SUBNET_FILE]

    def flannel_env(self):
        """The first usable subnet.env and its path, or (None, None)."""
        for p in self.subnet_files():
            env, _ = self.subnet_env(p)
            if env is not None:
                return env, p
        return None, None

    def addrs_of(self, index):
        return [a for a in self.addrs if a.index == index]

    def local_ips(self):
        return {a.address for a in self.addrs}

    def vxlan_devs(self):
        """[(LinkBrief, VxlanInfo)] of the flannel vxlan devices here."""
        if self._vxlan is None:
            self._vxlan = []
            for name in ("flannel.1", "flannel-v6.1"):
                if name in self.by_name:
                    info = self.netlink.vxlan_info(self.netlink.link_get(self.nl, name))
                    if info is not None:
                        self._vxlan.append((self.by_name[name], info))
        return self._vxlan

    def fdb(self, index):
        """The vxlan device's fdb entries that name a remote (one dump per run)."""
        if self._fdb is None:
            self._fdb = [n for n in self.netlink.neighs(self.nl, 0, self.netlink.AF_BRIDGE) if n.dst]
        return [n for n in self._fdb if n.index == index]

    def route(self, dst):
        try:
            return self.netlink.route_get(self.nl, dst)
        except OSError:
            return None

    def routes(self):
        try:
            return self.netlink.routes(self.nl)
        except OSError:
            return []

    def ports_of(self, bridge):
        return [link for link in self.links if link.master == bridge.index]

    def sysctl(self, name):
        from cnilib.kernel import sysctl
        return sysctl.read(name)

    def bridge_networks(self):
        """[(network name, bridge name, [subnets], gateway wanted)] of the bridge
        and flannel configs (flannel's subnet from its subnet.env)."""
        out = []
        for net in self.loc.networks():
            for p in net.plugins:
                t = p.get("type")
                if t == "flannel":
                    d = p.get("delegate") if isinstance(p.get("delegate"), dict) else {}
                    if (d.get("type") or "bridge") != "bridge":
                        continue
                    env, _ = self.subnet_env(p.get("subnetFile") or paths.FLANNEL_SUBNET_FILE)
                    subs = env.subnets() if env else []
                    out.append((net.name, d.get("bridge") or "cni0", subs, d.get("isGateway", True)))
                elif t == "bridge":
                    subs = [c for c, _ in config_subnets(net, lambda path: None)]
                    gw = bool(p.get("isGateway") or p.get("isDefaultGateway"))
                    out.append((net.name, p.get("bridge") or "cni0", subs, gw))
        return out

    def pod_networks(self):
        """[(cluster network, local subnet, bridge)] for the FORWARD walk."""
        out = []
        env, _ = self.flannel_env()
        seen = set()
        if env is not None:
            for sub in env.subnets():
                s = ipaddress.ip_network(sub)
                for n in env.all_networks():
                    nn = ipaddress.ip_network(n)
                    if nn.version == s.version and s.subnet_of(nn):
                        out.append((nn, s, self._flannel_bridge()))
                        seen.add(s)
        for _name, br, subs, _gw in self.bridge_networks():
            for sub in subs:
                try:
                    s = ipaddress.ip_network(sub, strict=False)
                except ValueError:
                    continue
                if s not in seen:
                    seen.add(s)
                    out.append((s, s, br))
        return out

    def _flannel_bridge(self):
        for _net, p in flannel_networks(self.loc):
            d = p.get("delegate") if isinstance(p.get("delegate"), dict) else {}
            return d.get("bridge") or "cni0"
        return "cni0"


def _process_running(comm):
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return False
    for pid in pids:
        try:
            with open("/proc/%s/comm" % pid) as f:
                if f.read().strip() == comm:
                    return True
        except OSError:
            continue
    return False


# ====================================================================== the checks

def check_conflists(ctx, c):
    def env_of(path):
        return ctx.subnet_env(path)[0]
    live = any(ctx.subnet_env(p)[0] is not None for p in ctx.subnet_files())
    st, summary, ev, fix = conf_dir_findings(ctx.loc.configs, env_of, flannel_live=live)
    c.set(st, summary, ["conf dir %s, in load order:" % ctx.loc.conf_dir] + ev, fix)


def check_plugins(ctx, c):
    nets = ctx.loc.networks()
    if not nets:
        return c.set("SKIP", "no network config loads, so no plugin is needed")
    missing, found = [], []
    for net in nets:
        for t in plugin_types(net):
            where = [os.path.join(d, t) for d in ctx.loc.bin_dirs]
            ok = [p for p in where if os.path.isfile(p) and os.access(p, os.X_OK)]
            if ok:
                found.append("%s: %s" % (t, ok[0]))
            else:
                present = [p for p in where if os.path.exists(p)]
                missing.append((net.name, t, "%s is not executable" % present[0] if present else
                                "not in %s" % ", ".join(ctx.loc.bin_dirs)))
    if not missing:
        return c.set("PASS", "every plugin the configs name is installed (%d)" % len(set(found)),
                     sorted(set(found)))
    c.set("FAIL", "; ".join("network %s needs %s: %s" % m for m in missing), sorted(set(found)))
    for _n, t, _why in missing:
        c.fix.append("install %s into %s (pycni: ./build.sh install %s), or add the dir holding "
                     "it to the runtime's plugin path (containerd bin_dir, cri-o plugin_dirs)"
                     % (t, ctx.loc.bin_dirs[0], ctx.loc.bin_dirs[0]))


def check_subnet_env(ctx, c):
    fl = flannel_networks(ctx.loc)
    files = ctx.subnet_files()
    if not fl and not ctx.loc.explicit_subnet and not os.path.exists(files[0]):
        return c.set("SKIP", "no flannel network configured and no %s" % files[0])
    running = _process_running("flanneld")
    statuses = []
    for path in files:
        env, err = ctx.subnet_env(path)
        if err is not None:
            statuses.append("FAIL")
            c.evidence.append("%s: %s" % (path, err.msg))
            c.evidence.append("flanneld is %s on this node" % ("running" if running else "not running"))
            if err.kind == "absent":
                c.fix += ["start flanneld (kubectl -n kube-flannel get pods -o wide; kubectl -n "
                          "kube-flannel logs <the pod on this node>): it writes %s once it holds a "
                          "lease (node podCIDR assigned? RBAC?)" % path,
                          "on RHEL/EKS images look for /etc/flannel/subnet.env and point "
                          "subnetFile (or flanneld --subnet-file) at one path"]
            else:
                c.fix.append("restart flanneld so it rewrites %s (it writes FLANNEL_NETWORK, "
                             "FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ)" % path)
            continue
        outside = []
        for sub in env.subnets():
            s = ipaddress.ip_network(sub)
            if not any(s.version == ipaddress.ip_network(n).version and s.subnet_of(ipaddress.ip_network(n))
                       for n in env.all_networks()):
                outside.append(sub)
        c.evidence.append("%s: NETWORK %s SUBNET %s MTU %s IPMASQ %s" % (
            path, ",".join(env.all_networks()), ",".join(env.subnets()), env.mtu, env.ipmasq))
        if outside:
            statuses.append("FAIL")
            c.evidence.append("FLANNEL_SUBNET %s is outside FLANNEL_NETWORK %s"
                              % (",".join(outside), ",".join(env.all_networks())))
            c.fix.append("the lease and net-conf.json disagree: check the node's podCIDR "
                         "(kubectl get node -o jsonpath='{.spec.podCIDR}') against Network in "
                         "kube-flannel-cfg, then restart flanneld")
            continue
        statuses.append("PASS")
        dev = ctx.by_name.get("flannel.1")
        if dev is not None and env.subnet:
            want = str(ipaddress.ip_network(env.subnet).network_address)
            have = [a.address for a in ctx.addrs_of(dev.index)]
            c.evidence.append("flannel.1 holds %s (lease address %s)" % (", ".join(have) or "nothing", want))
            if want not in have:
                statuses[-1] = "WARN"
                c.fix.append("flannel.1 lacks the lease address %s: restart flanneld" % want)
    st = _worst(statuses)
    text = {"PASS": "present and valid", "WARN": "valid, but flannel.1 does not match it",
            "FAIL": "missing or not usable"}[st]
    c.set(st, "subnet.env %s" % text)


def check_bridge_address(ctx, c):
    nets = ctx.bridge_networks()
    if not nets:
        return c.set("SKIP", "no bridge or flannel network configured")
    statuses = []
    for name, br, subs, gw in nets:
        link = ctx.by_name.get(br)
        if not subs:
            c.evidence.append("network %s: its subnet is unknown (subnet.env missing?)" % name)
            continue
        nets_ = [ipaddress.ip_network(s, strict=False) for s in subs]
        if link is None:
            statuses.append("PASS")
            c.evidence.append("network %s: %s does not exist yet (the first pod ADD makes it)" % (name, br))
            continue
        have = [a for a in ctx.addrs_of(link.index) if a.scope == 0]
        ports = ctx.ports_of(link)
        c.evidence.append("network %s: %s holds %s, subnet %s, %d port(s)" % (
            name, br, ", ".join(a.cidr for a in have) or "no address", ", ".join(subs), len(ports)))
        stale = [a for a in have if not any(ipaddress.ip_address(a.address) in n for n in nets_)
                 and a.family == 2]
        if stale:
            statuses.append("FAIL")
            for a in stale:
                c.evidence.append("%s holds %s, outside %s: a leftover of an earlier lease or cluster; "
                                  "the reference bridge fails every ADD with 'already has an IP address "
                                  "different from ...'" % (br, a.cidr, ", ".join(subs)))
                if ports:
                    c.fix.append("%d pod(s) still use %s: drain the node (kubectl drain <node> "
                                 "--ignore-daemonsets), then ip link delete %s" % (len(ports), br, br))
                else:
                    c.fix.append("ip addr del %s dev %s   # no pod uses it; the next ADD adds the gateway"
                                 % (a.cidr, br))
            continue
        if gw:
            want = [str(n.network_address + 1) for n in nets_]
            if not any(a.address in want for a in have):
                statuses.append("WARN" if ports else "PASS")
                c.evidence.append("%s lacks the gateway %s" % (br, " or ".join(want)))
                if ports:
                    c.fix.append("ip addr add %s/%d dev %s" % (want[0], nets_[0].prefixlen, br))
                continue
        statuses.append("PASS")
    st = _worst(statuses)
    c.set(st, {"PASS": "bridge addresses match their subnets",
               "WARN": "a bridge lacks its gateway address",
               "FAIL": "a bridge holds an address from another subnet",
               "SKIP": "no bridge subnet known"}[st])


def check_ip_forward(ctx, c):
    if not ctx.loc.networks():
        return c.set("SKIP", "no network configured")
    v4 = ctx.sysctl("net/ipv4/ip_forward")
    c.evidence.append("net.ipv4.ip_forward = %s" % v4)
    want6 = any(n.version == 6 for n, _s, _b in ctx.pod_networks())
    v6 = ctx.sysctl("net/ipv6/conf/all/forwarding") if want6 else None
    if want6:
        c.evidence.append("net.ipv6.conf.all.forwarding = %s" % (v6 if v6 is not None else
                                                                 "(absent: IPv6 is disabled)"))
    bad = []
    if v4 != "1":
        bad.append("net.ipv4.ip_forward=1")
    if want6 and v6 != "1":
        bad.append("net.ipv6.conf.all.forwarding=1")
    if bad:
        return c.set("FAIL", "forwarding is off: pods cannot reach beyond this node", (),
                     ["sysctl -w %s" % b for b in bad]
                     + ["echo '%s' > /etc/sysctl.d/90-pycni.conf   # survives a reboot"
                        % "\\n".join(b.replace("=", " = ") for b in bad)])
    c.set("PASS", "forwarding is on")


def check_rp_filter(ctx, c):
    devs = ctx.vxlan_devs()
    names = [n for n in ("flannel.1", "cni0") if n in ctx.by_name]
    underlay = None
    if devs and devs[0][1].link in ctx.by_index:
        underlay = ctx.by_index[devs[0][1].link].name
        names.append(underlay)
    if not names:
        return c.set("SKIP", "no flannel.1, cni0 or underlay to look at")
    allv = ctx.sysctl("net/ipv4/conf/all/rp_filter")
    strict = []
    for n in names:
        v = ctx.sysctl("net/ipv4/conf/%s/rp_filter" % n)
        eff = max(int(allv or 0), int(v or 0))
        shown = {0: "off", 1: "strict", 2: "loose"}.get(eff, eff)
        c.evidence.append("%s: rp_filter %s (all %s) -> %s" % (n, v, allv, shown))
        if eff == 1:
            strict.append(n)
    asym = []
    if devs and underlay in strict:
        dev, info = devs[0]
        for f in ctx.fdb(dev.index):
            r = ctx.route(f.dst)
            if r is not None and r.oif and r.oif != info.link:
                asym.append("peer %s is routed via %s, VXLAN arrives on %s" % (
                    f.dst, ctx.by_index.get(r.oif).name if r.oif in ctx.by_index else r.oif, underlay))
    if asym:
        return c.set("WARN", "strict rp_filter on an asymmetric path drops overlay traffic", asym,
                     ["sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.%s.rp_filter=2   # loose"
                      % underlay])
    c.set("PASS", "no strict reverse-path filter on an asymmetric pod path"
          + (" (strict on %s, symmetric)" % ", ".join(strict) if strict else ""))


def check_br_netfilter(ctx, c):
    if not ctx.bridge_networks():
        return c.set("SKIP", "no bridge network configured")
    v4 = ctx.sysctl("net/bridge/bridge-nf-call-iptables")
    v6 = ctx.sysctl("net/bridge/bridge-nf-call-ip6tables")
    if v4 is None:
        return c.set("SKIP", "the kernel has no bridge netfilter in this netns "
                     "(/proc/sys/net/bridge absent: br_netfilter not loaded or not built): bridged "
                     "pod-to-pod traffic bypasses iptables, so Service replies between pods of one "
                     "node are not un-NATed", (),
                     ["modprobe br_netfilter && echo br_netfilter > /etc/modules-load.d/br_netfilter.conf"])
    c.evidence.append("net.bridge.bridge-nf-call-iptables = %s, bridge-nf-call-ip6tables = %s" % (v4, v6))
    if v4 != "1":
        return c.set("WARN", "bridged pod traffic skips iptables: a Service backed by a pod on "
                     "the same node fails (k8s#38802)", (),
                     ["sysctl -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1"])
    c.set("PASS", "bridged traffic goes through iptables")


def _trace_packets(ctx):
    """[(label, Packet)] of pod traffic the FORWARD hook sees."""
    from cnilib.ops import fwtrace
    out = []
    vx = {link.name for link, _i in ctx.vxlan_devs()}
    default = None
    routes = ctx.routes()
    for net, local, br in ctx.pod_networks():
        pod = local.network_address + 2
        tunnel = "flannel.1" if net.version == 4 else "flannel-v6.1"
        overlay = tunnel if tunnel in vx else None
        # a peer's pod: from a route into the network (flannel's per-node routes) when there is one
        remote = remote_address(net, local)
        for r in routes:
            if r.dst is not None and r.family == (2 if net.version == 4 else 10):
                dst = ipaddress.ip_network(r.cidr, strict=False)
                if dst.subnet_of(net) and dst != local and dst.num_addresses > 2:
                    remote = dst.network_address + 2
                    break
        if overlay is None and remote is not None:
            r = ctx.route(str(remote))
            overlay = ctx.by_index[r.oif].name if r is not None and r.oif in ctx.by_index else None
        if remote is not None and net != local:
            out.append(("from a pod on another node", fwtrace.Packet(remote, pod, iif=overlay, oif=br)))
            out.append(("to a pod on another node", fwtrace.Packet(pod, remote, iif=br, oif=overlay)))
        if ctx.sysctl("net/bridge/bridge-nf-call-ip%stables" % ("" if net.version == 4 else "6")) == "1":
            out.append(("between two pods on %s" % br,
                        fwtrace.Packet(pod, local.network_address + 3, iif=br, oif=br)))
        if net.version == 4 and default is None:
            r = ctx.route(OUTSIDE_PROBE)
            default = ctx.by_index[r.oif].name if r is not None and r.oif in ctx.by_index else ""
        if net.version == 4 and default and default != br:
            out.append(("from a pod to outside the cluster (via %s)" % default,
                        fwtrace.Packet(pod, OUTSIDE_PROBE, iif=br, oif=default)))
    return out


def _fix_for(decision, pkt, net):
    """Commands letting ``pkt`` (of pod network ``net``) through where ``decision`` stopped it."""
    tool = "iptables" if pkt.family == 4 else "ip6tables"
    if decision.by.startswith("policy ") and "nft" not in decision.by:
        return ["%s -A FORWARD -s %s -j ACCEPT && %s -A FORWARD -d %s -j ACCEPT   # what flanneld's "
                "FLANNEL-FWD holds (flanneld --iptables-forward-rules, on by default)"
                % (tool, net, tool, net),
                "or: %s -P FORWARD ACCEPT   # the seed's cure; Docker sets DROP at every start" % tool]
    if decision.by.startswith("-A "):
        return ["%s -I FORWARD 1 -s %s -j ACCEPT && %s -I FORWARD 1 -d %s -j ACCEPT   # before: %s"
                % (tool, net, tool, net, decision.by),
                "or remove it: %s -D %s" % (tool, decision.by[3:])]
    where = decision.where.split()
    if len(where) >= 5 and where[0] == "nft":
        ipx = "" if pkt.family == 4 else "6"
        return ["nft insert rule %s %s %s ip%s saddr %s accept && "
                "nft insert rule %s %s %s ip%s daddr %s accept"
                % (where[1], where[2], where[4], ipx, net, where[1], where[2], where[4], ipx, net)]
    return ["let %s through: %s" % (net, decision.by)]


def check_forward_policy(ctx, c):
    from cnilib.ops import fwtrace
    nets = ctx.pod_networks()
    if not nets:
        return c.set("SKIP", "no pod network known (no subnet.env, no bridge subnet)")
    ipt = ctx.node.ipt.get(4, {})
    nft_fwd = ["%s %s %s policy %s" % (f, t, ch.name, ch.policy)
               for (f, t), tbl in sorted(ctx.node.nft_chains.items()) for ch in tbl.values()
               if ch.hook == "forward" and not (f in ("ip", "ip6") and t in fwtrace.IPTABLES_NFT_TABLES)]
    c.evidence.append("FORWARD policy: iptables %s%s" % (
        ipt["filter"].policies.get("FORWARD", "ACCEPT") if ipt.get("filter") else "(no filter table)",
        "; nft forward base chains: " + ", ".join(nft_fwd) if nft_fwd else ""))
    statuses = []
    for label, pkt in _trace_packets(ctx):
        d = fwtrace.decide(ctx.node.ipt.get(pkt.family), ctx.node.nft_chains, "forward", pkt)
        if d is None:
            statuses.append("PASS")
            c.evidence.append("%s (%s): no rule on the forward hook" % (label, pkt))
            continue
        c.evidence.append("%s (%s): %s by %s%s" % (label, pkt, d.verdict.upper(), d.by,
                                                    "" if d.certain else " (uncertain)"))
        for x in d.doubts[:3]:
            c.evidence.append("  could not evaluate: %s" % x)
        net = next((str(n) for n, s, b in nets if pkt.saddr in s or pkt.daddr in s), str(nets[0][0]))
        if d.verdict != "accept":
            statuses.append("FAIL" if d.certain else "WARN")
            for f in _fix_for(d, pkt, net):
                if f not in c.fix:
                    c.fix.append(f)
        else:
            statuses.append("PASS" if d.certain else "WARN")
    st = _worst(statuses) if statuses else "PASS"
    c.set(st, {"PASS": "pod traffic passes the forward hook",
               "WARN": "pod traffic may be dropped on the forward hook (rules this walk cannot evaluate)",
               "FAIL": "pod traffic is dropped on the forward hook: pods on different nodes cannot talk"}[st])


def check_vxlan_port(ctx, c):
    from cnilib.ops import fwtrace
    devs = ctx.vxlan_devs()
    if not devs:
        return c.set("SKIP", "no flannel vxlan device here (host-gw, or no flannel)")
    statuses = []
    if _process_running("firewalld"):
        c.evidence.append("firewalld is running: a reload rewrites its rules")
    for dev, info in devs:
        port = info.port or 8472
        under = ctx.by_index[info.link].name if info.link in ctx.by_index else None
        peers = sorted({f.dst for f in ctx.fdb(dev.index)})
        if not peers:
            c.evidence.append("%s has no peer in its fdb" % dev.name)
            continue
        local = str(info.local) if info.local else None
        for peer in peers:
            if local is None:
                r = ctx.route(peer)
                local = r.prefsrc if r is not None else None
            if local is None:
                continue
            for hooks, pkt, label in (
                    (("prerouting", "input"), fwtrace.Packet(peer, local, "udp", 40000, port, iif=under),
                     "from %s" % peer),
                    (("output",), fwtrace.Packet(local, peer, "udp", 40000, port, oif=under),
                     "to %s" % peer)):
                for hook in hooks:
                    d = fwtrace.decide(ctx.node.ipt.get(pkt.family), ctx.node.nft_chains, hook, pkt)
                    if d is None or (d.passes and d.certain):
                        continue
                    c.evidence.append("VXLAN udp/%d %s (%s) on %s: %s by %s%s" % (
                        port, label, pkt, hook, d.verdict.upper(), d.by, "" if d.certain else " (uncertain)"))
                    if d.passes:
                        statuses.append("WARN")
                        continue
                    statuses.append("FAIL" if d.certain else "WARN")
                    tool = "iptables" if pkt.family == 4 else "ip6tables"
                    chain = "INPUT" if hook != "output" else "OUTPUT"
                    side = "-s %s" % peer if hook != "output" else "-d %s" % peer
                    fix = "%s -I %s 1 -p udp --dport %d %s -j ACCEPT" % (tool, chain, port, side)
                    if d.by.startswith("-A "):
                        fix += "   # or remove the rule: %s -D %s" % (tool, d.by[3:])
                    elif d.where.startswith("nft "):
                        w = d.where.split()
                        fix = "nft insert rule %s %s %s udp dport %d accept" % (w[1], w[2], w[4], port)
                    for f in (fix, "firewalld: firewall-cmd --permanent --add-port=%d/udp && "
                              "firewall-cmd --reload; cloud security groups must allow udp/%d "
                              "between nodes too" % (port, port)):
                        if f not in c.fix:
                            c.fix.append(f)
                    break
            statuses.append("PASS")
        c.evidence.append("%s: udp/%d with %d peer(s): %s" % (dev.name, port, len(peers), ", ".join(peers)))
    st = _worst(statuses) if statuses else "SKIP"
    c.set(st, {"PASS": "VXLAN (udp/%d) passes this node's firewall both ways" % (devs[0][1].port or 8472),
               "WARN": "a rule this walk cannot evaluate may drop VXLAN traffic",
               "FAIL": "this node's firewall drops or rejects VXLAN: pods on other nodes are unreachable "
                       "(the peer sees 'admin prohibited filter' for a REJECT)",
               "SKIP": "no peer known in the vxlan fdb"}[st])


def check_vxlan_local(ctx, c):
    devs = ctx.vxlan_devs()
    if not devs:
        return c.set("SKIP", "no flannel vxlan device here")
    statuses = []
    mine = ctx.local_ips()
    for dev, info in devs:
        local = str(info.local) if info.local else None
        under = ctx.by_index.get(info.link)
        dev_name = under.name if under else info.link or "(none)"
        c.evidence.append("%s: vxlan id %s local %s dev %s dstport %s" % (
            dev.name, info.vni, local or "(unset)", dev_name, info.port))
        if local and local not in mine:
            statuses.append("FAIL")
            c.evidence.append("no interface of this node holds %s" % local)
            c.fix.append("flanneld --public-ip=<an address of this node> (or --iface), then "
                         "ip link delete %s and restart flanneld" % dev.name)
            continue
        peers = sorted({f.dst for f in ctx.fdb(dev.index)})
        if not peers:
            c.evidence.append("no peer in %s's fdb" % dev.name)
            continue
        bad = []
        for peer in peers:
            r = ctx.route(peer)
            if r is None:
                bad.append((peer, None, None))
                c.evidence.append("peer %s: no route" % peer)
                continue
            oif = ctx.by_index.get(r.oif)
            c.evidence.append("peer %s: route get -> dev %s src %s"
                              % (peer, oif.name if oif else r.oif, r.prefsrc))
            if (info.link and r.oif != info.link) or (local and r.prefsrc and r.prefsrc != local):
                bad.append((peer, oif, r.prefsrc))
        if bad:
            statuses.append("FAIL")
            peer, oif, src = bad[0]
            if oif is None:
                c.fix.append("add a route to the peer nodes (%s), or announce an address they can reach"
                             % ", ".join(p for p, _o, _s in bad))
            else:
                c.evidence.append("%s sends from %s on %s, but the peers are reached through %s (src %s): "
                                  "their replies go to an address on the wrong interface (the seed's "
                                  "multi-homed host)" % (dev.name, local, under.name if under else "?",
                                                        oif.name, src))
                c.fix += ["flanneld --iface=%s (or --public-ip=%s), then ip link delete %s and restart "
                          "flanneld so it recreates it" % (oif.name, src, dev.name),
                          "kube-flannel: add '--iface=%s' to the kube-flannel container args; pycni fabric: "
                          "publicIP %s and --iface %s" % (oif.name, src, oif.name)]
        else:
            statuses.append("PASS")
    st = _worst(statuses) if statuses else "SKIP"
    c.set(st, {"PASS": "flannel.1's local address is on the interface that reaches its peers",
               "FAIL": "flannel.1 sends from an address its peers do not reach it on",
               "SKIP": "no peer known in the vxlan fdb", "WARN": ""}[st])


def check_public_ip(ctx, c):
    from cnilib.base import jsonio
    statuses = []
    sources = 0
    me_ips = ctx.local_ips()
    for opt, parse in (("nodes", parse_node_list), ("annotations", parse_annotations)):
        path = getattr(ctx.args, opt, None)
        if not path:
            continue
        sources += 1
        try:
            with open(path, "rb") as f:
                data = jsonio.loads(f.read())
        except (OSError, ValueError) as exc:
            c.error = "cannot read --%s %s: %s" % (opt, path, exc)
            continue
        items = parse(data)
        ips = [(i[0], i[1]) for i in items]
        c.evidence.append("--%s %s: %s" % (opt, path, ", ".join("%s=%s" % x for x in ips) or "no node"))
        for ip, names in sorted(duplicates(ips).items()):
            statuses.append("FAIL")
            c.evidence.append("%s is announced by %s" % (ip, ", ".join(names)))
            c.fix.append("give each node its own public IP: flanneld --iface=<the cluster NIC> or "
                         "--public-ip on %s (or kubectl annotate node <node> --overwrite "
                         "%spublic-ip-overwrite=<its IP>)" % (", ".join(names), ANNOTATION))
        if opt == "annotations":
            for mac, names in sorted(duplicates([(i[0], i[2]) for i in items]).items()):
                statuses.append("FAIL")
                c.evidence.append("VtepMAC %s is announced by %s (cloned machines?)"
                                  % (mac, ", ".join(names)))
                c.fix.append("ip link delete flannel.1 on %s and restart flanneld: it picks a new MAC"
                             % ", ".join(names[1:]))
        me = [(n, ip) for n, ip in ips if (ctx.args.node and n == ctx.args.node)]
        if not me:
            me = [(n, ip) for n, ip in ips if ip in me_ips]
        if ctx.args.node and not me:
            c.evidence.append("node %s is not in --%s" % (ctx.args.node, opt))
        for n, ip in me:
            if ip not in me_ips:
                statuses.append("FAIL")
                c.evidence.append("this node (%s) announces %s, which none of its interfaces holds" % (n, ip))
                c.fix.append("flanneld --public-ip=<an address of this node> on %s" % n)
    for dev, info in ctx.vxlan_devs():
        sources += 1
        fdb = ctx.fdb(dev.index)
        local = str(info.local) if info.local else None
        pairs = [(f.lladdr, f.dst) for f in fdb if f.lladdr and f.lladdr != "00:00:00:00:00:00"]
        for ip, macs in sorted(duplicates([(m, d) for m, d in pairs]).items()):
            statuses.append("FAIL")
            c.evidence.append("%s fdb: VTEPs %s all point at %s: several nodes announce one public IP"
                              % (dev.name, ", ".join(macs), ip))
            c.fix.append("give each node its own public IP (flanneld --iface / --public-ip)")
        for m, d in pairs:
            if local and d == local:
                statuses.append("FAIL")
                c.evidence.append("%s fdb: peer VTEP %s points at %s, this node's own address"
                                  % (dev.name, m, d))
                c.fix.append("the node behind VTEP %s announces %s, this node's address: give it its "
                             "own (flanneld --iface / --public-ip)" % (m, d))
        if pairs and not any("fdb" in e for e in c.evidence):
            c.evidence.append("%s fdb: %s" % (dev.name, ", ".join("%s -> %s" % p for p in pairs)))
    if not sources:
        return c.set("SKIP", "no node list (--nodes), no annotations (--annotations), no vxlan fdb")
    st = _worst(statuses) if statuses else "PASS"
    c.set(st, {"PASS": "every node announces its own public IP",
               "FAIL": "two nodes announce one public IP, or this node announces an address it lacks",
               "WARN": "", "SKIP": ""}[st])


def check_mtu(ctx, c):
    env, path = ctx.flannel_env()
    devs = ctx.vxlan_devs()
    if env is None and not devs:
        return c.set("SKIP", "no subnet.env and no flannel vxlan device")
    bad = []
    want = env.mtu if env is not None else None
    for dev, info in devs:
        under = ctx.by_index.get(info.link)
        over = VXLAN_OVERHEAD if dev.name == "flannel.1" else 70
        if under is not None:
            c.evidence.append("%s mtu %d over %s mtu %d (needs >= %d)" % (dev.name, dev.mtu, under.name,
                                                                         under.mtu, dev.mtu + over))
            if under.mtu < dev.mtu + over:
                bad.append("%s mtu %d needs an underlay of %d; %s has %d" % (
                    dev.name, dev.mtu, dev.mtu + over, under.name, under.mtu))
                c.fix.append("ip link set %s mtu %d, FLANNEL_MTU=%d (flanneld derives it from the "
                             "underlay: restart flanneld), then recreate the pods"
                             % (dev.name, under.mtu - over, under.mtu - over))
        if dev.name == "flannel.1" and want is not None and dev.mtu != want:
            bad.append("FLANNEL_MTU %d in %s, flannel.1 has %d" % (want, path, dev.mtu))
            c.fix.append("restart flanneld so subnet.env and flannel.1 agree")
    if want is not None:
        br_name = ctx._flannel_bridge()
        br = ctx.by_name.get(br_name)
        if br is not None:
            c.evidence.append("%s mtu %d, FLANNEL_MTU %d" % (br_name, br.mtu, want))
            if br.mtu != want:
                bad.append("%s mtu %d != FLANNEL_MTU %d" % (br_name, br.mtu, want))
                c.fix.append("ip link set %s mtu %d" % (br_name, want))
            veths = [link for link in ctx.ports_of(br) if link.kind == "veth"]
            wrong = [link for link in veths if link.mtu != want]
            c.evidence.append("%d veth(s) on %s, %d with mtu != %d" % (len(veths), br_name, len(wrong), want))
            rows = {r.veth.name: r for r in ctx.node.rows if r.veth is not None}
            for link in wrong:
                r = rows.get(link.name)
                who = " (%s)" % (r.pod or r.cid) if r is not None and (r.pod or r.cid) else ""
                bad.append("veth %s%s mtu %d" % (link.name, who, link.mtu))
            if wrong:
                c.fix.append("recreate the pods of %s (their eth0 has the old MTU too; pycni whois "
                             "<veth> names them), or ip link set <veth> mtu %d plus the same on eth0 "
                             "inside the pod" % (", ".join(link.name for link in wrong), want))
    if bad:
        return c.set("FAIL", "MTU chain broken: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""),
                     ["mismatch: " + b for b in bad])
    c.set("PASS", "MTU chain consistent (underlay >= flannel.1 + %d, cni0 and veths = FLANNEL_MTU)"
          % VXLAN_OVERHEAD)


def _pycni():
    """How to call pycni in a fix line: 'pycni' when the running one is on
    PATH, else its full path."""
    exe = sys.argv[0] if sys.argv else ""
    if os.path.basename(exe) != "pycni":
        return "pycni"
    d = os.path.dirname(os.path.abspath(exe))
    on_path = [os.path.abspath(p) for p in os.environ.get("PATH", "").split(":") if p]
    return "pycni" if d in on_path else os.path.abspath(exe)


def _del_cmd(ctx, r):
    env = []
    if ctx.loc.conf_dir != paths.CONF_DIR:
        env.append("NETCONFPATH=%s" % ctx.loc.conf_dir)
    env.append("CNI_PATH=%s" % ":".join(ctx.loc.bin_dirs))
    if ctx.loc.cache_dir != paths.CACHE_DIR:
        env.append("PYCNI_CACHE_DIR=%s" % ctx.loc.cache_dir)
    return "%s %s del %s --container-id %s --ifname %s   # DEL with the cached config releases " \
           "every layer" % (" ".join(env), _pycni(), _cmd([r.network]), _cmd([r.cid]), _cmd([r.ifname]))


def _can_del(ctx, r):
    return (r.cache is not None and r.network and r.cid and r.ifname
            and any(n.name == r.network for n in ctx.loc.networks()))


def _capacity(ctx, network):
    """Usable addresses of ``network``'s host-local ranges, or None when unknown."""
    for net in ctx.loc.networks():
        if net.name != network:
            continue
        total = 0
        for p in net.plugins:
            if p.get("type") == "flannel":
                env, _ = ctx.subnet_env(p.get("subnetFile") or paths.FLANNEL_SUBNET_FILE)
                subs = env.subnets() if env else []
            else:
                subs = [c for c, _ in config_subnets(net, lambda path: None)]
            for s in subs:
                n = ipaddress.ip_network(s, strict=False)
                total += max(n.num_addresses - (3 if n.version == 4 else 2), 0)
        return total or None
    return None


def check_ipam_leaks(ctx, c):
    rows = [r for r in ctx.node.rows if "lease" in r.orphan]
    counts = {}
    for lease in ctx.node.leases:
        counts[lease.network] = counts.get(lease.network, 0) + 1
    for net, n in sorted(counts.items()):
        cap = _capacity(ctx, net)
        leaked = sum(len(r.leases) for r in rows if r.network == net)
        c.evidence.append("network %s: %d lease(s)%s, %d leaked" % (
            net, n, " of %d addresses" % cap if cap else "", leaked))
    if not ctx.node.leases:
        return c.set("PASS", "no host-local lease on this node" if ctx.node.lease_nets or ctx.node.leases
                     else "no host-local lease dir found (%s)" % ", ".join(ctx.loc.data_dirs))
    if not rows:
        return c.set("PASS", "every lease belongs to a live attachment")
    full = []
    for r in rows:
        for lease in r.leases:
            c.evidence.append("%s %s held by %s/%s: no veth, no netns"
                              % (r.network, lease.ip, r.cid, r.ifname))
        if _can_del(ctx, r):
            f = _del_cmd(ctx, r)
        else:
            f = "rm %s" % " ".join(_cmd([lease.path]) for lease in r.leases)
        if f not in c.fix:
            c.fix.append(f)
    for net, n in counts.items():
        cap = _capacity(ctx, net)
        if cap and n >= cap:
            full.append(net)
    c.fix.append("or for a whole network: pycni gc <network> --dry-run, then without --dry-run "
                 "(cniVersion 1.1.0; the result cache is the valid set)")
    n = sum(len(r.leases) for r in rows)
    if full:
        return c.set("FAIL", "%d leaked lease(s); %s full: new pods get 'no IP addresses available'"
                     % (n, ", ".join(full)))
    c.set("WARN", "%d leaked lease(s) of attachments that are gone" % n)


def check_orphan_veths(ctx, c):
    rows = [r for r in ctx.node.rows if "veth" in r.orphan]
    if not rows:
        n = sum(1 for r in ctx.node.rows if r.veth is not None)
        return c.set("PASS", "every CNI host veth belongs to a known attachment (%d)" % n)
    for r in rows:
        c.evidence.append("%s (alias %r, peer in %s): %s" % (
            r.veth.name, r.veth.alias or "", r.netns_path() or "an unknown netns",
            "its attachment %s/%s/%s holds no lease" % (r.network, r.cid, r.ifname) if r.cid
            else "no lease, cache entry or alias names it"))
        c.fix.append("ip link delete %s" % r.veth.name)
    c.set("WARN", "%d host veth(s) with no lease or record: a DEL that stopped halfway, or IPs that "
          "may be handed out twice" % len(rows))


def check_leftover_rules(ctx, c):
    rows = [r for r in ctx.node.rows if "rules" in r.orphan]
    if not rows:
        return c.set("PASS", "every portmap, masquerade and firewall rule belongs to a live attachment "
                     "(%d rule set(s))" % len(ctx.node.groups))
    live_ports = {}
    for r in ctx.node.rows:
        if r.live:
            for p in r.host_ports():
                live_ports[(p[0], p[1], p[2])] = (r, p)
    conflict = []
    for r in rows:
        for g in r.rules:
            c.evidence.append("%s (%s) of %s/%s/%s" % (g.where, g.what, r.network or "?", r.cid or "?",
                                                       r.ifname or "?"))
            for p in g.ports:
                c.evidence.append("  DNAT %s %s%d -> %s:%s"
                                  % (p[0], (p[1] + ":") if p[1] else "", p[2], p[3], p[4]))
                other = live_ports.get((p[0], p[1], p[2]))
                if other is not None:
                    conflict.append("hostPort %s/%d goes to the dead %s and the live %s (%s)" % (
                        p[0], p[2], p[3], other[1][3], other[0].pod or other[0].cid))
        if _can_del(ctx, r):
            c.fix.append(_del_cmd(ctx, r))
        else:
            for g in r.rules:
                c.fix += [_cmd(argv) for argv in g.delete]
    if conflict:
        c.evidence += conflict
        return c.set("FAIL", "leftover rules: " + "; ".join(conflict))
    c.set("WARN", "%d rule set(s) of attachments that are gone" % sum(len(r.rules) for r in rows))


def check_stale_records(ctx, c):
    found = 0
    for r in ctx.node.rows:
        layers = [o for o in r.orphan if o in ("cache", "saved", "tuning")]
        if not layers:
            continue
        found += 1
        for o, obj in (("cache", r.cache), ("saved", r.saved), ("tuning", r.tuning)):
            if o in layers:
                c.evidence.append("%s of %s/%s/%s: %s" % (
                    {"cache": "result cache entry", "saved": "flannel saved config",
                     "tuning": "tuning originals"}[o], r.network or "?", r.cid or "?", r.ifname or "?",
                    obj.path)
                    + (" (netns %s gone)" % r.cache.netns if o == "cache" and r.cache.netns else ""))
        if _can_del(ctx, r):
            c.fix.append(_del_cmd(ctx, r))
        else:
            c.fix += ["rm %s" % _cmd([obj.path]) for o, obj in (("cache", r.cache), ("saved", r.saved),
                                                                  ("tuning", r.tuning)) if o in layers]
    if not found:
        return c.set("PASS", "no record of a gone attachment (cache %s, flannel %s)"
                     % (ctx.loc.cache_dir, ", ".join(ctx.loc.flannel_dirs)))
    c.set("WARN", "%d attachment(s) gone but still recorded: the runtime will retry their DEL, or "
          "nobody will" % found)


def check_state_files(ctx, c):
    statuses = []
    for s in ctx.node.saved:
        if s.state in ("empty", "corrupt"):
            statuses.append("FAIL")
            c.evidence.append("flannel saved config %s is %s%s"
                              % (s.path, s.state, ": " + s.why if s.why else ""))
            c.fix.append("NETCONFPATH=%s CNI_PATH=%s " % (ctx.loc.conf_dir, ":".join(ctx.loc.bin_dirs))
                         + _pycni() + " del %s --container-id %s   # pycni's "
                         "flannel rebuilds the config from subnet.env and releases the lease; the Go "
                         "plugin fails this DEL: then rm %s" % (s.network or "<network>", _cmd([s.cid]),
                                                              _cmd([s.path])))
    for e in ctx.node.cache:
        if e.problem:
            statuses.append("FAIL")
            c.evidence.append("result cache entry %s: %s" % (e.path, e.problem))
            c.fix.append("rm %s   # libcni before 1.2 fails every DEL/CHECK on it" % _cmd([e.path]))
    for lease in ctx.node.leases:
        if lease.torn:
            statuses.append("WARN")
            c.evidence.append("lease %s holds no owner (empty or garbled)" % lease.path)
            c.fix.append("rm %s   # pycni's host-local also reclaims it when it needs the address"
                         % _cmd([lease.path]))
    for t in ctx.node.tuning:
        if not t.ok:
            statuses.append("WARN")
            c.evidence.append("tuning originals %s do not parse: DEL cannot restore the interface" % t.path)
            c.fix.append("rm %s" % _cmd([t.path]))
    if not statuses:
        return c.set("PASS", "no empty or corrupt state file (%d saved config(s), %d cache entr%s, "
                     "%d lease(s))" % (len(ctx.node.saved), len(ctx.node.cache),
                                       "y" if len(ctx.node.cache) == 1 else "ies", len(ctx.node.leases)))
    st = _worst(statuses)
    c.set(st, "%d damaged state file(s)" % len(statuses))


CHECKS = (
    ("conflists", "network configs in load order", check_conflists),
    ("plugins", "plugin binaries", check_plugins),
    ("subnet-env", "flannel subnet.env", check_subnet_env),
    ("bridge-address", "bridge gateway address", check_bridge_address),
    ("ip-forward", "IP forwarding", check_ip_forward),
    ("rp-filter", "reverse-path filter", check_rp_filter),
    ("br-netfilter", "bridge netfilter", check_br_netfilter),
    ("forward-policy", "pod traffic through FORWARD", check_forward_policy),
    ("vxlan-port", "VXLAN udp port through the firewall", check_vxlan_port),
    ("vxlan-local", "flannel.1 local address vs the route to the peers", check_vxlan_local),
    ("public-ip", "public IPs of the nodes", check_public_ip),
    ("mtu", "MTU chain", check_mtu),
    ("ipam-leaks", "leaked IPAM reservations", check_ipam_leaks),
    ("orphan-veths", "orphan host veths", check_orphan_veths),
    ("leftover-rules", "leftover portmap/masquerade/firewall rules", check_leftover_rules),
    ("stale-records", "records of gone attachments", check_stale_records),
    ("state-files", "empty or corrupt state files", check_state_files),
)
CHECK_IDS = tuple(c[0] for c in CHECKS)


# checks that judge the firewall rules: without them they cannot pass
RULE_CHECKS = ("forward-policy", "vxlan-port", "leftover-rules")


def run_checks(ctx, only=None):
    out = []
    unread = "; ".join(v for k, v in ctx.node.raw_rules.get("unread", {}).items() if k in ("nft", 4))
    for cid, title, fn in CHECKS:
        if only and cid not in only:
            continue
        c = Check(cid, title)
        try:
            fn(ctx, c)
            if unread and cid in RULE_CHECKS and c.status in ("PASS", "WARN"):
                c.status, c.summary = "SKIP", "could not read the firewall rules (run as root)"
                c.error = unread
        except Exception as exc:  # a check that breaks must not hide the others
            c.status, c.summary = "SKIP", "could not run: %s" % exc
            c.error = "%s: %s" % (type(exc).__name__, exc)
        if c.error and c.status == "SKIP" and not c.summary:
            c.summary = "could not run: %s" % c.error
        out.append(c)
    return out


def exit_code(checks):
    if any(c.status == "FAIL" for c in checks):
        return 1
    if any(c.error for c in checks):
        return 2
    return 0


# ====================================================================== output

def report(checks, loc, problems):
    from cnilib.cni import version
    summary = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
    return {"schema": "pycni-doctor/1", "version": version.SUITE_VERSION, "exit": exit_code(checks),
            "summary": summary, "checks": [c.as_dict() for c in checks],
            "locations": loc.as_dict(), "problems": list(problems)}


_COLORS = {"PASS": "32", "WARN": "33", "FAIL": "31;1", "SKIP": "2"}


def render(rep, color=False):
    """Human output: a header, one line per check, evidence and fix under WARN/FAIL."""
    s = rep["summary"]
    lines = ["pycni doctor %s: %d checks, %s" % (
        rep["version"], len(rep["checks"]),
        "  ".join("%s %d" % (k, s[k]) for k in STATUSES if s[k]))]
    width = max([len(c["id"]) for c in rep["checks"]] + [0])
    for c in rep["checks"]:
        st = c["status"]
        tag = "\x1b[%sm%-4s\x1b[0m" % (_COLORS[st], st) if color else "%-4s" % st
        lines.append("%s  %-*s  %s" % (tag, width, c["id"], c["summary"]))
        if st in ("WARN", "FAIL") or c["error"]:
            for e in c["evidence"]:
                lines.append("        %s" % e)
            for f in c["fix"]:
                lines.append("    fix: %s" % f)
            if c["error"]:
                lines.append("    error: %s" % c["error"])
    for p in rep["problems"]:
        lines.append("note: %s" % p)
    verdict = {0: "healthy (no check failed)", 1: "FAILED: see the fix lines above",
               2: "could not check everything (see the errors above)"}[rep["exit"]]
    lines.append("pycni doctor: %s" % verdict)
    return "\n".join(lines) + "\n"


# ====================================================================== bundle

def log_paths(args):
    out = []
    if getattr(args, "log", None):
        out.append(args.log)
    env = os.environ.get("PYCNI_LOG")
    if env and env not in ("-", "off"):
        out.append(env)
    out.append(paths.LOG_FILE)
    return [p for i, p in enumerate(out) if p not in out[:i]]


def _tail(path, lines=500, limit=4 << 20):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError as exc:
        return "(cannot read %s: %s)\n" % (path, exc.strerror)
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(text) + "\n"


def _run_text(argv):
    from cnilib.base import proc
    try:
        r = proc.run(argv, timeout=30)
    except (OSError, TimeoutError) as exc:
        return "$ %s\n(could not run: %s)\n" % (_cmd(argv), exc)
    out = r.out.decode("utf-8", "replace")
    if r.rc != 0:
        out += "(exit %d) %s\n" % (r.rc, r.err_text(500))
    return "$ %s\n%s" % (_cmd(argv), out)


def _listing(dirs):
    out = []
    for d in dirs:
        out.append("== %s" % d)
        for root, subdirs, files in sorted(os.walk(d)):
            subdirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                try:
                    st = os.lstat(p)
                    with open(p, "rb") as fh:
                        data = fh.read(300)
                except OSError as exc:
                    out.append("%s  (%s)" % (p, exc.strerror))
                    continue
                shown = data.decode("utf-8", "replace").replace("\r\n", "\\r\\n").replace("\n", "\\n")
                out.append("%s  %d bytes  %o  %s" % (p, st.st_size, st.st_mode & 0o7777, shown[:160]))
    return "\n".join(out) + "\n"


def write_bundle(d, ctx, checks, rep):
    """Write what a bug report needs into ``d``; returns the file names."""
    import json
    import shutil
    os.makedirs(d, 0o700, exist_ok=True)
    files = {}

    def put(name, text):
        files[name] = text if isinstance(text, str) else text.decode("utf-8", "replace")

    from cnilib.ops import whois
    put("doctor.json", json.dumps(rep, indent=2) + "\n")
    put("doctor.txt", render(rep))
    put("whois.json", json.dumps(whois.to_json(ctx.node, ctx.node.rows), indent=2) + "\n")
    put("whois.txt", whois.render_table(ctx.node.rows))
    put("subnet.env", "".join("== %s\n%s" % (p, _read_text(p)) for p in ctx.subnet_files()))
    put("ipam.txt", _listing(ctx.loc.data_dirs))
    put("state.txt", _listing(ctx.loc.flannel_dirs + [os.path.join(ctx.loc.cache_dir, "results")]
                              + ctx.loc.tuning_dirs))
    put("nft-ruleset.txt", _run_text(["nft", "list", "ruleset"]))
    put("iptables-save.txt", _run_text(["iptables-save"]) + _run_text(["ip6tables-save"]))
    put("links.txt", _run_text(["ip", "-d", "link", "show"]) + _run_text(["ip", "addr", "show"])
        + _run_text(["bridge", "fdb", "show"]) + _run_text(["ip", "neigh", "show"]))
    put("routes.txt", _run_text(["ip", "route", "show", "table", "all"])
        + _run_text(["ip", "-6", "route", "show", "table", "all"]) + _run_text(["ip", "rule", "show"]))
    put("sysctl.txt", _sysctls())
    put("log-tail.txt", "".join("== %s\n%s" % (p, _tail(p)) for p in log_paths(ctx.args)))
    put("versions.txt", _versions())
    conf = os.path.join(d, "conflists")
    os.makedirs(conf, 0o700, exist_ok=True)
    for p, _n in ctx.loc.configs:
        if os.path.isfile(p):
            shutil.copyfile(p, os.path.join(conf, os.path.basename(p)))
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    names = sorted(files) + ["conflists/" + n for n in sorted(os.listdir(conf))]
    with open(os.path.join(d, "README.txt"), "w") as f:
        f.write("pycni doctor bundle: attach this directory to a bug report.\n\n"
                + "\n".join(names) + "\n")
    return ["README.txt"] + names


def _read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16).decode("utf-8", "replace")
    except OSError as exc:
        return "(%s)\n" % exc.strerror


def _sysctls():
    out = []
    for base in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding",
                 "/proc/sys/net/bridge"):
        paths = [base]
        if os.path.isdir(base):
            paths = [os.path.join(base, n) for n in sorted(os.listdir(base))]
        for p in paths:
            out.append("%s = %s" % (p[len("/proc/sys/"):].replace("/", "."), _read_text(p).strip()))
    try:
        ifs = sorted(os.listdir("/proc/sys/net/ipv4/conf"))
    except OSError:
        ifs = []
    for i in ifs:
        for k in ("rp_filter", "forwarding"):
            out.append("net.ipv4.conf.%s.%s = %s"
                       % (i, k, _read_text("/proc/sys/net/ipv4/conf/%s/%s" % (i, k)).strip()))
    return "\n".join(out) + "\n"


def _versions():
    from cnilib.cni import version
    u = os.uname()
    return ("pycni %s (CNI %s)\nkernel %s %s %s\npython %s\n" % (
        version.SUITE_VERSION, ", ".join(version.SUPPORTED), u.sysname, u.release, u.machine,
        sys.version.split()[0]))


# ====================================================================== command line

def _parser():
    import argparse
    p = argparse.ArgumentParser(
        prog="pycni doctor",
        description="Check this node's CNI setup (the current network namespace): each check "
                    "PASS / WARN / FAIL / SKIP with its evidence and the command that fixes it. "
                    "Reads only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="checks: %s\n\nExit status: 0 healthy, 1 a check failed, 2 could not run."
               % ", ".join(CHECK_IDS))
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema pycni-doctor/1)")
    p.add_argument("--bundle", metavar="DIR", help="also write a bug-report bundle into DIR")
    p.add_argument("--only", metavar="ID[,ID]", help="run only these checks")
    p.add_argument("--nodes", metavar="FILE", help="the fabric's node list (pycni fabric --nodes)")
    p.add_argument("--annotations", metavar="FILE",
                   help="node annotations as JSON (kubectl get nodes -o json, "
                        "or {node: {annotation: value}})")
    p.add_argument("--node", metavar="NAME", help="this node's name in --nodes / --annotations")
    p.add_argument("--log", metavar="FILE", help="the suite's log for the bundle (default $PYCNI_LOG, "
                                                 "%s)" % paths.LOG_FILE)
    nodestate.add_location_options(p, bin_dirs=True)
    return p


def main(argv):
    args = _parser().parse_args(argv)
    only = None
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in only if x not in CHECK_IDS]
        if unknown:
            sys.stderr.write("pycni doctor: unknown check %s; known: %s\n" % (", ".join(unknown),
                                                                            ", ".join(CHECK_IDS)))
            return 2
    try:
        loc = nodestate.locations_from_args(args)
        ctx = Context(args, loc)
    except OSError as exc:
        sys.stderr.write("pycni doctor: cannot read this node: %s (run it as root, in the node's "
                         "network namespace)\n" % exc)
        return 2
    try:
        checks = run_checks(ctx, only)
        rep = report(checks, loc, ctx.problems)
        if args.bundle:
            try:
                written = write_bundle(args.bundle, ctx, checks, rep)
            except OSError as exc:
                sys.stderr.write("pycni doctor: cannot write the bundle to %s: %s\n" % (args.bundle, exc))
                return 2
    finally:
        ctx.close()
    if args.json:
        import json
        sys.stdout.write(json.dumps(rep, indent=2) + "\n")
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        sys.stdout.write(render(rep, color))
        if args.bundle:
            sys.stdout.write("bundle: %d files in %s\n" % (len(written), args.bundle))
    return rep["exit"]
