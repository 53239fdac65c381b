"""Hostile input: a corpus of bad requests against every plugin.

Each case is one exec of one plugin, inside a node that already holds a
live attachment on each of its two networks (so there is something to
damage), with CNI_NETNS a pod netns that has only ``lo``.  Each must give
the CNI code the spec names for it, exit 1, a one-line message, no
traceback, and change nothing: the state dirs, the links, addresses and
routes of the node and of the pods, the nftables ruleset and both
iptables-saves are compared with a snapshot taken before the case.

Codes: 1 incompatible version, 4 bad environment (a CNI_NETNS that is no
network namespace included), 6 undecodable stdin, 7 invalid config.  The
same requests as DELs of nothing all succeed, changing nothing, unless
stdin is no JSON object or a required variable is missing.
"""

import json
import os

import cnitest
import pytest
from cnitest import assert_cni_error
from relnode import NetnsSet, RelNode, count, diff

pytestmark = pytest.mark.root

PLUGINS = ("bridge", "host-local", "flannel", "portmap", "firewall", "tuning", "loopback")
USES_NETNS = ("bridge", "flannel", "tuning", "loopback")
POD = "hpod"
PREV = {"cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:63:00:63", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.99.0.99/24", "gateway": "10.99.0.1", "interface": 0}]}
FIFO = "@fifo"                      # replaced by a FIFO the node holds
NOT_UTF8 = os.fsdecode(b"et\xffh0")
INJECT = ("host-local; rm -rf /", "../../bin/sh", "1.2.3.4\ndrop", "$(reboot)", "`id`",
          "x\" ; flush ruleset ; \"", "a\x00b")


class Case:
    def __init__(self, id, plugin, code, conf=None, env=None, verb="ADD", raw=None):
        self.id, self.plugin, self.code, self.verb = id, plugin, code, verb
        self.conf, self.env, self.raw = conf or {}, env or {}, raw


def base_conf(node, plugin):
    """A valid config for ``plugin`` on one of the node's live networks."""
    if plugin == "bridge":
        return node.plugin_conf("bnet", "bridge")
    if plugin == "host-local":
        return dict(node.plugin_conf("bnet", "bridge"), type="host-local")
    if plugin == "flannel":
        return node.plugin_conf("cbr0", "flannel")
    if plugin == "portmap":
        return node.plugin_conf("cbr0", "portmap", prevResult=PREV, runtimeConfig={"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    if plugin in ("firewall", "tuning"):
        return node.plugin_conf("bnet", plugin, prevResult=PREV)
    return {"cniVersion": "1.1.0", "name": "bnet", "type": "loopback"}


def put(conf, path, value):
    """A copy of ``conf`` with ``path`` ("a>b>c") set (None: removed)."""
    conf = json.loads(json.dumps(conf))
    *head, last = path.split(">")
    d = conf
    for k in head:
        d = d[int(k)] if isinstance(d, list) else d.setdefault(k, {})
    if value is None:
        d.pop(last, None)
    elif isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value
    return conf


def generic_cases():
    """What every plugin gets wrong the same way: stdin, versions, names, env."""
    nested = b'{"a":' * 100000 + b"1" + b"}" * 100000
    huge = json.dumps({"cniVersion": "1.0.0", "name": "bnet", "type": "x", "pad": "x" * (2 << 20)})
    out = []
    for p in PLUGINS:
        out += [
            Case("%s malformed JSON" % p, p, 6, raw=b'{"cniVersion": "1.0.0", "name": '),
            Case("%s JSON array" % p, p, 6, raw=b"[1, 2]"),
            Case("%s JSON string" % p, p, 6, raw=b'"bridge"'),
            Case("%s empty stdin" % p, p, 6, raw=b""),
            Case("%s not UTF-8" % p, p, 6, raw=b'{"name": "\xff\xfe"}'),
            Case("%s NaN" % p, p, 6, raw=b'{"cniVersion": "1.0.0", "name": "n", "mtu": NaN}'),
            Case("%s 2 MiB of JSON" % p, p, 6, raw=huge.encode()),
            Case("%s nested 100000 deep" % p, p, 6, raw=nested),
            Case("%s unknown version" % p, p, 1, conf={"cniVersion": "9.9.9"}),
            Case("%s version 0.5.0" % p, p, 1, conf={"cniVersion": "0.5.0"}),
            Case("%s version as a number" % p, p, 6, conf={"cniVersion": 1.0}),
            Case("%s no name" % p, p, 7, conf={"name": None}),
            Case("%s name ../" % p, p, 7, conf={"name": "../../etc"}),
            Case("%s name with NUL" % p, p, 7, conf={"name": "bnet\x00x"}),
            Case("%s name of 300 characters" % p, p, 7, conf={"name": "n" * 300}),
            Case("%s name as a list" % p, p, 7, conf={"name": ["bnet"]}),
            Case("%s no container ID" % p, p, 4, env={"CNI_CONTAINERID": ""}),
            Case("%s container ID ../" % p, p, 4, env={"CNI_CONTAINERID": "../../etc/passwd"}),
            Case("%s container ID of 300 characters" % p, p, 4, env={"CNI_CONTAINERID": "c" * 300}),
            Case("%s container ID with a newline" % p, p, 4, env={"CNI_CONTAINERID": "c1\nDROP"}),
            Case("%s ifname of 16 bytes" % p, p, 4, env={"CNI_IFNAME": "e" * 16}),
            Case("%s ifname of 300 bytes" % p, p, 4, env={"CNI_IFNAME": "e" * 300}),
            Case("%s ifname ../" % p, p, 4, env={"CNI_IFNAME": "../x"}),
            Case("%s ifname .." % p, p, 4, env={"CNI_IFNAME": ".."}),
            Case("%s no ifname" % p, p, 4, env={"CNI_IFNAME": ""}),
            Case("%s ifname with ESC" % p, p, 4, env={"CNI_IFNAME": "e\x1b]0;x\x07"}),
            Case("%s ifname not UTF-8" % p, p, 4, env={"CNI_IFNAME": NOT_UTF8}),
            Case("%s ifname with a bidi override" % p, p, 4, env={"CNI_IFNAME": "e\u202eth"}),
            Case("%s container ID with ESC" % p, p, 4, env={"CNI_CONTAINERID": "c\x1b[2Jc"}),
            Case("%s netns with ESC" % p, p, 4, env={"CNI_NETNS": "/var/run/netns/x\x1b[2J"}),
            Case("%s CNI_ARGS with ESC" % p, p, 4, env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a\x1b[2J"}),
            Case("%s CNI_PATH with BEL" % p, p, 4, env={"CNI_PATH": "/opt/cni/bin\x07"}),
            Case("%s CNI_ARGS garbage" % p, p, 4, env={"CNI_ARGS": "===;;;nokey"}),
            Case("%s CNI_ARGS of 100 KiB" % p, p, 4, env={"CNI_ARGS": "IgnoreUnknown=1;A=" + "x" * 100000}),
            Case("%s unknown command" % p, p, 4, env={"CNI_COMMAND": "ADDX"}),
            Case("%s DEL without container ID" % p, p, 4, verb="DEL", env={"CNI_CONTAINERID": ""}),
            Case("%s DEL of malformed JSON" % p, p, 6, verb="DEL", raw=b"{"),
            Case("%s logFile with NUL" % p, p, 1, env={"PYCNI_LOG": ""},
                 conf={"cniVersion": "9.9.9", "logFile": "/tmp/pycni\x00log"}),
        ]
        if p != "loopback":         # loopback has no GC: it holds nothing to collect
            out.append(Case("%s GC valid-attachments not a list" % p, p, 7, verb="GC",
                            conf={"cni.dev/valid-attachments": "everything"}))
        if p in ("bridge", "host-local", "tuning", "flannel"):   # the plugins that read CNI_ARGS
            out.append(Case("%s CNI_ARGS unknown key" % p, p, 4, env={"CNI_ARGS": "FOO=bar"}))
    for p in USES_NETNS:
        out += [
            Case("%s no netns" % p, p, 4, env={"CNI_NETNS": ""}),
            Case("%s netns is a regular file" % p, p, 4, env={"CNI_NETNS": "/etc/hostname"}),
            Case("%s netns is a uts namespace" % p, p, 4, env={"CNI_NETNS": "/proc/self/ns/uts"}),
            Case("%s netns relative" % p, p, 4, env={"CNI_NETNS": "var/run/netns/x"}),
            Case("%s netns missing on ADD" % p, p, 4, env={"CNI_NETNS": "/var/run/netns/pycni-none"}),
            Case("%s netns is a directory" % p, p, 4, env={"CNI_NETNS": "/var/run/netns"}),
            Case("%s netns is a FIFO" % p, p, 4, env={"CNI_NETNS": FIFO}),
            Case("%s netns is a device" % p, p, 4, env={"CNI_NETNS": "/dev/null"}),
        ]
    return out


def specific_cases():
    c = []
    b = "bridge"
    c += [
        Case("bridge bridge-name ../", b, 7, conf={"bridge": "../../x"}),
        Case("bridge bridge-name of 16 bytes", b, 7, conf={"bridge": "b" * 16}),
        Case("bridge bridge-name with a space", b, 7, conf={"bridge": "br 1"}),
        Case("bridge mtu as string", b, 7, conf={"mtu": "1400"}),
        Case("bridge mtu 70000", b, 7, conf={"mtu": 70000}),
        Case("bridge vlan 4095", b, 7, conf={"vlan": 4095}),
        Case("bridge isGateway as string", b, 7, conf={"isGateway": "true"}),
        Case("bridge ipMasqBackend ipfw", b, 7, conf={"ipMasqBackend": "ipfw"}),
        Case("bridge ipam not an object", b, 7, conf={"ipam": "host-local"}),
        Case("bridge ipam gateway outside its subnet", b, 7,
             conf={"ipam>ranges": [[{"subnet": "10.99.0.0/24", "gateway": "10.1.1.1"}]]}),
        Case("bridge ipam overlapping ranges", b, 7,
             conf={"ipam>ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "10.99.0.0/25"}]]}),
        Case("bridge runtime MAC multicast", b, 7, conf={"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}),
        Case("bridge CNI_ARGS MAC garbage", b, 4, env={"CNI_ARGS": "MAC=zz:zz"}),
    ]
    for i, bad in enumerate(INJECT):
        c.append(Case("bridge ipam type injection %d" % i, b, 7, conf={"ipam>type": bad})
                 if "/" in bad or "\x00" in bad else None)
    h = "host-local"
    c += [
        Case("host-local overlapping ranges", h, 7,
             conf={"ipam>ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "10.99.0.128/25"}]]}),
        Case("host-local overlapping ranges in one set", h, 7,
             conf={"ipam>ranges": [[{"subnet": "10.99.0.0/24"}, {"subnet": "10.99.0.0/24"}]]}),
        Case("host-local gateway outside its subnet", h, 7,
             conf={"ipam>ranges": [[{"subnet": "10.99.0.0/24", "gateway": "192.168.0.1"}]]}),
        Case("host-local rangeStart outside its subnet", h, 7,
             conf={"ipam>ranges": [[{"subnet": "10.99.0.0/24", "rangeStart": "10.98.0.5"}]]}),
        Case("host-local rangeStart after rangeEnd", h, 7,
             conf={"ipam>ranges": [[{"subnet": "10.99.0.0/24", "rangeStart": "10.99.0.9",
                                     "rangeEnd": "10.99.0.3"}]]}),
        Case("host-local subnet /33", h, 7, conf={"ipam>ranges": [[{"subnet": "10.99.0.0/33"}]]}),
        Case("host-local subnet garbage", h, 7, conf={"ipam>ranges": [[{"subnet": "1.2.3.4\ndrop"}]]}),
        Case("host-local no ranges", h, 7, conf={"ipam>ranges": []}),
        Case("host-local range set not a list", h, 7, conf={"ipam>ranges": [{"subnet": "10.99.0.0/24"}]}),
        Case("host-local route dst garbage", h, 7, conf={"ipam>routes": [{"dst": "default; drop"}]}),
        Case("host-local dataDir with NUL", h, 7, conf={"ipam>dataDir": "/tmp/x\x00y"}),
        Case("host-local CNI_ARGS IP garbage", h, 7, env={"CNI_ARGS": "IP=10.99.0.300"}),
        Case("host-local CNI_ARGS IP outside the ranges", h, 7, env={"CNI_ARGS": "IP=192.168.9.9"}),
        Case("host-local no ipam block", h, 7, conf={"ipam": None}),
    ]
    f = "flannel"
    for i, bad in enumerate(INJECT):
        c.append(Case("flannel delegate type injection %d" % i, f, 7, conf={"delegate": {"type": bad}})
                 if "/" in bad or "\x00" in bad else None)
    c += [
        Case("flannel delegate not an object", f, 7, conf={"delegate": "bridge"}),
        Case("flannel ipam not an object", f, 7, conf={"ipam": ["host-local"]}),
        Case("flannel subnetFile as a number", f, 7, conf={"subnetFile": 5}),
        Case("flannel dataDir with NUL", f, 7, conf={"dataDir": "/tmp/flannel\x00x"}),
        Case("flannel subnetFile with NUL", f, 7, conf={"subnetFile": "/run/flannel/\x00subnet.env"}),
        Case("flannel delegate ipam type injection", f, 7,
             conf={"ipam": {"type": "../../bin/sh", "dataDir": "/nonexistent"}}),
    ]
    pm = "portmap"
    maps = "runtimeConfig>portMappings"
    c += [
        Case("portmap hostPort 0", pm, 7, conf={maps: [{"hostPort": 0, "containerPort": 80}]}),
        Case("portmap hostPort 70000", pm, 7, conf={maps: [{"hostPort": 70000, "containerPort": 80}]}),
        Case("portmap containerPort 0", pm, 7, conf={maps: [{"hostPort": 80, "containerPort": 0}]}),
        Case("portmap containerPort -1", pm, 7, conf={maps: [{"hostPort": 80, "containerPort": -1}]}),
        Case("portmap port as string", pm, 7, conf={maps: [{"hostPort": "80", "containerPort": 80}]}),
        Case("portmap protocol icmp", pm, 7,
             conf={maps: [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}),
        Case("portmap protocol injection", pm, 7,
             conf={maps: [{"hostPort": 80, "containerPort": 80, "protocol": "tcp; flush ruleset"}]}),
        Case("portmap mappings not a list", pm, 7, conf={maps: {"hostPort": 80}}),
        Case("portmap mapping not an object", pm, 7, conf={maps: [8080]}),
        Case("portmap markMasqBit 40", pm, 7, conf={"markMasqBit": 40}),
        Case("portmap backend pf", pm, 7, conf={"backend": "pf"}),
        Case("portmap conditions with ;", pm, 7, conf={"conditionsV4": ["ip", "saddr", "1.2.3.4;", "drop"]}),
        Case("portmap iptables conditions with a quote", pm, 7,
             conf={"backend": None, "conditionsV4": ["-s", "1.2.3.4\" -j ACCEPT"]}),
        Case("portmap no prevResult", pm, 7, conf={"prevResult": None}),
        Case("portmap prevResult a string", pm, 7, conf={"prevResult": "10.0.0.1"}),
    ]
    for i, bad in enumerate(INJECT):
        c.append(Case("portmap hostIP injection %d" % i, pm, 7,
                      conf={maps: [{"hostPort": 80, "containerPort": 80, "hostIP": bad}]}))
    fw = "firewall"
    c += [
        Case("firewall backend firewalld", fw, 7, conf={"backend": "firewalld"}),
        Case("firewall backend garbage", fw, 7, conf={"backend": "ipfw"}),
        Case("firewall admin chain injection", fw, 7, conf={"iptablesAdminChainName": "X -j ACCEPT"}),
        Case("firewall admin chain of 300 characters", fw, 7, conf={"iptablesAdminChainName": "A" * 300}),
        Case("firewall ingressPolicy garbage", fw, 7, conf={"ingressPolicy": "bogus"}),
        Case("firewall no prevResult", fw, 7, conf={"prevResult": None}),
    ]
    t = "tuning"
    c += [
        Case("tuning sysctl outside net.", t, 7, conf={"sysctl": {"kernel.panic": "1"}}),
        Case("tuning sysctl with ..", t, 7, conf={"sysctl": {"net.ipv4.conf.eth0/../../../x": "1"}}),
        Case("tuning sysctl value not a string", t, 7, conf={"sysctl": {"net.core.somaxconn": 5}}),
        Case("tuning mac garbage", t, 7, conf={"mac": "zz"}),
        Case("tuning mtu -1", t, 7, conf={"mtu": -1}),
        Case("tuning promisc as string", t, 7, conf={"promisc": "yes"}),
        Case("tuning no prevResult", t, 7, conf={"prevResult": None}),
        Case("tuning dataDir with NUL", t, 7, conf={"dataDir": "/tmp/\x00"}),
    ]
    lo = "loopback"
    c += [
        Case("loopback CHECK below 0.4.0", lo, 1, verb="CHECK", conf={"cniVersion": "0.3.1"}),
        Case("loopback GC below 1.1.0", lo, 1, verb="GC", conf={"cniVersion": "1.0.0"}),
    ]
    return [x for x in c if x is not None]


CASES = generic_cases() + specific_cases()
BIN_EVERY = 3       # the bundle form runs every third case: the same code, slower to start
PAIRS = [(f, c) for f in cnitest.forms() for i, c in enumerate(CASES) if f == "py" or i % BIN_EVERY == 0]


def del_code(case):
    """What the same request gets as a DEL of an attachment that does not
    exist: DEL of nothing succeeds whatever the config and whatever value
    ADD would refuse, unless the runtime left out a variable DEL needs
    (None: the case has no DEL form; stdin that is no JSON object takes
    the skel's one path, the same for DEL as for ADD, and is left to
    test_skel)."""
    if case.verb != "ADD" or "CNI_COMMAND" in case.env or case.raw is not None:
        return None
    if case.env.get("CNI_CONTAINERID") == "" or case.env.get("CNI_IFNAME") == "":
        return 4
    return 0


DEL_CASES = [c for c in CASES if del_code(c) is not None]
DEL_BIN_EVERY = 6   # the bundle form runs every sixth DEL: the same code as the py form's
DEL_PAIRS = [(f, c) for f in cnitest.forms() for i, c in enumerate(DEL_CASES)
             if f == "py" or i % DEL_BIN_EVERY == 0]


@pytest.fixture(scope="module")
def hnodes(tmp_path_factory):
    """``get(form)``: a node per install form, made on first use, with a live
    attachment on each network and a pod holding only lo (plus net1, for
    tuning) as the hostile requests' CNI_NETNS."""
    made, nodes = NetnsSet(), {}

    def get(form):
        if form not in nodes:
            if not os.path.isdir(cnitest.plugin_dir(form)):
                pytest.skip("dist/%s is not built (./build.sh)" % form)
            node = RelNode(cnitest.plugin_dir(form), tmp_path_factory.mktemp("hostile-" + form), made)
            node.add("cbr0", "live1")
            node.add("bnet", "live2")
            node.pod(POD).run("ip", "link", "add", "net1", "type", "veth", "peer", "name", "net1p")
            node.fifo = os.path.join(node.tmp, "netns-fifo")
            os.mkfifo(node.fifo)
            node.base = node.snapshot(pods=["live1", "live2", POD])
            nodes[form] = node
        return nodes[form]
    try:
        yield get
    finally:
        made.close()


def test_the_corpus_is_large_and_covers_every_plugin():
    assert len(CASES) >= 100
    assert {c.plugin for c in CASES} == set(PLUGINS)
    assert len({c.id for c in CASES}) == len(CASES)


def _exec(node, case, verb=None):
    if case.raw is not None:
        stdin = case.raw
    else:
        conf = base_conf(node, case.plugin)
        for k, v in case.conf.items():
            conf = put(conf, k, v)
        stdin = json.dumps(conf).encode()
    env = dict(case.env)
    # loopback's DEL takes lo down in any netns it is given, attachment or
    # not: its DELs get a pod of their own, whose lo is not compared
    pod = "hdel-lo" if verb == "DEL" and case.plugin == "loopback" else POD
    netns = env.pop("CNI_NETNS", node.pod(pod).path)
    if netns == FIFO:
        netns = node.fifo
    cid = env.pop("CNI_CONTAINERID", "hostile1")
    ifname = env.pop("CNI_IFNAME", "net1" if case.plugin == "tuning" else "eth0")
    args = env.pop("CNI_ARGS", "")
    verb = env.pop("CNI_COMMAND", verb or case.verb)
    return node.exec_plugin(case.plugin, verb, stdin, cid=cid, netns=netns, ifname=ifname, args=args,
                            env=env)


@pytest.mark.parametrize("hf,case", PAIRS, ids=["%s-%s" % (f, c.id) for f, c in PAIRS])
def test_hostile_input_is_refused_with_nothing_changed(hnodes, hf, case):
    node = hnodes(hf)
    r = _exec(node, case)
    try:
        err = assert_cni_error(r, case.code)
        assert len(err["msg"]) < 1000 and "\n" not in err.get("details", ""), err
        # libcni shows "msg; details": one problem is said once
        assert not err.get("details") or (err["details"] not in err["msg"]
                                          and err["msg"] not in err["details"]), err
        assert err["msg"].isprintable() and err.get("details", "").isprintable(), err
        assert r.stderr == "", r
    finally:
        now = node.snapshot(pods=["live1", "live2", POD])
        changed, node.base = diff(node.base, now), now      # a case that changed something fails alone
    assert changed == {}
    count("hostile cases refused with nothing changed")


@pytest.mark.parametrize("hf,case", DEL_PAIRS, ids=["%s-%s" % (f, c.id) for f, c in DEL_PAIRS])
def test_del_of_nothing_succeeds_whatever_the_input(hnodes, hf, case):
    """The same hostile requests as DELs of an attachment that does not
    exist: a DEL that fails is retried by the runtime for ever and the pod
    never goes away, so each one succeeds (and changes nothing), unless
    stdin is no JSON object or a required variable is missing."""
    node = hnodes(hf)
    r = _exec(node, case, "DEL")
    try:
        want = del_code(case)
        if want:
            assert_cni_error(r, want)
        else:
            assert r.rc == 0 and r.stdout == "", r
        assert r.stderr == "", r
    finally:
        now = node.snapshot(pods=["live1", "live2", POD])
        changed, node.base = diff(node.base, now), now
    assert changed == {}
    count("hostile DELs of nothing that succeeded or were refused, nothing changed")


FRESH = [
    ("bnet", "bridge", {"ipam>ranges": [[{"subnet": "10.99.0.0/24", "gateway": "10.1.1.1"}]]}),
    ("bnet", "bridge", {"ipam>ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "10.99.0.0/25"}]]}),
    ("cbr0", "flannel", {"ipam>dataDir": "/tmp/leases\x00x"}),
]


@pytest.mark.parametrize("net,plugin,bad", FRESH, ids=["bridge gateway", "bridge overlap", "flannel dataDir"])
def test_an_ipam_config_refused_on_a_fresh_node_leaves_no_bridge(rnode, net, plugin, bad):
    """Nothing is created before the whole config is validated, IPAM's part
    included: the bridge is made only once IPAM has accepted its config."""
    conf = rnode.plugin_conf(net, plugin)
    for k, v in bad.items():
        conf = put(conf, k, v)
    base = rnode.snapshot()
    assert_cni_error(rnode.exec_plugin(plugin, "ADD", conf, cid="f1", netns=rnode.pod("f1").path), 7)
    assert diff(base, rnode.snapshot(pods=["f1"])) == {"pod f1 addrs": {
        "gone": [], "new": [("lo", "127.0.0.1/8"), ("lo", "::1/128")]}, "pod f1 links": {
        "gone": [], "new": [("lo", "", "")]}}
