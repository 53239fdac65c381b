"""What the checks read, each piece once (``Context``), and the config
helpers more than one check group needs."""

import ipaddress
import os

from cnilib.base import paths

# the two iptables backends: both hook into the kernel at once when both hold rules
IPT_BACKENDS = ("iptables-nft", "iptables-legacy")


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


def ipt_default_backend(which=None):
    """The backend plain ``iptables-save`` (and ``iptables``) is on this node:
    "iptables-nft", "iptables-legacy", or None when iptables is not installed.
    Debian's alternatives point it at xtables-nft-multi or -legacy-multi;
    iptables before 1.8 (iptables-multi, xtables-multi) is legacy only."""
    if which is None:
        from cnilib.base import proc
        which = proc.which
    exe = which("iptables-save")
    if exe is None:
        return None
    real = os.path.basename(os.path.realpath(exe))
    return "iptables-nft" if "nft" in real else "iptables-legacy"


def parse_kernel_release(text):
    """(major, minor, patch) of a kernel release ('5.4.0-150-generic',
    '3.10.0-1160.el7.x86_64', '6.18.44-fc'), or None."""
    import re
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def flannel_networks(loc):
    """[(network, plugin conf)] of the configs using the flannel plugin."""
    return [(n, p) for n in loc.networks() for p in n.plugins if p.get("type") == "flannel"]


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


class Context:
    """What the checks read, each piece once."""

    def __init__(self, args, loc):
        from cnilib.kernel import netlink
        from cnilib.kernel.route import addrs
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
        self.addrs = addrs(self.nl)
        self._envs = {}
        self._vxlan = self._fdb = self._neigh = self._backends = None
        self.ipt_default = None

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
            from cnilib.kernel.link import link_get
            from cnilib.kernel.vxlan import vxlan_info
            self._vxlan = []
            for name in ("flannel.1", "flannel-v6.1"):
                if name in self.by_name:
                    info = vxlan_info(link_get(self.nl, name))
                    if info is not None:
                        self._vxlan.append((self.by_name[name], info))
        return self._vxlan

    def fdb(self, index):
        """The vxlan device's fdb entries that name a remote (one dump per run)."""
        if self._fdb is None:
            from cnilib.kernel.route import neighs
            self._fdb = [n for n in neighs(self.nl, 0, self.netlink.AF_BRIDGE) if n.dst]
        return [n for n in self._fdb if n.index == index]

    def neighbours_all(self):
        """Every IPv4 and IPv6 neighbour entry of this netns (one dump per run)."""
        if self._neigh is None:
            from cnilib.kernel.route import neighs
            self._neigh = neighs(self.nl)
        return self._neigh

    def neighbours(self, index):
        """IPv4 and IPv6 neighbour entries of link ``index``."""
        return [n for n in self.neighbours_all() if n.index == index]

    def opt(self, name, default=None):
        """A command-line option, or ``default`` when this doctor has no such option."""
        v = getattr(self.args, name, None)
        return default if v is None else v

    def ipt_backends(self):
        """[(backend, {family: {table: IptTable}})] of the iptables backends
        installed here ("iptables-nft", "iptables-legacy"), each read with its
        own ``-save``: the kernel runs both rule sets, whatever ``iptables``
        points at.  The backend plain ``iptables-save`` is was read already
        (``node.ipt``) and is not read twice.  What cannot be read goes to
        ``problems``; a backend that is not installed is left out."""
        if self._backends is not None:
            return self._backends
        from cnilib.base import proc
        from cnilib.ops import rulesets
        self.ipt_default = ipt_default_backend()
        out = []
        for b in IPT_BACKENDS:
            if b == self.ipt_default:
                out.append((b, dict(self.node.ipt)))
                continue
            fams = {}
            for fam, tool in ((4, "iptables"), (6, "ip6tables")):
                exe = tool + b[len("iptables"):] + "-save"
                try:
                    r = proc.run([exe], timeout=30)
                except FileNotFoundError:
                    continue
                except (OSError, TimeoutError) as exc:
                    self.problems.append("%s: %s" % (exe, exc))
                    continue
                if r.rc != 0:
                    self.problems.append("%s failed (exit %d): %s" % (exe, r.rc, r.err_text(200)))
                    continue
                fams[fam] = rulesets.parse_save(r.out.decode("utf-8", "replace"))
            if fams:
                out.append((b, fams))
        self._backends = out
        return out

    def ipt_tool(self, backend, family=4):
        """The command that writes ``backend``'s rules: plain ``iptables`` when
        it is the node's default, else ``iptables-legacy`` / ``iptables-nft``."""
        tool = "iptables" if family == 4 else "ip6tables"
        if backend in (None, "iptables") or backend == self.ipt_default or not backend.startswith("iptables"):
            return tool
        return tool + backend[len("iptables"):]

    def kernel_release(self):
        """(text, (major, minor, patch) or None): --kernel-version when given
        (judge another kernel), else this one's."""
        text = self.opt("kernel_version") or os.uname().release
        return text, parse_kernel_release(text)

    def route(self, dst):
        from cnilib.kernel.route import route_get
        try:
            return route_get(self.nl, dst)
        except OSError:
            return None

    def routes(self):
        from cnilib.kernel.route import routes
        try:
            return routes(self.nl)
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


def process_running(comm):
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

