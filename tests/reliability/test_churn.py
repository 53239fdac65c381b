"""Churn: 1,000 ADD/DEL cycles, 8 at a time, across two networks.

cbr0 is flannel -> bridge -> host-local + portmap (nftables), bnet is
bridge (ipMasq) -> host-local + portmap (iptables); cycles alternate
between them, each with a new container ID, through ``pycni add``/``del``
as a runtime drives them, 8 workers each reusing one pod netns.  No cycle
may fail, no address may be held by two live attachments at once, and at
the end the node must hold exactly what it held before (leases, saved
files, cache entries, veths, addresses, routes, nftables and iptables).
The wall time is printed with the tier's figures.  Only the py form: the
bundle runs the same code, slower to start.
"""

import itertools
import json
import os
import threading
import time

import cnitest
import pytest
from relnode import FIGURES, NETWORKS, RelNode, diff

pytestmark = [pytest.mark.root, pytest.mark.slow]

CYCLES = int(os.environ.get("PYCNI_CHURN_CYCLES", "1000"))
PARALLEL = 8


def test_churn_leaks_nothing_and_never_hands_out_an_address_twice(tmp_path, netns_factory):
    plugins = cnitest.plugin_dir("py")
    if not os.path.isdir(plugins):
        pytest.skip("dist/py is not built (./build.sh)")
    node = RelNode(plugins, tmp_path, netns_factory, lite=True)
    for net in NETWORKS:
        node.add(net, "warm1")
        node.delete(net, "warm1")
    node.settle()
    base = node.snapshot()
    slots = [node.pod("slot%d" % i) for i in range(PARALLEL)]
    cycles = itertools.count()
    lock = threading.Lock()
    live, failures, dups = {}, [], []

    def worker(pod):
        while True:
            i = next(cycles)
            if i >= CYCLES or len(failures) > 10:
                return
            net, cid = NETWORKS[i % 2], "churn%04d" % i
            r = node.pycni("add", net, cid, netns=pod.path)
            ips = []
            if r.rc != 0:
                failures.append(("ADD", cid, r))
            else:
                ips = [(net, ip["address"].split("/")[0]) for ip in json.loads(r.stdout)["ips"]]
                with lock:
                    for key in ips:
                        # held by a pod whose DEL has not begun: a real duplicate
                        holder = live.get(key)
                        if holder is not None and not holder[1]:
                            dups.append((key, holder[0], cid))
                        live[key] = [cid, False]
            with lock:      # from here the DEL may release them at any moment
                for key in ips:
                    if live.get(key, [None])[0] == cid:
                        live[key][1] = True
            r = node.pycni("del", net, cid, netns=pod.path)
            if r.rc != 0:
                failures.append(("DEL", cid, r))
            with lock:
                for key in ips:
                    if live.get(key, [None])[0] == cid:
                        del live[key]

    threads = [threading.Thread(target=worker, args=(pod,)) for pod in slots]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    FIGURES["churn"] = ("%d ADD/DEL cycles at parallelism %d in %.1f s (py form), %d errors, "
                        "%d duplicate addresses" % (CYCLES, PARALLEL, wall, len(failures), len(dups)))
    assert failures == []
    assert dups == []
    node.settle()
    assert diff(base, node.snapshot()) == {}
