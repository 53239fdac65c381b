"""bridge ipMasq seen from an "outside" namespace, both backends, and the
Go bridge's masquerade chain removed by our DEL."""

import os
import subprocess
import sys

import pytest
from cnitest import GO_CNI, ROOT

from cnilib.firewall import naming

pytestmark = pytest.mark.root

LISTEN = r'''
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5555))
s.settimeout(20)
print("ready", flush=True)
data, addr = s.recvfrom(100)
print(addr[0], flush=True)
'''

SEND = r'''
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(b"hello", (sys.argv[1], 5555))
    time.sleep(0.2)
'''


@pytest.fixture
def outside(node, netns_factory):
    """A namespace beyond the node's uplink that has no route to the pods:
    192.0.2.1 / 2001:db8:99::1 on the node, .2 / ::2 outside."""
    out = netns_factory()
    h = node.host
    h.run("ip", "link", "add", "upl0", "type", "veth", "peer", "name", "upl1", "netns", out.name)
    h.run("ip", "addr", "add", "192.0.2.1/24", "dev", "upl0")
    h.run("ip", "addr", "add", "2001:db8:99::1/64", "dev", "upl0", "nodad")
    h.run("ip", "link", "set", "upl0", "up")
    out.run("ip", "addr", "add", "192.0.2.2/24", "dev", "upl1")
    out.run("ip", "addr", "add", "2001:db8:99::2/64", "dev", "upl1", "nodad")
    out.run("ip", "link", "set", "upl1", "up")
    h.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    return out


def source_seen(outside, ctr, dst):
    """The source address a listener in ``outside`` sees for UDP from ``ctr``."""
    p = subprocess.Popen(["ip", "netns", "exec", outside.name, sys.executable, "-c", LISTEN, dst],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        ctr.run(sys.executable, "-c", SEND, dst)
        return p.stdout.readline().strip()
    finally:
        p.kill()
        p.wait()


DUAL = [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]]


@pytest.mark.parametrize("backend", ["nftables", "iptables", None])
def test_masquerade_seen_from_outside(node, outside, backend):
    ipam = {"type": "host-local", "dataDir": node.data_dir, "ranges": DUAL}
    conf = node.conf(ipam=ipam, isDefaultGateway=True, ipMasq=True)
    if backend:
        conf["ipMasqBackend"] = backend
    ctr = node.container()
    node.add(conf, ctr, cid="m1")
    assert source_seen(outside, ctr, "192.0.2.2") == "192.0.2.1"
    assert source_seen(outside, ctr, "2001:db8:99::2") == "2001:db8:99::1"
    chain = naming.go_chain("bnet", "m1")
    if backend == "iptables":
        assert node.masq_owners() == set()
        assert any(r.startswith("-A POSTROUTING -s 10.22.0.2/32") and r.endswith("-j " + chain)
                   for r in node.nat_rules())
        assert any(r.startswith("-A POSTROUTING -s fd00:22::2/128") for r in node.nat_rules())
    else:
        assert node.masq_owners() == {("10.22.0.2", "m1"), ("fd00:22::2", "m1")}
        assert node.nat_rules() == []
    node.add(conf, node.container(), cid="m2")       # a second pod: its own rules
    node.delete(conf, ctr, cid="m1")
    node.delete(conf, ctr, cid="m1")                  # again: nothing to remove, no error
    assert not any(chain in r for r in node.nat_rules())
    assert not any(cid == "m1" for _ip, cid in node.masq_owners())


@pytest.mark.parametrize("added,deleted", [("nftables", "iptables"), ("iptables", "nftables")])
def test_del_after_a_backend_switch_cleans_everything(node, added, deleted):
    """ADD under one ipMasqBackend, DEL with the config naming the other:
    DEL tears down both backends."""
    conf = node.conf(isDefaultGateway=True, ipMasq=True, ipMasqBackend=added)
    ctr = node.container()
    node.add(conf, ctr, cid="m1")
    if added == "iptables":
        assert any(naming.go_chain("bnet", "m1") in r for r in node.nat_rules())
    else:
        assert node.masq_owners() == {("10.22.0.2", "m1")}
    node.delete(dict(conf, ipMasqBackend=deleted), ctr, cid="m1")
    node.assert_clean()


def test_without_ipmasq_the_pod_address_leaves(node, outside):
    ctr = node.container()
    node.add(node.conf(isDefaultGateway=True), ctr)
    assert source_seen(outside, ctr, "192.0.2.2") == "10.22.0.2"


def test_rerun_masquerade_never_duplicates(node):
    """ADD's rule writers replace, they do not append (both backends)."""
    env = dict(os.environ, **node.env)
    code = ("import sys; sys.path[0:0] = [%r]\n"
            "from cnilib.firewall import masquerade\nfrom cnilib.base.log import Log\n"
            "for b in ('nftables', 'iptables'):\n"
            "    for _ in range(3):\n"
            "        masquerade.setup(b, 'bnet', 'rr', 'eth0', ['10.22.0.9/24'], Log('t'))\n" % ROOT)
    node.host.run(sys.executable, "-I", "-c", code, env=env)
    listed = node.host.run("nft", "list", "table", "inet", "pycni-masq").stdout
    assert listed.count("\t\tmasquerade\n") == 1 and listed.count("vmap") == 2
    assert node.masq_owners() == {("10.22.0.9", "rr")}
    rules = [r for r in node.nat_rules() if r.startswith("-A ")]
    assert len(rules) == 3      # jump, accept, masquerade: once each


def test_go_bridge_attachment_removed_by_ours(node, outside, go_plugins):
    conf = node.conf("1.0.0", isDefaultGateway=True, ipMasq=True)
    ctr = node.container()
    go = node.run("ADD", conf, ctr, cid="goc1", exe=os.path.join(go_plugins, "bridge"),
                  path=GO_CNI)
    assert go.rc == 0, go
    assert source_seen(outside, ctr, "192.0.2.2") == "192.0.2.1"
    assert any(naming.go_chain("bnet", "goc1") in r for r in node.nat_rules())
    assert node.leases() == ["10.22.0.2"] and len(node.veths()) == 1
    node.delete(conf, ctr, cid="goc1")
    node.assert_clean()
    node.delete(conf, ctr, cid="goc1")


def test_go_chain_removed_even_when_the_netns_is_gone(node, go_plugins):
    """The reference leaks its chain when DEL has no container address to
    read; ours finds it by name."""
    conf = node.conf("1.0.0", isGateway=True, ipMasq=True)
    ctr = node.container()
    assert node.run("ADD", conf, ctr, cid="goc2", exe=os.path.join(go_plugins, "bridge"),
                    path=GO_CNI).rc == 0
    path = ctr.path
    ctr.delete()
    node.delete(conf, None, cid="goc2", netns=path)
    node.settle_veths()         # the Go veth has no alias: the kernel removes it with the netns
    node.assert_clean()
