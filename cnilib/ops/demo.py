"""``pycni demo``: two flannel nodes in throwaway namespaces, pods pinging across.

What it does, in the order the seed article walks through it:

1. two "nodes" (network namespaces) joined by an underlay veth, 192.0.2.1
   and 192.0.2.2, MTU 1500;
2. ``pycni fabric up`` on each: flannel.1 (VXLAN VNI 1, UDP 8472), routes,
   neighbours and fdb entries for the peer, flanneld's rules, subnet.env;
3. two pods per node attached with ``pycni add cbr0 <netns>`` through
   conf/10-flannel.conflist (flannel -> bridge -> host-local, then portmap),
   one of them publishing hostPort 8080;
4. pod-to-pod pings across the nodes, the VXLAN hop captured on the
   underlay, a full-size don't-fragment ping, and the hostPort reached from
   a pod on the other node;
5. ``pycni del`` of every pod, ``fabric down``, and the namespaces deleted.

Nothing is written to the machine's /run/flannel, /var/lib/cni or
/etc/cni: every node gets its own subnet file, state dirs, result cache and
conflist copy under one temp dir (the nodes share this filesystem), and the
root network namespace is left as it was.  Everything is undone on failure
or Ctrl-C.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from cnilib.base import paths

NETWORK = "10.244.0.0/16"
NODES = [("node1", "192.0.2.1", "10.244.1.0/24"), ("node2", "192.0.2.2", "10.244.2.0/24")]
HOSTPORT = 8080


class DemoError(Exception):
    pass


def _here():
    """The directory of the running pycni, which holds the plugins too."""
    return os.path.dirname(os.path.realpath(sys.argv[0] if sys.argv and sys.argv[0] else __file__))


def _conflist_path(plugin_dir):
    for cand in (os.path.join(plugin_dir, "..", "..", "conf", "10-flannel.conflist"),
                 os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "conf", "10-flannel.conflist")):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    raise DemoError("conf/10-flannel.conflist not found next to the suite")


# -- a listener and a client inside pod namespaces, without a python binary
# (the bundle form has none): forked children that setns into the pod

def _fork_in_netns(netns_name, fn, *args, out_fd=None):
    from cnilib.kernel import netns
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fd = netns.open_netns(os.path.join(paths.NETNS_DIR, netns_name))
            netns.setns(fd)
            fn(out_fd, *args)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return pid


def _reap(pid):
    import signal
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _run_in_netns(netns_name, fn, *args):
    """Run ``fn(out_fd, *args)`` in the pod netns; return what it wrote."""
    r, w = os.pipe()
    pid = _fork_in_netns(netns_name, fn, *args, out_fd=w)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode(errors="replace").strip()


def _serve_once(_out, port=80):
    import socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    c, addr = s.accept()
    c.sendall(b"hello from node1 pod1, you are %s\n" % addr[0].encode())
    c.close()


def _fetch(out, host, port):
    import socket
    try:
        c = socket.create_connection((host, port), timeout=2)
        os.write(out, c.recv(200))
    except OSError:
        pass


class Demo:
    def __init__(self, plugin_dir, conflist, keep=False, out=print):
        self.plugin_dir = plugin_dir
        self.pycni = os.path.join(plugin_dir, "pycni")
        self.conflist = conflist
        self.keep = keep
        self.out = out
        tag = os.urandom(3).hex()
        self.tag = tag
        self.tmp = tempfile.mkdtemp(prefix="pycni-demo-")
        self.netns = []          # every netns we made, deleted at the end
        self.nodes = {}          # name -> dict
        self.pods = []           # (node, pod netns name, result)

    # -- helpers ------------------------------------------------------------
    def sh(self, *argv, netns=None, check=True, env=None, input=None, timeout=60):
        argv = [str(a) for a in argv]
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        p = subprocess.run(argv, capture_output=True, text=True, env=env, input=input,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise DemoError("%s failed (exit %d): %s" % (" ".join(argv), p.returncode,
                                                         (p.stderr or p.stdout).strip()[:800]))
        return p

    def step(self, text):
        self.out("\n== " + text)

    def show(self, text):
        for line in text.rstrip().splitlines():
            self.out("   " + line)

    def mkns(self, name):
        self.sh("ip", "netns", "add", name)
        self.netns.append(name)
        self.sh("ip", "link", "set", "lo", "up", netns=name)
        return name

    def node_env(self, node):
        n = self.nodes[node]
        env = dict(os.environ)
        env.update({
            "NETCONFPATH": n["confdir"], "CNI_PATH": self.plugin_dir,
            "PYCNI_CACHE_DIR": n["cache"], "PYCNI_RUN_DIR": n["run"],
            "PYCNI_STATE_DIR": n["state"], "PYCNI_LOG": os.path.join(self.tmp, "pycni.log"),
            "PYCNI_AGENT_SOCKET": os.environ.get("PYCNI_AGENT_SOCKET", "off"),
        })
        env.pop("CAP_ARGS", None)
        return env

    # -- the steps ----------------------------------------------------------
    def make_nodes(self):
        self.step("two nodes joined by an underlay veth (192.0.2.0/24, MTU 1500)")
        for name, ip, subnet in NODES:
            ns = self.mkns("pycni-demo-%s-%s" % (self.tag, name))
            d = os.path.join(self.tmp, name)
            n = {"netns": ns, "ip": ip, "subnet": subnet, "dir": d,
                 "confdir": os.path.join(d, "net.d"), "cache": os.path.join(d, "cache"),
                 "run": os.path.join(d, "run"), "state": os.path.join(d, "state"),
                 "subnet_file": os.path.join(d, "run", "flannel", "subnet.env"),
                 "flannel_dir": os.path.join(d, "lib", "flannel"),
                 "ipam_dir": os.path.join(d, "lib", "networks")}
            for k in ("confdir", "cache", "run", "state"):
                os.makedirs(n[k], 0o700, exist_ok=True)
            self.nodes[name] = n
            # node netns: forwarding on, loose rp_filter as a flannel host has
            for key, val in (("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0"),
                             ("net.ipv4.conf.default.rp_filter", "0")):
                self.sh("sysctl", "-qw", "%s=%s" % (key, val), netns=ns)
        n1, n2 = self.nodes["node1"], self.nodes["node2"]
        self.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                "netns", n2["netns"], netns=n1["netns"])
        for n in (n1, n2):
            self.sh("ip", "addr", "add", n["ip"] + "/24", "dev", "eth0", netns=n["netns"])
            self.sh("ip", "link", "set", "eth0", "up", netns=n["netns"])
        self.show("node1 %s  eth0 %s   node2 %s  eth0 %s" % (n1["netns"], n1["ip"],
                                                             n2["netns"], n2["ip"]))

    def fabric_up(self):
        self.step("pycni fabric up on each node (what flanneld would do)")
        nodes_file = os.path.join(self.tmp, "nodes.json")
        with open(nodes_file, "w") as f:
            json.dump([{"name": n, "publicIP": ip, "subnet": s} for n, ip, s in NODES], f)
        for name, n in self.nodes.items():
            self.sh(self.pycni, "fabric", "up", "--netns", n["netns"], "--nodes", nodes_file,
                    "--node", name, "--network", NETWORK, "--backend", "vxlan",
                    "--subnet-file", n["subnet_file"], "-q", env=self.node_env(name))
            self.show("%s subnet.env: %s" % (name, open(n["subnet_file"]).read().strip()
                                              .replace("\n", "  ")))
        n1 = self.nodes["node1"]
        self.show(self.sh("ip", "-d", "link", "show", "flannel.1", netns=n1["netns"]).stdout)
        self.show(self.sh("ip", "route", "show", "dev", "flannel.1", netns=n1["netns"]).stdout)
        self.show(self.sh("ip", "neigh", "show", "dev", "flannel.1", netns=n1["netns"]).stdout)
        self.show(self.sh("bridge", "fdb", "show", "dev", "flannel.1", netns=n1["netns"]).stdout)

    def write_conflists(self):
        with open(self.conflist) as f:
            base = json.load(f)
        for n in self.nodes.values():
            conf = json.loads(json.dumps(base))
            fl = conf["plugins"][0]
            # the nodes share one filesystem: give each its own state paths
            fl["subnetFile"] = n["subnet_file"]
            fl["dataDir"] = n["flannel_dir"]
            fl["ipam"] = {"dataDir": n["ipam_dir"]}
            with open(os.path.join(n["confdir"], "10-flannel.conflist"), "w") as f:
                json.dump(conf, f, indent=2)

    def add_pods(self):
        self.step("pycni add cbr0 <pod netns>: two pods per node through conf/10-flannel.conflist")
        self.write_conflists()
        for name, n in self.nodes.items():
            for i in (1, 2):
                pod = self.mkns("pycni-demo-%s-%s-pod%d" % (self.tag, name, i))
                env = self.node_env(name)
                if i == 1:
                    env["CAP_ARGS"] = json.dumps({"portMappings": [
                        {"hostPort": HOSTPORT, "containerPort": 80, "protocol": "tcp"}]})
                r = self.sh(self.pycni, "add", "cbr0", os.path.join(paths.NETNS_DIR, pod),
                            netns=n["netns"], env=env)
                res = json.loads(r.stdout)
                ip = res["ips"][0]["address"].split("/")[0]
                self.pods.append((name, pod, ip))
                ports = " hostPort %d -> :80" % HOSTPORT if i == 1 else ""
                self.show("%s pod%d  %s  eth0 %s%s" % (name, i, pod, res["ips"][0]["address"], ports))
        node, pod, _ip = self.pods[0]
        r = self.sh(self.pycni, "check", "cbr0", os.path.join(paths.NETNS_DIR, pod),
                    netns=self.nodes[node]["netns"], env=self.node_env(node), check=False)
        self.show("pycni check cbr0 %s: %s" % (pod, "ok" if r.returncode == 0 else r.stderr.strip()))

    def traffic(self):
        self.step("pod to pod across the nodes (VXLAN)")
        (_na, pa, ipa), (_nb, pb, ipb) = self.pods[0], self.pods[2]
        u1 = self.nodes["node1"]["netns"]
        cap = None
        if shutil.which("tcpdump"):
            cap = subprocess.Popen(["ip", "netns", "exec", u1, "tcpdump", "-l", "-n", "-e", "-c", "2",
                                    "-i", "eth0", "udp", "port", "8472"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(1.0)
        for src, dst, ip in ((pa, "node2 pod1", ipb), (pb, "node1 pod1", ipa)):
            r = self.sh("ping", "-c", "2", "-W", "2", ip, netns=src)
            self.show("%s -> %s (%s): %s" % (src.split("-")[-2] + " " + src.split("-")[-1], dst, ip,
                                            [ln for ln in r.stdout.splitlines() if "packet loss" in ln][0]))
        if cap is not None:
            try:
                text, _ = cap.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                cap.kill()
                text, _ = cap.communicate()
            self.step("the VXLAN hop, seen on node1's underlay eth0 (UDP 8472, VNI 1)")
            self.show(text or "(no packet captured)")
        self.step("a full-size packet: 1422 bytes of ICMP payload = a 1450-byte IP packet, don't fragment")
        r = self.sh("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", ipb, netns=pa)
        self.show([ln for ln in r.stdout.splitlines() if "packet loss" in ln][0])

        self.step("hostPort %d on node1 (pod1 listens on :80), from a pod on node2" % HOSTPORT)
        srv = _fork_in_netns(pa, _serve_once)
        try:
            reply = ""
            for _ in range(50):
                reply = _run_in_netns(pb, _fetch, self.nodes["node1"]["ip"], HOSTPORT)
                if reply:
                    break
                time.sleep(0.1)
            if not reply:
                raise DemoError("hostPort %d on node1 did not answer" % HOSTPORT)
            self.show("%s:%d answered: %s" % (self.nodes["node1"]["ip"], HOSTPORT, reply))
        finally:
            _reap(srv)

    def teardown(self):
        self.step("pycni del every pod, fabric down, namespaces deleted")
        errors = []
        for node, pod, _ip in reversed(self.pods):
            r = self.sh(self.pycni, "del", "cbr0", os.path.join(paths.NETNS_DIR, pod),
                        netns=self.nodes[node]["netns"], env=self.node_env(node), check=False)
            if r.returncode != 0:
                errors.append("del %s: %s" % (pod, r.stderr.strip()))
        for name, n in self.nodes.items():
            leases = [f for f in os.listdir(os.path.join(n["ipam_dir"], "cbr0"))
                      if f[0].isdigit()] if os.path.isdir(os.path.join(n["ipam_dir"], "cbr0")) else []
            saved = os.listdir(n["flannel_dir"]) if os.path.isdir(n["flannel_dir"]) else []
            if leases or saved:
                errors.append("%s kept leases %s / saved files %s" % (name, leases, saved))
            self.sh(self.pycni, "fabric", "down", "--netns", n["netns"], "--subnet-file",
                    n["subnet_file"], "-q", env=self.node_env(name), check=False)
        if not errors:
            self.show("no lease, saved file or veth left behind")
        return errors

    def cleanup(self):
        for ns in reversed(self.netns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self):
        errors = []
        try:
            self.make_nodes()
            self.fabric_up()
            self.add_pods()
            self.traffic()
        finally:
            try:
                errors = self.teardown() if self.nodes else []
            finally:
                self.cleanup()
        return errors


def main(argv=None):
    p = argparse.ArgumentParser(prog="pycni demo", description=__doc__.split("\n")[0])
    p.add_argument("--cni-path", help="plugin directory (default: the one holding this pycni)")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the log and state")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        sys.stderr.write("pycni demo: run as root (it makes network namespaces)\n")
        return 2
    plugin_dir = os.path.abspath(args.cni_path or _here())
    missing = [t for t in ("pycni", "flannel", "bridge", "host-local", "portmap")
               if not os.path.exists(os.path.join(plugin_dir, t))]
    if missing:
        sys.stderr.write("pycni demo: %s missing from %s (run ./build.sh)\n"
                         % (", ".join(missing), plugin_dir))
        return 2
    try:
        demo = Demo(plugin_dir, _conflist_path(plugin_dir), keep=args.keep_logs)
    except DemoError as exc:
        sys.stderr.write("pycni demo: %s\n" % exc)
        return 2
    print("pycni demo: flannel on two nodes, in throwaway network namespaces (plugins from %s)" % plugin_dir)
    try:
        errors = demo.run()
    except (DemoError, subprocess.TimeoutExpired) as exc:
        sys.stderr.write("\npycni demo FAILED: %s\n" % exc)
        if args.keep_logs:
            sys.stderr.write("state and log kept in %s\n" % demo.tmp)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\npycni demo: interrupted, everything undone\n")
        return 130
    if errors:
        sys.stderr.write("\npycni demo: cleanup problems:\n  %s\n" % "\n  ".join(errors))
        return 1
    print("\npycni demo: done; the machine is as it was")
    return 0


if __name__ == "__main__":
    sys.exit(main())
