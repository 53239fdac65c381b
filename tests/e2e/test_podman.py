"""podman 4.3 with its CNI backend drives the suite (issue 7, runtime tier).

podman runs in a sandbox (runtimes.Sandbox): its own network namespace,
where its bridge, veths and rules are made, and private /run, /var/lib
(libcni's result cache, host-local's leases), /var/log (the suite's log),
/etc/containers and /etc/cni.  Its configuration is written into the temp
dir:

  containers.conf  network_backend "cni", cni_plugin_dirs = [our dir],
                   network_config_dir in tmp, cgroup_manager "cgroupfs",
                   events_logger "file", cgroups "disabled" (no cgroup is
                   made in the machine's hierarchy), default_ulimits pinned
                   when CAP_SYS_RESOURCE is missing
  storage.conf     vfs graph and run roots in tmp
  policy.json      accept local images (nothing is ever pulled)

The image is a busybox-static rootfs, ``podman import``ed.  The network is
made by a plain ``podman network create``, so the conflist is exactly what
podman writes: bridge (+host-local), portmap, firewall, tuning.
"""

import json
import os
import shutil

import cnitest
import pytest
import runtimes

pytestmark = [pytest.mark.root, pytest.mark.slow]

TYPES = ("bridge", "host-local", "portmap", "firewall", "tuning", "loopback")
IMAGE = "localhost/pycni/busybox:1"
NET = "pycni-e2e"
HOSTPORT = 18080
MAC_A = "0a:58:0a:99:00:0a"


def have_podman():
    return shutil.which("podman") and shutil.which("conmon") and os.path.exists(runtimes.BUSYBOX)


Podman = runtimes.Podman


@pytest.fixture
def podman(form):
    if not have_podman():
        pytest.skip("podman, conmon or busybox-static is not installed")
    tmp = runtimes.short_tmp("pycni-podman-")
    plugin_dir = runtimes.assemble_plugin_dir(form, os.path.join(tmp, "cni-bin"), TYPES)
    cg_before = runtimes.cgroup_dirs()
    p = Podman(tmp, plugin_dir)
    try:
        yield p
    finally:
        p.close()
        leaked = runtimes.cgroup_dirs() - cg_before
        if os.environ.get("PYCNI_E2E_KEEP") != "1":
            runtimes.rmtree(tmp)
        assert not leaked, "podman left cgroups behind: %s" % sorted(leaked)


def test_podman_network_containers_ports_and_cleanup(podman, netns_factory):
    sb = podman.sandbox
    with open(os.path.join(podman.tmp, "rootfs.tar"), "wb") as f:
        f.write(runtimes.busybox_rootfs_tar())
    podman("import", "--change", "CMD=/bin/sh", os.path.join(podman.tmp, "rootfs.tar"), IMAGE)

    # an unmodified `podman network create`: the conflist is podman's own
    podman("network", "create", NET)
    with open(os.path.join(podman.net_d, NET + ".conflist")) as f:
        conflist = json.load(f)
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "portmap", "firewall", "tuning"]
    bridge = conflist["plugins"][0]["bridge"]
    subnet = conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]

    podman("run", "-d", "--name", "a", "--network", NET, "--cap-add", "NET_RAW",
           "--mac-address", MAC_A, IMAGE, "sleep", "600")
    podman("run", "-d", "--name", "b", "--network", NET, "--cap-add", "NET_RAW",
           "-p", "%d:80" % HOSTPORT, IMAGE, "httpd", "-f", "-p", "80", "-h", "/var/www")
    a, b = podman.inspect("a"), podman.inspect("b")
    ip = {n: c["NetworkSettings"]["Networks"][NET]["IPAddress"] for n, c in (("a", a), ("b", b))}
    cid = {"a": a["Id"], "b": b["Id"]}
    prefix = subnet.split("/")[0].rsplit(".", 1)[0] + "."
    assert ip["a"].startswith(prefix) and ip["b"].startswith(prefix) and ip["a"] != ip["b"], ip
    # tuning applied podman's MAC (CNI_ARGS MAC=...) and the result says so
    assert a["NetworkSettings"]["Networks"][NET]["MacAddress"] == MAC_A
    eth0 = podman("exec", "a", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert eth0 == MAC_A

    # the two containers reach each other through the bridge
    podman("exec", "a", "ping", "-c", "1", "-W", "5", ip["b"])
    podman("exec", "b", "ping", "-c", "1", "-W", "5", ip["a"])

    # the published port answers from another machine and from the node itself
    client = netns_factory()
    node_ip = runtimes.connect_client(sb.netns, client)
    assert runtimes.http_get("http://%s:%d/" % (node_ip, HOSTPORT), netns=client.name) == "pycni\n"
    assert runtimes.http_get("http://127.0.0.1:%d/" % HOSTPORT, sandbox=sb) == "pycni\n"

    # libcni's cache and host-local's leases are where the runtime expects them
    cni = os.path.join(podman.var_lib, "cni")
    results = sorted(os.listdir(os.path.join(cni, "results")))
    assert results == sorted("%s-%s-eth0" % (NET, cid[n]) for n in "ab"), results
    leases = os.path.join(cni, "networks", NET)
    assert {n: open(os.path.join(leases, ip[n])).read().split()[0] for n in "ab"} == cid
    links = sb.netns.links()
    assert bridge in links and sum(1 for n in links if n.startswith("veth")) == 2
    rules = runtimes.ruleset(sb)
    assert ip["a"] in rules and ip["b"] in rules

    # our plugins really ran: one ADD each per container, logged ok
    lines = runtimes.log_lines(podman.log)
    for t in TYPES:
        if t == "loopback":
            continue            # podman brings lo up itself
        for n in "ab":
            assert ("ADD", "ok") in runtimes.verbs_logged(lines, t, cid[n]), (t, n, lines[-20:])

    # podman rm releases leases, veths and rules
    podman("rm", "-f", "-t", "0", "a", "b")
    assert os.listdir(os.path.join(cni, "results")) == []
    assert sorted(f for f in os.listdir(leases) if not f.startswith(("lock", "last_reserved"))) == []
    links = sb.netns.links()
    assert not [n for n in links if n.startswith("veth")], links
    rules = runtimes.ruleset(sb)
    for n in "ab":
        assert ip[n] not in rules, rules
        assert cid[n] not in rules, rules
    lines = runtimes.log_lines(podman.log)
    for t in TYPES:
        if t == "loopback":
            continue
        for n in "ab":
            logged = runtimes.verbs_logged(lines, t, cid[n])
            assert ("DEL", "ok") in logged and not [v for v in logged if v[1] != "ok"], (t, n, logged)
    assert not [ln for ln in lines if "Traceback" in ln]


def test_conf_matches_what_podman_writes(podman):
    """conf/87-podman-bridge.conflist has the shape `podman network create` gives."""
    podman("network", "create", NET)
    with open(os.path.join(podman.net_d, NET + ".conflist")) as f:
        theirs = json.load(f)
    with open(os.path.join(cnitest.ROOT, "conf", "87-podman-bridge.conflist")) as f:
        ours = json.load(f)
    assert ours["cniVersion"] == theirs["cniVersion"]
    assert [p["type"] for p in ours["plugins"]] == [p["type"] for p in theirs["plugins"]]
    for mine, podmans in zip(ours["plugins"], theirs["plugins"]):
        assert set(mine) == set(podmans), (mine, podmans)
        for key in ("capabilities", "isGateway", "ipMasq", "hairpinMode", "backend"):
            assert mine.get(key) == podmans.get(key), key
    assert set(ours["plugins"][0]["ipam"]) == set(theirs["plugins"][0]["ipam"])
