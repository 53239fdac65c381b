"""portmap exec time beside the Go reference, interleaved in one run (not a test).

    sudo .venv/bin/python bench/portmap_exec.py [rounds [mappings [pods]]]

Makes a throwaway network namespace with a bridge routing to the
"container" address, then in each round runs ADD and DEL with 3 mappings
(2 tcp, 1 udp) for every implementation in turn: dist/py and dist/bin
(default nftables backend, and the iptables backend), and
/usr/lib/cni/portmap (iptables).  Prints the median and p90 per verb.

``mappings`` (default 3) sets the mappings per pod (then every third is
udp, the rest tcp), ``pods`` (default 1) how many pods each round ADDs
before DELeting them all: ``1 1000 1`` and ``1 16 64`` are issue 16's
sizes (one pod of 1,000 hostPorts; 64 pods of 16).  Times are per exec.
"""

import json
import os
import statistics
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAPS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]
PREV = {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"version": "4", "address": "10.99.0.2/24", "interface": 0}]}


def impls():
    out = []
    for form in ("py", "bin"):
        exe = os.path.join(ROOT, "dist", form, "portmap")
        if os.path.exists(exe):
            out.append(("%s nftables" % form, exe, None))
            out.append(("%s iptables" % form, exe, "iptables"))
    if os.path.exists("/usr/lib/cni/portmap"):
        out.append(("go 1.1.1 iptables", "/usr/lib/cni/portmap", None))
    return out


def mappings(n, first=8000):
    if n == 3:
        return MAPS
    return [{"hostPort": first + i, "containerPort": 80, "protocol": "udp" if i % 3 == 2 else "tcp"}
            for i in range(n)]


def inside(rounds, nmaps=3, pods=1):
    results = {}
    env0 = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_CONTAINERID": "benchctr",
            "CNI_NETNS": "/proc/1/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
            "PYCNI_LOG": "off", "PYCNI_RUN_DIR": os.path.join(os.environ["PYCNI_BENCH_TMP"], "run"),
            "PYCNI_STATE_DIR": os.path.join(os.environ["PYCNI_BENCH_TMP"], "state")}
    for i in range(rounds + 1):
        for name, exe, backend in impls():
            confs = []
            for k in range(pods):
                prev = dict(PREV, ips=[dict(PREV["ips"][0], address="10.99.0.%d/24" % (2 + k))])
                conf = {"cniVersion": "0.4.0", "name": "benchnet", "type": "portmap",
                        "runtimeConfig": {"portMappings": mappings(nmaps, 8000 + k * nmaps)},
                        "prevResult": prev}
                if backend:
                    conf["backend"] = backend
                confs.append(json.dumps(conf).encode())
            for verb in ("ADD", "DEL"):
                for k, data in enumerate(confs):
                    env = dict(env0, CNI_COMMAND=verb, CNI_CONTAINERID="benchctr%d" % k)
                    t = time.perf_counter()
                    p = subprocess.run([exe], input=data, env=env, capture_output=True)
                    ms = (time.perf_counter() - t) * 1000
                    if p.returncode != 0:
                        sys.exit("%s %s failed: %s" % (name, verb, p.stdout[:300]))
                    if i:                                   # round 0 warms the caches
                        results.setdefault((name, verb), []).append(ms)
    title = "portmap, %d mappings%s" % (nmaps, " x %d pods" % pods if pods > 1 else "")
    print("%-20s %10s %10s %10s %10s" % (title, "ADD p50", "ADD p90", "DEL p50", "DEL p90"))
    for name, _e, _b in impls():
        row = []
        for verb in ("ADD", "DEL"):
            xs = sorted(results[(name, verb)])
            row += [statistics.median(xs), xs[int(len(xs) * 0.9) - 1]]
        print("%-20s %9.1fms %9.1fms %9.1fms %9.1fms" % ((name,) + tuple(row)))


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    if os.environ.get("PYCNI_BENCH_INSIDE"):
        return inside(rounds, *[int(a) for a in sys.argv[2:4]])
    import shutil
    import tempfile
    ns = "pycni-bench-%s" % uuid.uuid4().hex[:6]
    tmp = tempfile.mkdtemp(prefix="pycni-bench-")      # run and state dirs: never the machine's
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def run(*a):
            subprocess.run(["ip", "netns", "exec", ns] + list(a), check=True)
        run("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "cni0", "type", "bridge")
        run("ip", "addr", "add", "10.99.0.1/24", "dev", "cni0")
        run("ip", "link", "set", "cni0", "up")
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), str(rounds)]
                       + sys.argv[2:4],
                       env=dict(os.environ, PYCNI_BENCH_INSIDE="1", PYCNI_BENCH_TMP=tmp), check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
