"""What the kernel's side of a bridge ADD costs as pods pile up on one bridge.

    .venv/bin/python -m bench.kernel_growth [--pods 1000] [--skip STEP ...]

One warm process (no exec, no Python imports on the way, no IPAM, no
nftables) makes, for each pod, the kernel requests of a bridge + host-local
ADD with ``isGateway`` and the reference's sysctls, in the plugin's order,
and times each step with a monotonic clock:

  veth    RTM_NEWLINK: the veth pair, host end down on the bridge, peer
          ``eth0`` created in the pod's netns; RTM_GETLINK of the host end
  tag     RTM_NEWLINK: the host end's alias, then up
  ra      /proc/sys/net/ipv6/conf/<host end>/accept_ra = 0 (host netns)
  dad     in the pod: /proc/sys/net/ipv6/conf/eth0/accept_dad = 0
  iface   in the pod: arp_notify (netlink), address, eth0 up, default route
  port    RTM_GETLINK of the host end until its port forwards
  garp    in the pod: eth0's MAC set to itself (the announcement)

Pods 1-20 are compared with the last 20, and once all are up and quiet
(3 s later) one more pod is timed 20 times (made and deleted) against the
same on an empty bridge.  ``--plugins DIR...`` also times, in those two
quiet states, a directly exec'd bridge + host-local ADD and DEL of each
plugin dir (``dist/py``, ``/usr/lib/cni``) on the same bridge
(``isGateway``, ``ipMasq``, state in a temp dir), interleaved.  What grows here grows without any code of the
plugin around it: it is the kernel's, and ``--skip`` shows what each step
adds.  Needs root; everything is in network namespaces made for the run
(``pcbench<pid>-kg-*``) and deleted at the end, also on Ctrl-C.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench import sandbox
from cnilib.kernel import brport, netlink, netns, route
from cnilib.kernel import link as klink

STEPS = ("veth", "tag", "ra", "dad", "iface", "port", "garp")
SUBNET = "10.71.%d.%d"     # /21: pods from .0.2 on, the quiet pod at .7.250


def _sysctl(path, value):
    fd = os.open("/proc/sys/" + path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


class Pod:
    def __init__(self, run, i, ns, ip=None):
        self.run, self.i, self.ns = run, i, ns
        self.host = "vkg%07x" % (run.salt + i)
        self.ip = ip or SUBNET % ((i + 2) // 256, (i + 2) % 256)

    def add(self, skip):
        """The ADD's kernel steps; {step: ms}."""
        r, t, out = self.run, time.perf_counter, {}
        fd = os.open(sandbox.Sandboxes.path(self.ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with netlink.Netlink.in_netns(fd) as cnl:
                t0 = t()
                brport.veth_add(r.nl, self.host, "eth0", fd, 0, None, r.br, up=False)
                link = klink.link_get(r.nl, self.host)
                t1 = t()
                out["veth"] = t1 - t0
                if "tag" not in skip:
                    klink.link_set(r.nl, link.index, alias="kg %d" % self.i)
                klink.link_set(r.nl, link.index, up=True)
                t2 = t()
                out["tag"] = t2 - t1
                if "ra" not in skip:
                    _sysctl("net/ipv6/conf/%s/accept_ra" % self.host, b"0")
                t3 = t()
                out["ra"] = t3 - t2
                cont = klink.link_get(cnl, "eth0")
                if "dad" not in skip:
                    with netns.Enter(fd):
                        _sysctl("net/ipv6/conf/eth0/accept_dad", b"0")
                t4 = t()
                out["dad"] = t4 - t3
                klink.link_set_arp_notify(cnl, cont.index, True)
                route.addr_add(cnl, cont.index, self.ip, 21, broadcast="10.71.7.255")
                klink.link_set(cnl, cont.index, up=True)
                route.route_add(cnl, "0.0.0.0/0", gateway="10.71.0.1", oif=cont.index, exist_ok=True)
                t5 = t()
                out["iface"] = t5 - t4
                for _ in range(300):
                    h = klink.link_get(r.nl, index=link.index)
                    st = brport.brport_flags(h)
                    if h.operstate == "UP" and st and st["state"] == netlink.BR_STATE_FORWARDING:
                        break
                    time.sleep(0.01)
                t6 = t()
                out["port"] = t6 - t5
                if "garp" not in skip:
                    klink.link_set(cnl, cont.index, mac=cont.mac)
                out["garp"] = t() - t6
        finally:
            os.close(fd)
        return {k: v * 1000 for k, v in out.items()}

    def delete(self):
        klink.link_del(self.run.nl, name=self.host)


class Run:
    def __init__(self, args):
        self.args = args
        self.sb = sandbox.Sandboxes()
        self.salt = (os.getpid() & 0xfff) << 16
        self.host_ns = self.sb.name("kg", "host")
        self.nl = None
        self.br = 0
        self.tmp = tempfile.mkdtemp(prefix="pycni-kg-")
        self.execs = {}           # tag -> {plugin dir: {"ADD": [ms], "DEL": [ms]}}

    def setup(self):
        self.sb.create([self.host_ns])
        self.hfd = os.open(self.sb.path(self.host_ns), os.O_RDONLY | os.O_CLOEXEC)
        self.enter = netns.Enter(self.hfd)
        self.enter.__enter__()         # this process lives in the host netns from here on
        self.nl = netlink.Netlink()
        brport.bridge_add(self.nl, "kg0")
        self.br = klink.link_get(self.nl, "kg0").index
        route.addr_add(self.nl, self.br, "10.71.0.1", 21, broadcast="10.71.7.255")
        _sysctl("net/ipv4/ip_forward", b"1")

    def close(self):
        if self.nl is not None:
            self.nl.close()
            self.enter.__exit__(None, None, None)
            os.close(self.hfd)
        self.sb.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def exec_plugins(self, tag, ns, rounds):
        """ADD then DEL of one attachment in ``ns`` by each plugin dir, exec'd
        from here (this process is in the host netns), interleaved."""
        dirs = self.args.plugins
        out = {d: {"ADD": [], "DEL": []} for d in dirs}
        conf = {d: json.dumps({
            "cniVersion": "1.0.0", "name": "kg", "type": "bridge", "bridge": "kg0", "isGateway": True,
            "ipMasq": True, "ipam": {"type": "host-local", "dataDir": os.path.join(self.tmp, "ipam%d" % i),
                                     "ranges": [[{"subnet": "10.71.0.0/21", "rangeStart": "10.71.7.100",
                                                  "rangeEnd": "10.71.7.240", "gateway": "10.71.0.1"}]],
                                     "routes": [{"dst": "0.0.0.0/0"}]}}).encode()
            for i, d in enumerate(dirs)}
        base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "CNI_IFNAME": "eth0",
                "CNI_NETNS": sandbox.Sandboxes.path(ns), "PYCNI_AGENT_SOCKET": "off",
                "PYCNI_STATE_DIR": os.path.join(self.tmp, "state"),
                "PYCNI_RUN_DIR": os.path.join(self.tmp, "run"),
                "PYCNI_LOG": os.path.join(self.tmp, "pycni.log")}
        fin = os.memfd_create("kg-stdin")
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for k in range(rounds + 1):
                for d in dirs:
                    for verb in ("ADD", "DEL"):
                        os.ftruncate(fin, 0)
                        os.pwrite(fin, conf[d], 0)
                        os.lseek(fin, 0, os.SEEK_SET)
                        env = dict(base, CNI_COMMAND=verb, CNI_CONTAINERID="kg-%s-%d" % (tag, k), CNI_PATH=d)
                        t0 = time.perf_counter()
                        pid = os.posix_spawn(os.path.join(d, "bridge"), [os.path.join(d, "bridge")], env,
                                             file_actions=[(os.POSIX_SPAWN_DUP2, fin, 0),
                                                           (os.POSIX_SPAWN_DUP2, null, 1),
                                                           (os.POSIX_SPAWN_DUP2, null, 2)])
                        _, status, _ = os.wait4(pid, 0)
                        ms = (time.perf_counter() - t0) * 1000
                        if os.waitstatus_to_exitcode(status) != 0:
                            raise RuntimeError("%s/bridge %s failed (rc %d)"
                                               % (d, verb, os.waitstatus_to_exitcode(status)))
                        if k:          # the first round warms up
                            out[d][verb].append(ms)
        finally:
            os.close(fin)
            os.close(null)
        self.execs[tag] = out

    def quiet(self, tag, rounds=20):
        time.sleep(3)
        ns = self.sb.name("kg", "q", tag)
        self.sb.create([ns])
        samples = []
        for k in range(rounds):
            p = Pod(self, 0xf000 + k, ns, ip="10.71.7.250")
            samples.append(p.add(self.args.skip))
            p.delete()
        if self.args.plugins:
            self.exec_plugins(tag, ns, rounds)
        return samples


def _med(samples, step=None):
    vals = [sum(s.values()) if step is None else s[step] for s in samples]
    return statistics.median(vals)


def report(title, a, b):
    print("%s: total %.2f -> %.2f ms (%+.2f)" % (title, _med(a), _med(b), _med(b) - _med(a)))
    print("   " + "  ".join("%s %.2f->%.2f" % (s, _med(a, s), _med(b, s)) for s in STEPS))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.kernel_growth", description=__doc__.split("\n\n")[0])
    p.add_argument("--pods", type=int, default=1000)
    p.add_argument("--skip", nargs="*", default=[], choices=("tag", "ra", "dad", "garp"),
                   help="steps left out (their columns read ~0)")
    p.add_argument("--plugins", nargs="*", default=[], metavar="DIR",
                   help="also time exec'd bridge + host-local ADD/DEL of these plugin dirs, quiet")
    args = p.parse_args(argv)
    args.skip = set(args.skip)
    args.plugins = [os.path.abspath(d) for d in args.plugins]
    if os.geteuid() != 0:
        print("python -m bench.kernel_growth: needs root (it makes network namespaces)", file=sys.stderr)
        return 2
    sandbox.sweep_stale()
    run = Run(args)
    try:
        run.setup()
        empty = run.quiet("empty")
        names = [run.sb.name("kg", "p", i) for i in range(args.pods)]
        for i in range(0, len(names), 100):
            run.sb.create(names[i:i + 100])
        piled = [Pod(run, i, n).add(args.skip) for i, n in enumerate(names)]
        full = run.quiet("full")
        w = min(20, args.pods // 3)
        print("kernel steps of a bridge ADD, one warm process, %d pods on one bridge; load %.1f; %s"
              % (args.pods, os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
        if args.skip:
            print("skipped: " + ", ".join(sorted(args.skip)))
        report("pods 1-%d vs %d-%d (back to back)" % (w, args.pods - w + 1, args.pods), piled[:w], piled[-w:])
        report("quiet, empty bridge vs %d pods" % args.pods, empty, full)
        for d in args.plugins:
            for verb in ("ADD", "DEL"):
                a, b = (statistics.median(run.execs[t][d][verb]) for t in ("empty", "full"))
                print("exec'd bridge + host-local %s, %s: quiet, empty bridge vs %d pods: "
                      "%.1f -> %.1f ms (%+.1f)" % (verb, d, args.pods, a, b, b - a))
    except KeyboardInterrupt:
        return 130
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
