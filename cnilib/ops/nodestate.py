"""What a node holds for its CNI attachments, layer by layer, read-only.

``pycni whois`` and ``pycni doctor`` read the same layers, each file format
through the tolerant reader its writer's module keeps beside the writer:

  configs   the network configs in the conf dir (cnilib.ops.runner.load_all),
            which also name the state dirs their plugins use (``Locations``);
  cache     libcni's result cache (cnilib.ops.resultcache.read_cache);
  leases    host-local's lease files (cnilib.ipam.store.read_leases);
  saved     flannel's delegate configs (cnilib.flannel.read_all_saved);
  tuning    the tuning plugin's saved originals (cnilib.tuning.read_backups);
  links     one netlink dump: host veths with their peer ifindex, the peer's
            netns id and the ifalias naming the attachment
            (cnilib.firewall.naming.veth_alias);
  netns     the named netns under /var/run/netns and, for ids no name
            explains, /proc/<pid>/ns/net, each mapped to the id this netns
            gave it (RTM_GETNSID);
  rules     ``nft -j list ruleset`` (the elements and chains of the suite's
            shared tables, keyed by their comments, and the previous design's
            tables pycni-<kind>-<net hash>-<attachment hash>) and ``iptables-save``
            (the reference chains CNI-<hash>, CNI-DN-<hash>, the firewall
            plugin's commented CNI-FORWARD rules), every name read by the
            parser beside its builder (cnilib.firewall.naming, .forward).

This module holds what is nobody's format: where the state lives, the
netns and link maps, and the rules grouped per attachment.  Nothing here
writes, creates or locks anything: a node in trouble is read as it is.
Each reader returns what it could read and records what it could not in
``problems``, so one unreadable layer does not hide the others.
"""

import os

from cnilib.base import errors, fsutil, jsonio, paths

_KIND_NAMES = {"hp": "portmap", "masq": "bridge ipMasq", "fw": "firewall", "spoof": "macspoofchk"}
_GO_CHAIN_KINDS = {"CNI-": "masq", "CNI-DN-": "hp"}


def _uniq(items):
    out = []
    for i in items:
        if i and i not in out:
            out.append(i)
    return out


# ====================================================================== locations

class Locations:
    """Where the node's state lives: the options given, plus every directory
    a network config in the conf dir names (a runtime would use those)."""

    def __init__(self, conf_dir=paths.CONF_DIR, data_dirs=None, flannel_dirs=None,
                 cache_dir=None, subnet_files=None, tuning_dirs=None, bin_dirs=None):
        def pick(given, default):
            return _uniq(given if given is not None else default)
        self.conf_dir = conf_dir
        self.data_dirs = pick(data_dirs, [paths.HOST_LOCAL_DIR])
        self.flannel_dirs = pick(flannel_dirs, [paths.FLANNEL_DIR])
        self.cache_dir = cache_dir or os.environ.get("PYCNI_CACHE_DIR") or paths.CACHE_DIR
        self.subnet_files = pick(subnet_files, [])
        self.explicit_subnet = bool(subnet_files)
        self.tuning_dirs = pick(tuning_dirs, [paths.TUNING_DIR])
        self.bin_dirs = pick(bin_dirs, list(paths.BIN_DIRS))
        self.configs = []          # [(path, NetworkList or CniError)]

    @classmethod
    def of_network(cls, net, conf_dir, cache_dir):
        """Only the dirs ``net``'s own plugins use (what its GC would look at)."""
        loc = cls(conf_dir, [], [], cache_dir, [], [], [])
        loc.configs = [(net.source, net)]
        for p in net.plugins:
            loc._add_plugin_dirs(p)
        return loc

    def load_configs(self):
        """Read the conf dir and add the state dirs its configs name."""
        from cnilib.ops import runner
        try:
            self.configs = runner.load_all(self.conf_dir)
        except errors.CniError as exc:
            self.configs = [(self.conf_dir, exc)]
        for _path, net in self.configs:
            if isinstance(net, errors.CniError):
                continue
            for p in net.plugins:
                self._add_plugin_dirs(p)
        return self.configs

    def _add_plugin_dirs(self, p):
        t = p.get("type")
        ipam = p.get("ipam") if isinstance(p.get("ipam"), dict) else {}

        def s(d, k):
            v = d.get(k)
            return v if isinstance(v, str) and v else None
        if t == "flannel":
            self.flannel_dirs = _uniq(self.flannel_dirs + [s(p, "dataDir") or paths.FLANNEL_DIR])
            self.subnet_files = _uniq(self.subnet_files + [s(p, "subnetFile") or paths.FLANNEL_SUBNET_FILE])
            self.data_dirs = _uniq(self.data_dirs + [s(ipam, "dataDir") or paths.HOST_LOCAL_DIR])
        elif ipam.get("type") == "host-local":
            self.data_dirs = _uniq(self.data_dirs + [s(ipam, "dataDir") or paths.HOST_LOCAL_DIR])
        elif t == "tuning":
            self.tuning_dirs = _uniq(self.tuning_dirs + [s(p, "dataDir") or paths.TUNING_DIR])

    def networks(self):
        """The configs that loaded, as NetworkList."""
        return [n for _, n in self.configs if not isinstance(n, errors.CniError)]

    def as_dict(self):
        return {"confDir": self.conf_dir, "binDirs": self.bin_dirs, "dataDirs": self.data_dirs,
                "flannelDirs": self.flannel_dirs, "cacheDir": self.cache_dir,
                "subnetFiles": self.subnet_files, "tuningDirs": self.tuning_dirs}


def add_location_options(p, bin_dirs=False):
    """The state-location options shared by whois and doctor."""
    p.add_argument("--conf-dir", default=paths.CONF_DIR,
                   help="network configs (default %s); the dirs they name are read too" % paths.CONF_DIR)
    p.add_argument("--data-dir", action="append", metavar="DIR",
                   help="host-local dataDir (repeatable; default %s)" % paths.HOST_LOCAL_DIR)
    p.add_argument("--flannel-dir", action="append", metavar="DIR",
                   help="flannel dataDir (repeatable; default %s)" % paths.FLANNEL_DIR)
    p.add_argument("--cache-dir", default=None,
                   help="libcni cache dir ($PYCNI_CACHE_DIR, default %s)" % paths.CACHE_DIR)
    p.add_argument("--subnet-file", action="append", metavar="FILE",
                   help="flannel subnet.env (repeatable; default: what flannel configs name, "
                        "else %s)" % paths.FLANNEL_SUBNET_FILE)
    p.add_argument("--tuning-dir", action="append", metavar="DIR",
                   help="tuning dataDir (repeatable; default %s)" % paths.TUNING_DIR)
    if bin_dirs:
        p.add_argument("--bin-dir", default=None, metavar="DIR[:DIR]",
                       help="plugin dirs (default %s)" % ":".join(paths.BIN_DIRS))


def locations_from_args(args):
    bins = getattr(args, "bin_dir", None)
    loc = Locations(args.conf_dir, args.data_dir, args.flannel_dir, args.cache_dir,
                    args.subnet_file, args.tuning_dir,
                    [d for d in bins.split(":") if d] if bins else None)
    loc.load_configs()
    return loc


# ====================================================================== netns

class NetnsRef:
    """A netns found by name or by a process: ``path`` to enter it with."""

    __slots__ = ("path", "name", "pid", "comm", "nsid", "ino")

    def __init__(self, path, ino, nsid=None, name=None, pid=None, comm=None):
        self.path, self.ino, self.nsid, self.name, self.pid, self.comm = path, ino, nsid, name, pid, comm

    def label(self):
        if self.name:
            return self.path
        if self.pid:
            return "%s (pid %d %s)" % (self.path, self.pid, self.comm or "?")
        return self.path


def _ns_ino(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def own_netns():
    return _ns_ino("/proc/thread-self/ns/net")


def netns_by_name(problems):
    """[NetnsRef] for the names under /var/run/netns (ids not looked up yet)."""
    out = []
    for n in fsutil.try_listdir(paths.NETNS_DIR, problems):
        p = os.path.join(paths.NETNS_DIR, n)
        ino = _ns_ino(p)
        if ino is not None:
            out.append(NetnsRef(p, ino, name=n))
    return out


def netns_by_pid(skip_inos):
    """[NetnsRef] of one process per netns not in ``skip_inos``."""
    out, seen = [], set(skip_inos)
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in sorted(pids):
        p = "/proc/%d/ns/net" % pid
        ino = _ns_ino(p)
        if ino is None or ino in seen:
            continue
        seen.add(ino)
        try:
            with open("/proc/%d/comm" % pid) as f:
                comm = f.read().strip()
        except OSError:
            comm = None
        out.append(NetnsRef(p, ino, pid=pid, comm=comm))
    return out


def assign_nsids(nl, refs):
    """Fill ``ref.nsid`` with the id this netns gave each one (None: no id)."""
    from cnilib.kernel import netns
    from cnilib.kernel.link import netns_id
    for r in refs:
        try:
            fd = netns.open_netns(r.path)     # checked to be nsfs: a FIFO there would hang
        except (OSError, netns.NetNSGone, errors.CniError):
            continue
        try:
            r.nsid = netns_id(nl, fd)
        except OSError:
            r.nsid = None
        finally:
            os.close(fd)


def map_netns(nl, wanted, problems):
    """({nsid: NetnsRef}, [all refs]) for the ids in ``wanted``: names first,
    then one process per remaining netns (only if an id is still unexplained)."""
    own = own_netns()
    refs = [r for r in netns_by_name(problems) if r.ino != own]
    assign_nsids(nl, refs)
    by_id = {}
    for r in refs:
        if r.nsid is not None:
            by_id.setdefault(r.nsid, r)
    if set(wanted) - set(by_id):
        more = netns_by_pid({r.ino for r in refs} | {own})
        assign_nsids(nl, more)
        for r in more:
            if r.nsid is not None and r.nsid not in by_id:
                by_id[r.nsid] = r
        refs += more
    return by_id, refs


def netns_alive(path):
    """True when ``path`` opens as a network namespace."""
    if not path:
        return False
    from cnilib.kernel import netns
    try:
        fd = netns.open_netns(path)
    except (netns.NetNSGone, errors.CniError):
        return False
    os.close(fd)
    return True


class PeerIf:
    __slots__ = ("name", "index", "mtu", "ips", "mac")

    def __init__(self, name, index, mtu, ips, mac):
        self.name, self.index, self.mtu, self.ips, self.mac = name, index, mtu, ips, mac


def peer_if(path, index):
    """The interface ``index`` inside the netns at ``path`` (its name, MTU and
    global addresses), or None."""
    from cnilib.kernel import netlink, netns
    from cnilib.kernel.link import link_get
    from cnilib.kernel.route import link_addrs
    try:
        fd = netns.open_netns(path)
    except (netns.NetNSGone, errors.CniError):
        return None
    try:
        nl = netlink.Netlink.in_netns(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        link = link_get(nl, index=index)
        if link is None:
            return None
        ips = ["%s/%d" % (a.address, a.prefixlen) for a in link_addrs(nl, index)
               if a.scope == netlink.RT_SCOPE_UNIVERSE]
        return PeerIf(link.name, index, link.mtu, ips, link.mac)
    except OSError:
        return None
    finally:
        nl.close()


# ====================================================================== rules

class RuleGroup:
    """The rules of one attachment in one place: an nft table of ours, a
    reference iptables chain, or the firewall plugin's commented rules.

    ``att_hash`` / ``go_chain`` key it (the one that applies); ``network``,
    ``cid``, ``ifname`` are what its comments say, when they say it;
    ``ports`` are hostPort mappings [(proto, hostIP or None, hostPort, podIP, podPort)];
    ``delete`` the commands (argv lists) that remove it; ``table`` (family,
    name) for an nft table."""

    __slots__ = ("kind", "where", "att_hash", "net_hash", "go_chain", "network", "cid", "ifname",
                 "ports", "delete", "table")

    def __init__(self, kind, where, delete):
        self.kind, self.where, self.delete = kind, where, delete
        self.att_hash = self.net_hash = self.go_chain = self.table = None
        self.network = self.cid = self.ifname = None
        self.ports = []

    @property
    def what(self):
        return _KIND_NAMES.get(self.kind, self.kind)


def _nft_dnat_ports(chain):
    """hostPort mappings from the DNAT rules of an nft ``hostports`` chain."""
    out = []
    for r in chain.rules if chain is not None else ():
        proto = hport = hip = None
        dnat = None
        for e in r.get("expr", ()):
            m = e.get("match") if isinstance(e, dict) else None
            if m:
                left = m.get("left") or {}
                pl = left.get("payload") if isinstance(left, dict) else None
                if pl and pl.get("field") == "dport":
                    proto, hport = pl.get("protocol"), m.get("right")
                elif pl and pl.get("field") == "daddr":
                    hip = m.get("right") if isinstance(m.get("right"), str) else None
            elif isinstance(e, dict) and "dnat" in e:
                dnat = e["dnat"] or {}
        if dnat and isinstance(hport, int):
            out.append((proto, hip, hport, dnat.get("addr"), dnat.get("port")))
    return out


def nft_rule_groups(chains):
    """RuleGroups for our per-attachment nft tables in a parsed ruleset."""
    from cnilib.firewall import naming
    out = []
    for (fam, tname), table in sorted(chains.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")):
        got = naming.parse_attachment_table(tname)
        if got is None or got[0] not in _KIND_NAMES:
            continue
        g = RuleGroup(got[0], "nft %s %s" % (fam, tname), [["nft", "delete", "table", fam, tname]])
        g.net_hash, g.att_hash, g.table = got[1], got[2], (fam, tname)
        if g.kind == "hp":
            g.ports = _nft_dnat_ports(table.get("hostports"))
        out.append(g)
    return out


_SHARED_TABLES = {"pycni-masq": "masq", "pycni-hostport": "hp", "pycni-fw": "fw", "pycni-spoof": "spoof"}


def nft_shared_groups(items, chains):
    """RuleGroups for the attachments in the suite's shared tables
    (cnilib.firewall.shared): the set elements whose comment names one, and
    portmap's chain hp-<key>, grouped by that key.  A portmap group's ports
    are the DNAT rules of its chain that a dispatch element still sends
    traffic to (a taken-over hostPort is no longer its)."""
    from cnilib.firewall import naming, shared
    groups, dispatched = {}, {}

    def group(fam, tname, key, comment):
        g = groups.get((fam, tname, key))
        if g is None:
            g = RuleGroup(_SHARED_TABLES[tname], "nft %s %s %s" % (fam, tname, key), [])
            g.net_hash, g.att_hash = key.split("-")
            groups[(fam, tname, key)] = g
        if g.cid is None:
            said = naming.comment_names(comment)
            g.network, g.cid, g.ifname = said.get("net"), said.get("id"), said.get("if")
        return g
    hp_chains = []
    for it in items or ():
        c = it.get("chain") if isinstance(it, dict) else None
        if isinstance(c, dict) and c.get("table") == "pycni-hostport":
            key = naming.chain_key("hp", c.get("name") or "")
            if key:
                hp_chains.append((c, key))
        s = (it.get("set") or it.get("map")) if isinstance(it, dict) else None
        if not isinstance(s, dict) or s.get("table") not in _SHARED_TABLES:
            continue
        fam, tname = s.get("family"), s["table"]
        types = s.get("type") if isinstance(s.get("type"), list) else [s.get("type")]
        for e in s.get("elem") or ():
            val, target = (e[0], e[1]) if isinstance(e, list) and len(e) == 2 else (e, None)
            if not (isinstance(val, dict) and "elem" in val):
                continue
            comment, val = val["elem"].get("comment"), val["elem"].get("val")
            key = naming.comment_key(comment)
            if not key:
                continue
            g = group(fam, tname, key, comment)
            g.delete.append(["nft", "delete", "element", fam, tname, s["name"],
                             "{ %s }" % shared._elem_text(val, types)])
            jump = (target or {}).get("jump", {}).get("target") if isinstance(target, dict) else None
            parts = val.get("concat") if isinstance(val, dict) else None
            if jump and parts and s["name"].startswith(("ports", "hostip")):
                hip = parts[0] if len(parts) == 3 else None
                dispatched.setdefault(jump, set()).add((parts[-2], hip, parts[-1]))
    for c, key in hp_chains:
        g = group(c["family"], c["table"], key, c.get("comment"))
        g.delete.append(["nft", "delete", "chain", c["family"], c["table"], c["name"]])
        routed = dispatched.get(c["name"], set())
        g.ports = [p for p in _nft_dnat_ports((chains.get((c["family"], c["table"])) or {}).get(c["name"]))
                   if (p[0], p[1], p[2]) in routed]
    return sorted(groups.values(), key=lambda g: g.where)


def parse_table_comment(text):
    """{net, id, if} from the text of ``nft list table`` (our comment), or {}."""
    from cnilib.firewall import naming
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("comment \"pycni "):
            return naming.comment_names(line[len("comment \""):].rstrip('";'))
    return {}


def _dnat_ports(rules):
    out = []
    for line in rules:
        toks = line.split()
        if "DNAT" not in toks or "--to-destination" not in toks:
            continue
        proto = toks[toks.index("-p") + 1] if "-p" in toks else None
        port = toks[toks.index("--dport") + 1] if "--dport" in toks else None
        hip = toks[toks.index("-d") + 1].split("/")[0] if "-d" in toks else None
        dest = toks[toks.index("--to-destination") + 1]
        ip, _, pport = dest.rpartition(":")
        ip = ip.strip("[]")
        try:
            out.append((proto, hip, int(port), ip, int(pport)))
        except (TypeError, ValueError):
            continue
    return out


def _comment(rule):
    """The --comment of an iptables rule (IptRule), quoting undone, or None."""
    toks = rule.tokens
    i = toks.index("--comment") if "--comment" in toks else -1
    return toks[i + 1] if 0 <= i < len(toks) - 1 else None


def _rule_args(line):
    """'-A CHAIN args...' -> ['CHAIN', args...] with iptables-save's quoting undone."""
    from cnilib.firewall import iptables
    return iptables.split(line)[1:]


def ipt_rule_groups(family, tables):
    """RuleGroups from one family's parsed iptables-save (cnilib.ops.rulesets.parse_save)."""
    from cnilib.firewall import forward, naming
    out = []
    tool = "iptables" if family == 4 else "ip6tables"
    nat = tables.get("nat")
    if nat is not None:
        jumps = {}
        for chain in ("POSTROUTING", "CNI-HOSTPORT-DNAT"):
            for r in nat.chains.get(chain, ()):
                said = naming.parse_go_comment(_comment(r))
                if said and r.target:
                    jumps[r.target] = said
        for name, rules in sorted(nat.chains.items()):
            kind = _GO_CHAIN_KINDS.get(naming.go_chain_prefix(name))
            if kind is None:
                continue
            delete = [[tool, "-t", "nat", "-D"] + _rule_args(r.line)
                      for c in nat.chains.values() for r in c if r.target == name]
            g = RuleGroup(kind, "%s -t nat %s" % (tool, name),
                          delete + [[tool, "-t", "nat", "-F", name], [tool, "-t", "nat", "-X", name]])
            g.go_chain = name
            g.network, g.cid = jumps.get(name, (None, None))
            if kind == "hp":
                g.ports = _dnat_ports([r.line for r in rules])
            out.append(g)
    flt = tables.get("filter")
    if flt is not None:
        groups = {}
        for r in flt.chains.get("CNI-FORWARD", ()):
            said = forward.parse_comment(_comment(r))
            if said is None:
                continue
            nh, ah, names = said
            g = groups.get(ah)
            if g is None:
                g = RuleGroup("fw", "%s -t filter CNI-FORWARD (comment pycni fw %s-%s)" % (tool, nh, ah), [])
                g.net_hash, g.att_hash = nh, ah
                g.network, g.cid, g.ifname = names.get("net"), names.get("id"), names.get("if")
                groups[ah] = g
            g.delete.append([tool, "-t", "filter", "-D"] + _rule_args(r.line))
        out += list(groups.values())
    return out


# ====================================================================== the kernel side

def read_rules(problems, nft_items=None, ipt_saves=None):
    """(nft chains, {family: iptables tables}, raw) of the current netns, from
    one ``nft -j list ruleset`` and one ``iptables-save`` per family.
    ``raw["unread"]`` maps each source that failed ("nft", 4, 6) to why; a
    tool that is not installed is not a failure (nothing made rules with it)."""
    from cnilib.base import proc
    from cnilib.ops import rulesets
    raw = {"unread": {}}

    def failed(key, text):
        text = " ".join(text.split())
        raw["unread"][key] = text
        problems.append(text)
    if nft_items is None:
        nft_items = []
        try:
            r = proc.run(["nft", "-j", "list", "ruleset"], timeout=30)
            if r.rc == 0:
                nft_items = jsonio.loads(r.out or b"{}").get("nftables", [])
                raw["nft"] = r.out
            else:
                failed("nft", "nft -j list ruleset failed (exit %d): %s" % (r.rc, r.err_text(200)))
        except FileNotFoundError:
            problems.append("nft is not installed: nftables rules not read")
        except (OSError, TimeoutError, ValueError) as exc:
            failed("nft", "nft -j list ruleset: %s" % exc)
    chains, _comments = rulesets.parse_ruleset(nft_items)
    raw["nft_items"] = nft_items
    ipt = {}
    if ipt_saves is None:
        ipt_saves = {}
        for fam, exe in ((4, "iptables-save"), (6, "ip6tables-save")):
            try:
                r = proc.run([exe], timeout=30)
            except FileNotFoundError:
                problems.append("%s is not installed: its rules not read" % exe)
                continue
            except (OSError, TimeoutError) as exc:
                failed(fam, "%s: %s" % (exe, exc))
                continue
            if r.rc != 0:
                failed(fam, "%s failed (exit %d): %s" % (exe, r.rc, r.err_text(200)))
                continue
            ipt_saves[fam] = r.out.decode("utf-8", "replace")
    for fam, text in ipt_saves.items():
        ipt[fam] = rulesets.parse_save(text)
    raw["iptables"] = ipt_saves
    return chains, ipt, raw


def nft_table_text(family, name):
    from cnilib.base import proc
    try:
        r = proc.run(["nft", "list", "table", family, name], timeout=15)
    except (OSError, TimeoutError):
        return ""
    return r.out.decode("utf-8", "replace") if r.rc == 0 else ""
