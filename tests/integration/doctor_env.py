"""A two-node flannel fabric in namespaces, for the whois and doctor tests.

As ``pycni demo`` does it: two node netns joined by an underlay veth
(cnitest.join_underlay), ``pycni fabric up`` on each (flanneld's part), and
pods attached with ``pycni add cbr0 <pod netns>`` through a copy of
conf/10-flannel.conflist whose state paths point into the test's temp dir
(the nodes share one filesystem).  Everything runs through the ``pycni`` of
the install form under test, inside the node netns, and every state option
of whois/doctor points into the temp dir, so the machine's own
/var/lib/cni, /run/flannel and /etc/cni are never read or written.
"""

import json
import os
import subprocess
import time

from cnitest import ROOT, join_underlay

NETWORK = "10.244.0.0/16"
NET_NAME = "cbr0"
NODES = [("node1", "192.0.2.1", "10.244.1.0/24"), ("node2", "192.0.2.2", "10.244.2.0/24")]


class Node:
    def __init__(self, cluster, index, ns):
        self.cluster, self.ns, self.index = cluster, ns, index
        self.name, self.ip, self.subnet = NODES[index]
        self.dir = os.path.join(cluster.tmp, self.name)
        self.conf_dir = os.path.join(self.dir, "net.d")
        self.cache = os.path.join(self.dir, "cache")
        self.subnet_file = os.path.join(self.dir, "run", "flannel", "subnet.env")
        self.flannel_dir = os.path.join(self.dir, "lib", "flannel")
        self.ipam_dir = os.path.join(self.dir, "lib", "networks")
        self.tuning_dir = os.path.join(self.dir, "tuning")
        for d in (self.conf_dir, self.cache, os.path.join(self.dir, "run"), os.path.join(self.dir, "state")):
            os.makedirs(d, 0o700, exist_ok=True)
        self.pods = {}

    @property
    def pycni(self):
        return os.path.join(self.cluster.plugins, "pycni")

    def env(self, **extra):
        e = dict(os.environ)
        e.update({"NETCONFPATH": self.conf_dir, "CNI_PATH": self.cluster.plugins,
                  "PYCNI_CACHE_DIR": self.cache, "PYCNI_RUN_DIR": os.path.join(self.dir, "run"),
                  "PYCNI_STATE_DIR": os.path.join(self.dir, "state"), "PYCNI_LOG": self.cluster.log})
        e.pop("CAP_ARGS", None)
        e.update(extra)
        return e

    def sh(self, *argv, check=True, env=None, timeout=120):
        p = subprocess.run(["ip", "netns", "exec", self.ns.name] + [str(a) for a in argv],
                           capture_output=True, text=True, env=env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError("%s: exit %d\n%s\n%s" % (argv, p.returncode, p.stdout, p.stderr))
        return p

    def write_conflist(self, name="10-flannel.conflist", conf=None):
        if conf is None:
            with open(os.path.join(ROOT, "conf", "10-flannel.conflist")) as f:
                conf = json.load(f)
            fl = conf["plugins"][0]
            fl["subnetFile"] = self.subnet_file
            fl["dataDir"] = self.flannel_dir
            fl["ipam"] = {"dataDir": self.ipam_dir}
        path = os.path.join(self.conf_dir, name)
        with open(path, "w") as f:
            f.write(conf if isinstance(conf, str) else json.dumps(conf, indent=2))
        return path

    def fabric(self, nodes_file=None, *extra):
        return self.sh(self.pycni, "fabric", "up", "--nodes", nodes_file or self.cluster.nodes_file,
                       "--node", self.name, "--network", NETWORK, "--subnet-file", self.subnet_file,
                       "-q", *extra, env=self.env())

    def add_pod(self, name, ports=None, pod_ns=None, pod_name=None):
        """ADD a pod netns (made here) through the flannel conflist; returns (netns, result)."""
        pod = self.cluster.netns_factory()
        extra = {"CNI_ARGS": "K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s" % (pod_ns or "default", pod_name or name)}
        if ports:
            extra["CAP_ARGS"] = json.dumps({"portMappings": [
                {"hostPort": h, "containerPort": c, "protocol": p} for h, c, p in ports]})
        r = self.sh(self.pycni, "add", NET_NAME, pod.path, env=self.env(**extra))
        res = json.loads(r.stdout)
        self.pods[name] = (pod, res)
        return pod, res

    def kill_pod(self, name):
        """The pod's netns goes away with no DEL; waits (bounded) until the
        kernel has destroyed its veth (``ip netns del`` returns before that)."""
        pod, res = self.pods[name]
        veth = [i["name"] for i in res["interfaces"] if not i.get("sandbox") and i["name"] != "cni0"][0]
        pod.delete()
        for _ in range(500):
            if self.sh("ip", "link", "show", veth, check=False).returncode != 0:
                return pod
            time.sleep(0.02)
        raise AssertionError("veth %s outlived its netns" % veth)

    def cache_file_of(self, pod):
        d = os.path.join(self.cache, "results")
        for f in os.listdir(d):
            with open(os.path.join(d, f)) as fh:
                if json.load(fh).get("netns") == pod.path:
                    return os.path.join(d, f)
        raise AssertionError("no cache entry for %s" % pod.path)

    def pod_ip(self, name):
        return self.pods[name][1]["ips"][0]["address"].split("/")[0]

    def state_args(self):
        return ["--conf-dir", self.conf_dir, "--cache-dir", self.cache, "--data-dir", self.ipam_dir,
                "--flannel-dir", self.flannel_dir, "--tuning-dir", self.tuning_dir]

    def doctor(self, *args, bin_dir=None, etc=None):
        """(exit status, report dict) of ``pycni doctor --json`` in this node;
        ``bin_dir`` False leaves --bin-dir out (doctor reads the runtimes'
        configs); ``etc`` (an EtcOverlay) runs it over the test's /etc files."""
        bins = [] if bin_dir is False else ["--bin-dir", bin_dir or self.cluster.plugins]
        argv = ["ip", "netns", "exec", self.ns.name, self.pycni, "doctor", "--json", *self.state_args(),
                *bins, *[str(a) for a in args]]
        r = subprocess.run(etc.argv(argv) if etc is not None else argv, capture_output=True, text=True,
                           env=self.env(), timeout=120)
        assert "Traceback" not in r.stderr, r.stderr
        rep = json.loads(r.stdout)
        return r.returncode, rep

    def doctor_text(self, *args):
        r = self.sh(self.pycni, "doctor", *self.state_args(), "--bin-dir", self.cluster.plugins, *args,
                    check=False, env=self.env())
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, r.stdout

    def whois(self, *args, json_out=True):
        r = self.sh(self.pycni, "whois", *self.state_args(), *(["--json"] if json_out else []), *args,
                    check=False, env=self.env())
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, (json.loads(r.stdout) if json_out else r.stdout)

    def ping(self, pod, ip):
        return subprocess.run(["ip", "netns", "exec", self.pods[pod][0].name,
                               "ping", "-c", "1", "-W", "2", ip],
                              capture_output=True, text=True).returncode == 0


class Cluster:
    """Two flannel nodes; ``up()`` runs the fabric on both."""

    def __init__(self, plugins, netns_factory, tmp_path):
        self.plugins, self.netns_factory, self.tmp = plugins, netns_factory, str(tmp_path)
        self.log = os.path.join(self.tmp, "pycni.log")
        self.nodes_file = os.path.join(self.tmp, "nodes.json")
        self.write_nodes(self.nodes_file)
        self.nodes = [Node(self, i, netns_factory()) for i in range(2)]
        join_underlay(self.nodes[0].ns, self.nodes[1].ns)
        for n in self.nodes:
            for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                        "net.ipv4.conf.default.rp_filter=0"):
                n.sh("sysctl", "-qw", key)

    def write_nodes(self, path, nodes=None):
        with open(path, "w") as f:
            json.dump([{"name": n, "publicIP": ip, "subnet": s} for n, ip, s in (nodes or NODES)], f)
        return path

    def up(self, conflists=True):
        for n in self.nodes:
            n.fabric()
            if conflists:
                n.write_conflist()
        return self.nodes


class EtcOverlay:
    """/etc files of one test, seen only by the commands run through it: each
    runs in a private mount namespace where an overlay lays ``upper`` (in the
    test's temp dir) over the machine's /etc.  Reads fall through to the real
    /etc; whatever the command writes under /etc lands in ``upper``, so the
    next command through the overlay sees it and the machine never does."""

    def __init__(self, tmp):
        self.upper, self.work = os.path.join(str(tmp), "etc-upper"), os.path.join(str(tmp), "etc-work")
        os.makedirs(self.upper, exist_ok=True)
        os.makedirs(self.work, exist_ok=True)

    def write(self, path, text):
        assert path.startswith("/etc/")
        p = os.path.join(self.upper, path[len("/etc/"):])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
        return path

    def read(self, path):
        with open(os.path.join(self.upper, path[len("/etc/"):])) as f:
            return f.read()

    def argv(self, inner):
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t overlay overlay -o lowerdir=/etc,upperdir="$1",workdir="$2" /etc && shift 2 && '
                'exec "$@"', "sh", self.upper, self.work] + [str(a) for a in inner]

    def sh(self, node, cmd):
        """Run a shell command line (a fix line) in ``node`` over this /etc."""
        p = subprocess.run(self.argv(["ip", "netns", "exec", node.ns.name, "sh", "-c", cmd]),
                           capture_output=True, text=True, env=node.env(), timeout=120)
        if p.returncode != 0:
            raise AssertionError("%s: exit %d\n%s\n%s" % (cmd, p.returncode, p.stdout, p.stderr))
        return p


def statuses(rep):
    return {c["id"]: c["status"] for c in rep["checks"]}


def check(rep, cid):
    return next(c for c in rep["checks"] if c["id"] == cid)
