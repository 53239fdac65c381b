"""The pure parts of doctor's issue-19 checks: the iptables backend states,
VTEP duplicates, the node spec, the checksum kernel table, the network
managers' config readers, the runtimes' config readers and what a plugin
binary is.  No root, no kernel."""

import os

import pytest

from cnilib.ops import rulesets
from cnilib.ops.doctor import context, fabric_checks, node_checks, report

# ---------------------------------------------------------------- report: safe fixes

def test_a_fix_marked_safe_is_listed_once_in_both_lists():
    c = report.Check("x", "x")
    c.add_fix("print only")
    c.add_fix("ethtool -K flannel.1 tx-checksum-ip-generic off", safe=True)
    c.add_fix("ethtool -K flannel.1 tx-checksum-ip-generic off", safe=True)
    c.set("WARN", "w", [], ["print only"])
    d = c.as_dict()
    assert d["fix"] == ["print only", "ethtool -K flannel.1 tx-checksum-ip-generic off"]
    assert d["safeFix"] == ["ethtool -K flannel.1 tx-checksum-ip-generic off"]


def test_plain_escapes_what_a_program_printed():
    assert report.plain(b"bad\x1b[31m\nsecond\n") == "bad\\x1b[31m | second"
    assert len(report.plain("x" * 1000, 50)) == 50


# ---------------------------------------------------------------- context

@pytest.mark.parametrize("text,want", [("5.4.0-150-generic", (5, 4, 0)),
                                       ("3.10.0-1160.el7.x86_64", (3, 10, 0)),
                                       ("6.18.44-fc-v1300", (6, 18, 44)), ("5.7", (5, 7, 0)), ("junk", None)])
def test_kernel_release(text, want):
    assert context.parse_kernel_release(text) == want


def test_default_iptables_backend_follows_the_alternatives(tmp_path):
    for target, want in (("xtables-nft-multi", "iptables-nft"), ("xtables-legacy-multi", "iptables-legacy"),
                         ("iptables-multi", "iptables-legacy")):
        (tmp_path / target).write_text("")
        link = tmp_path / ("save-" + target)
        os.symlink(str(tmp_path / target), str(link))
        assert context.ipt_default_backend(lambda name, link=link: str(link)) == want
    assert context.ipt_default_backend(lambda name: None) is None


# ---------------------------------------------------------------- 1. iptables backends

LEGACY = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
"""
NFT = """*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -j KUBE-FORWARD
-A FORWARD -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -j ACCEPT
COMMIT
"""


def test_backend_state_counts_what_can_change_a_packet():
    st = fabric_checks.backend_state({4: rulesets.parse_save(LEGACY)})
    assert st == {"rules": 1, "chains": ["DOCKER-USER"], "policies": ["filter FORWARD DROP"],
                  "tables": {4: ["filter"]}}          # an empty nat table does not count
    empty = fabric_checks.backend_state({4: rulesets.parse_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")})
    assert empty["tables"] == {} and empty["rules"] == 0
    nft = fabric_checks.backend_state({4: rulesets.parse_save(NFT)})
    assert fabric_checks.chain_writers(nft["chains"]) == ["flanneld", "kube-proxy/kubelet"]


def test_the_backend_kube_proxy_marks_is_kept():
    states = {"iptables-legacy": fabric_checks.backend_state({4: rulesets.parse_save(LEGACY)}),
              "iptables-nft": fabric_checks.backend_state({4: rulesets.parse_save(NFT)})}
    assert fabric_checks.keep_backend(states, "iptables-legacy")[0] == "iptables-nft"
    states["iptables-nft"]["chains"] = ["FLANNEL-FWD"]
    keep, why = fabric_checks.keep_backend(states, "iptables-legacy")
    assert (keep, why) == ("iptables-nft", "it holds more rules")


def test_reset_input_empties_the_tables_and_restores_accept():
    text = fabric_checks.reset_input(["filter", "nat"]).replace("\\n", "\n")
    assert rulesets.parse_save(text)["filter"].policies == {"INPUT": "ACCEPT", "FORWARD": "ACCEPT",
                                                            "OUTPUT": "ACCEPT"}
    assert text.count("COMMIT") == 2 and ":POSTROUTING ACCEPT [0:0]" in text


# ---------------------------------------------------------------- 2. VTEP MACs

def test_vtep_findings():
    own = "0e:00:00:00:00:01"
    ok, peers = fabric_checks.vtep_findings(own, [("10.244.2.0", "0e:00:00:00:00:02")],
                                            [("0e:00:00:00:00:02", "192.0.2.2"), ("00:00:00:00:00:00", "x")])
    assert ok == [] and peers == ["10.244.2.0 -> 0e:00:00:00:00:02 -> 192.0.2.2"]
    bad, _ = fabric_checks.vtep_findings(own.upper(), [("10.244.2.0", own)], [(own, "192.0.2.2")])
    assert bad == [("own", own, ["10.244.2.0 -> %s -> 192.0.2.2" % own])]
    bad, _ = fabric_checks.vtep_findings(own, [("10.244.2.0", "0e:00:00:00:00:02"),
                                               ("10.244.3.0", "0e:00:00:00:00:02")],
                                         [("0e:00:00:00:00:02", "192.0.2.3")])
    assert [b[0] for b in bad] == ["shared"] and len(bad[0][2]) == 2


# ---------------------------------------------------------------- 8. node spec

def test_parse_node_spec():
    node = {"kind": "Node", "metadata": {"name": "n1", "annotations": {"a": "b"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}
    assert fabric_checks.parse_node_spec(node) == ("n1", ["10.244.1.0/24", "fd00:1::/64"], {"a": "b"},
                                                  ["192.0.2.1"])
    lst = {"kind": "List", "items": [node, dict(node, metadata={"name": "n2"})]}
    assert fabric_checks.parse_node_spec(lst, "n2")[0] == "n2"
    with pytest.raises(ValueError, match="2 nodes in the list"):
        fabric_checks.parse_node_spec(lst)
    with pytest.raises(ValueError, match="not a Node"):
        fabric_checks.parse_node_spec({"kind": "Pod"})


# ---------------------------------------------------------------- 3. checksum offload, 5. table sizes

def test_checksum_kernel_table():
    assert node_checks.csum_affected((5, 4, 0)) and node_checks.csum_affected((3, 10, 0))
    assert not node_checks.csum_affected((5, 7, 0)) and not node_checks.csum_affected(None)
    for lo, hi, why, source in node_checks.VXLAN_CSUM_KERNELS:
        assert lo < hi and why and "ea64d8d6c675" in source


def test_ethtool_features_and_udp_counters(tmp_path):
    text = ("Features for flannel.1:\nrx-checksumming: on\ntx-checksumming: on\n"
            "\ttx-checksum-ipv4: off [fixed]\n\ttx-checksum-ip-generic: on\n"
            "tcp-segmentation-offload: off [requested on]\n")
    f = node_checks.parse_ethtool_features(text)
    assert f["tx-checksum-ip-generic"] == "on" and f["tx-checksum-ipv4"] == "off"
    assert f["tcp-segmentation-offload"] == "off"
    snmp = tmp_path / "snmp"
    snmp.write_text("Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n"
                    "Udp: 5 1 3 4 0 0 3\n")
    assert node_checks.udp_csum_errors(str(snmp)) == 3
    assert node_checks.udp_csum_errors(str(tmp_path / "none")) is None


def test_neighbour_sizes_leave_room():
    assert node_checks.neigh_sizes(33) == (1024, 2048, 4096)
    t1, t2, t3 = node_checks.neigh_sizes(5000)
    assert t3 >= 10000 and t1 < t2 < t3


