"""Network namespaces and temp dirs for one benchmark run.

Every variant gets a host netns of its own (its bridge, veths and rules
never meet another variant's) and a pool of container netns.  Names carry
the orchestrator's pid (``pcbench<pid>-...``) so a later run can sweep what
a killed run left behind.  Nothing here enters a namespace: commands run
through ``ip -n`` / ``ip netns exec``.
"""

import json
import os
import subprocess

PREFIX = "pcbench"
NETNS_DIR = "/var/run/netns"


def _batch(lines):
    """Run ``ip`` commands in one process; keep going past failures."""
    if not lines:
        return
    subprocess.run(["ip", "-force", "-batch", "-"], input="".join(line + "\n" for line in lines),
                   text=True, capture_output=True, check=False)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale():
    """Delete namespaces left by benchmark runs whose process is gone."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return 0
    stale = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            stale.append(name)
    _batch(["netns del " + n for n in stale])
    return len(stale)


class Sandboxes:
    """The namespaces of this run; ``close()`` deletes all of them."""

    def __init__(self):
        self.base = "%s%d" % (PREFIX, os.getpid())
        self.made = []
        self.pools = {}

    def name(self, *parts):
        return "-".join((self.base,) + tuple(str(p) for p in parts))

    @staticmethod
    def path(name):
        return os.path.join(NETNS_DIR, name)

    def create(self, names, lo_up=True):
        names = [n for n in names if n not in self.made]
        self.made.extend(names)
        lines = ["netns add " + n for n in names]
        if lo_up:
            lines += ["-n %s link set lo up" % n for n in names]
        _batch(lines)
        missing = [n for n in names if not os.path.exists(self.path(n))]
        if missing:
            raise RuntimeError("could not create network namespaces: %s" % ", ".join(missing[:5]))
        return [self.path(n) for n in names]

    def host(self, variant):
        """The host netns a variant's plugins run in."""
        n = self.name(variant)
        self.create([n])
        return n

    def containers(self, variant, count):
        """Paths of ``count`` container netns for a variant (a pool that grows)."""
        pool = self.pools.setdefault(variant, [])
        if len(pool) < count:
            new = [self.name(variant, "c%d" % i) for i in range(len(pool), count)]
            pool.extend(self.create(new, lo_up=False))
        return pool[:count]

    def close(self):
        _batch(["netns del " + n for n in reversed(self.made)])
        self.made = []
        self.pools = {}


def run_in(netns, argv, check=False, input=None):
    p = subprocess.run(["ip", "netns", "exec", netns] + list(argv), capture_output=True,
                       text=True, check=check, input=input)
    return p


# ---- what a workload left behind

def _nft_items(netns):
    p = run_in(netns, ["nft", "-j", "list", "ruleset"])
    if p.returncode != 0:
        return []
    items = []
    for obj in json.loads(p.stdout or "{}").get("nftables", []):
        if "table" in obj:
            t = obj["table"]
            items.append("table %s %s" % (t["family"], t["name"]))
        elif "chain" in obj:
            c = obj["chain"]
            items.append("chain %s %s %s" % (c["family"], c["table"], c["name"]))
        elif "rule" in obj:
            r = obj["rule"]
            items.append("rule %s %s %s %s" % (r["family"], r["table"], r["chain"],
                                               json.dumps(r.get("expr"), sort_keys=True)))
        elif "set" in obj or "map" in obj:
            s = obj.get("set") or obj.get("map")
            items.append("set %s %s %s %s" % (s["family"], s["table"], s["name"],
                                              json.dumps(s.get("elem"), sort_keys=True)))
    return items


def _iptables_items(netns):
    items = []
    for tool in ("iptables-save", "ip6tables-save"):
        p = run_in(netns, [tool])
        for line in p.stdout.splitlines():
            if line.startswith("-A "):
                items.append("%s %s" % (tool, line))
            elif line.startswith(":"):
                items.append("%s %s" % (tool, line.split()[0]))
    return items


def _files(root):
    out = []
    if not root or not os.path.isdir(root):
        return out
    for d, _dirs, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return out


def snapshot(netns, dirs):
    """The objects a pod's ADD can leave in a variant's host netns and dirs.

    ``dirs``: {"leases": host-local dataDir of the network, "state": [...],
    "cache": libcni cache dir}.
    """
    p = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "type", "veth"],
                       capture_output=True, text=True)
    veths = [line.split(":")[1].strip().split("@")[0] for line in p.stdout.splitlines() if ":" in line]
    state = []
    for d in dirs.get("state", ()):
        state += _files(d)
    return {
        "veths": veths,
        "leases": _files(dirs.get("leases")),
        "nft": _nft_items(netns),
        "iptables": _iptables_items(netns),
        "state": state,
        "cache": _files(dirs.get("cache")),
    }
