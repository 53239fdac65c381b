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
same on an empty bridge.  What grows here grows without any code of the
plugin around it: it is the kernel's, and ``--skip`` shows what each step
adds.  Needs root; everything is in network namespaces made for the run
(``pcbench<pid>-kg-*``) and deleted at the end, also on Ctrl-C.
"""

import argparse
import os
import statistics
import sys
import time

from bench import sandbox
from cnilib.kernel import netlink, netns

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
                netlink.veth_add(r.nl, self.host, "eth0", fd, 0, None, r.br, up=False)
                link = netlink.link_get(r.nl, self.host)
                t1 = t()
                out["veth"] = t1 - t0
                if "tag" not in skip:
                    netlink.link_set(r.nl, link.index, alias="kg %d" % self.i)
                netlink.link_set(r.nl, link.index, up=True)
                t2 = t()
                out["tag"] = t2 - t1
                if "ra" not in skip:
                    _sysctl("net/ipv6/conf/%s/accept_ra" % self.host, b"0")
                t3 = t()
                out["ra"] = t3 - t2
                cont = netlink.link_get(cnl, "eth0")
                if "dad" not in skip:
                    with netns.Enter(fd):
                        _sysctl("net/ipv6/conf/eth0/accept_dad", b"0")
                t4 = t()
                out["dad"] = t4 - t3
                netlink.link_set_arp_notify(cnl, cont.index, True)
                netlink.addr_add(cnl, cont.index, self.ip, 21, broadcast="10.71.7.255")
                netlink.link_set(cnl, cont.index, up=True)
                netlink.route_add(cnl, "0.0.0.0/0", gateway="10.71.0.1", oif=cont.index, exist_ok=True)
                t5 = t()
                out["iface"] = t5 - t4
                for _ in range(300):
                    h = netlink.link_get(r.nl, index=link.index)
                    st = netlink.brport_flags(h)
                    if h.operstate == "UP" and st and st["state"] == netlink.BR_STATE_FORWARDING:
                        break
                    time.sleep(0.01)
                t6 = t()
                out["port"] = t6 - t5
                if "garp" not in skip:
                    netlink.link_set(cnl, cont.index, mac=cont.mac)
                out["garp"] = t() - t6
        finally:
            os.close(fd)
        return {k: v * 1000 for k, v in out.items()}

    def delete(self):
        netlink.link_del(self.run.nl, name=self.host)


class Run:
    def __init__(self, args):
        self.args = args
        self.sb = sandbox.Sandboxes()
        self.salt = (os.getpid() & 0xfff) << 16
        self.host_ns = self.sb.name("kg", "host")
        self.nl = None
        self.br = 0

    def setup(self):
        self.sb.create([self.host_ns])
        self.hfd = os.open(self.sb.path(self.host_ns), os.O_RDONLY | os.O_CLOEXEC)
        self.enter = netns.Enter(self.hfd)
        self.enter.__enter__()         # this process lives in the host netns from here on
        self.nl = netlink.Netlink()
        netlink.bridge_add(self.nl, "kg0")
        self.br = netlink.link_get(self.nl, "kg0").index
        netlink.addr_add(self.nl, self.br, "10.71.0.1", 21, broadcast="10.71.7.255")
        _sysctl("net/ipv4/ip_forward", b"1")

    def close(self):
        if self.nl is not None:
            self.nl.close()
            self.enter.__exit__(None, None, None)
            os.close(self.hfd)
        self.sb.close()

    def quiet(self, tag, rounds=20):
        time.sleep(3)
        ns = self.sb.name("kg", "q", tag)
        self.sb.create([ns])
        samples = []
        for k in range(rounds):
            p = Pod(self, 0xf000 + k, ns, ip="10.71.7.250")
            samples.append(p.add(self.args.skip))
            p.delete()
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
    args = p.parse_args(argv)
    args.skip = set(args.skip)
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
    except KeyboardInterrupt:
        return 130
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
