"""A node for the chained plugins' tests (portmap, firewall): real namespaces,
containers attached by the Go reference bridge + host-local, real traffic.

    outside (10.77.0.2, fd77::2) --veth-- host (10.77.0.1, fd77::1)
                                           cni0 10.88.0.1 / fd88::1
                                            |- ctr1 eth0 10.88.0.x  (listener)
                                            |- ctr2 eth0 10.88.0.y  (hairpin client)

Every namespace is made by the test and deleted after it; the bridge and
host-local run under ``ip netns exec <host>`` with their state in a temp
dir, so the machine's root netns and CNI state are never touched.
"""

import json
import os
import subprocess
import sys

from cnitest import GO_CNI, run_plugin, sh

HOST4, HOST6 = "10.77.0.1", "fd77::1"
OUT4, OUT6 = "10.77.0.2", "fd77::2"
BRIDGE4 = "10.88.0.1"

# one listener for tcp and udp on both families: answers "<name> <peer ip>"
SERVER = r"""
import select, socket, sys
name, port = sys.argv[1], int(sys.argv[2])
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for s in (t, u):
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
t.listen(16)
print("ready", flush=True)
def peer(a):
    return a[0][7:] if a[0].startswith("::ffff:") else a[0]
while True:
    r, _, _ = select.select([t, u], [], [])
    try:
        if u in r:
            data, a = u.recvfrom(100)
            u.sendto(("%s %s\n" % (name, peer(a))).encode(), a)
        if t in r:
            c, a = t.accept()
            c.sendall(("%s %s\n" % (name, peer(a))).encode())
            c.close()
    except OSError:
        pass
"""

# prints the answer, or "ERR <what>"; bounded by its own timeout
CLIENT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sport = int(sys.argv[4]) if len(sys.argv) > 4 else 0
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[5]) if len(sys.argv) > 5 else 3)
try:
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
    s.connect((host, port))
    if proto == "udp":
        s.send(b"hi")
    print(s.recv(100).decode().strip())
except Exception as e:
    print("ERR %s" % type(e).__name__)
"""


class Node:
    """The sandbox host, an outside namespace, and containers on cni0."""

    def __init__(self, factory, tmp):
        self.tmp = str(tmp)
        self.host = factory()
        self.outside = factory()
        self.ctrs = {}
        self.results = {}
        self.servers = []
        self._factory = factory
        for ns in (self.host, self.outside):
            self._no_dad(ns)
        self.host.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        sh("ip", "-n", self.host.name, "link", "add", "vout", "type", "veth", "peer", "name", "eth0",
           "netns", self.outside.name)
        for ns, dev, a4, a6, gw4, gw6 in ((self.host, "vout", HOST4, HOST6, None, None),
                                          (self.outside, "eth0", OUT4, OUT6, HOST4, HOST6)):
            ns.run("ip", "addr", "add", a4 + "/24", "dev", dev)
            ns.run("ip", "addr", "add", a6 + "/64", "dev", dev, "nodad")
            ns.run("ip", "link", "set", dev, "up")
            if gw4:
                ns.run("ip", "route", "add", "default", "via", gw4)
                ns.run("ip", "-6", "route", "add", "default", "via", gw6)

    @staticmethod
    def _no_dad(ns):
        ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")

    def bridge_conf(self, name="pmnet"):
        return {"cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": "cni0",
                "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": os.path.join(self.tmp, "ipam"),
                         "ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]],
                         "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}

    def attach(self, cid):
        """A container attached to cni0 by the Go bridge; returns its 1.0.0 result."""
        ns = self._factory()
        self._no_dad(ns)
        r = run_plugin(os.path.join(GO_CNI, "bridge"), "ADD", self.bridge_conf(), containerid=cid,
                       netns=ns.path, ifname="eth0", path=GO_CNI, host_netns=self.host.name)
        assert r.rc == 0, r
        self.ctrs[cid], self.results[cid] = ns, r.json
        return r.json

    def ip(self, cid, fam=4):
        for ip in self.results[cid]["ips"]:
            a = ip["address"].split("/")[0]
            if (":" in a) == (fam == 6):
                return a
        raise KeyError(fam)

    def serve(self, cid, port=80):
        p = subprocess.Popen(["ip", "netns", "exec", self.ctrs[cid].name, sys.executable, "-c", SERVER,
                              cid, str(port)], stdout=subprocess.PIPE, text=True)
        self.servers.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    def ask(self, ns, proto, host, port, sport=0, timeout=3):
        """What a client in ``ns`` (a Netns) gets from host:port."""
        out = ns.run(sys.executable, "-c", CLIENT, proto, host, port, sport, timeout, check=False).stdout
        return out.strip()

    def ruleset(self):
        """Everything in the host's packet filter, as text."""
        nft = self.host.run("nft", "-s", "list", "ruleset", check=False).stdout
        ipt = "".join(self.host.run(c, "-t", t, check=False).stdout
                      for c in ("iptables-save", "ip6tables-save") for t in ("nat", "filter"))
        keep = [ln for ln in (nft + ipt).splitlines() if not ln.startswith("#")]
        return "\n".join(keep)

    def close(self):
        for p in self.servers:
            p.kill()
            p.wait()
        for cid, ns in self.ctrs.items():
            run_plugin(os.path.join(GO_CNI, "bridge"), "DEL", self.bridge_conf(), containerid=cid,
                       netns=ns.path, ifname="eth0", path=GO_CNI, host_netns=self.host.name)


def chained_conf(plugin_type, prev, version="1.0.0", name="pmnet", **kw):
    c = {"cniVersion": version, "name": name, "type": plugin_type}
    if prev is not None:
        c["prevResult"] = prev
    c.update(kw)
    return c


def dumps(obj):
    return json.dumps(obj, sort_keys=True)
