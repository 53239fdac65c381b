"""The pure parts of doctor's issue-19 checks: the iptables backend states,
VTEP duplicates, the node spec, the checksum kernel table, the network
managers' config readers, the runtimes' config readers and what a plugin
binary is.  No root, no kernel."""

import json
import os
import struct

import pytest

from cnilib.ops import rulesets
from cnilib.ops.doctor import (
    context,
    fabric_checks,
    iptables_checks,
    netmgr_checks,
    node_checks,
    report,
    runtime_checks,
)

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



def test_the_text_report_shows_no_control_character():
    """A path from a runtime's config or a conflist's plugin type reaches the
    terminal escaped, whichever check put it in a line; fix lines otherwise
    stay the command to copy."""
    c = report.Check("flannel-binary", "t")
    c.error = "cannot read /etc/\x1b]0;owned\x07x"
    c.set("FAIL", "containerd runs /opt/\x1b[2Jcni/flannel", ["bin_dir \u202e/opt\r"],
          ["sed -i 's|/opt/cni/bin|/usr/libexec/cni|' /etc/containerd/config.toml"])
    rep = {"version": "0", "summary": {"PASS": 0, "WARN": 0, "FAIL": 1, "SKIP": 0}, "exit": 1,
           "checks": [c.as_dict()], "problems": ["layer \x1bX"]}
    out = report.render(rep)
    assert not [ch for ch in out if not ch.isprintable() and ch != "\n"], out
    assert "containerd runs /opt/\\x1b[2Jcni/flannel" in out
    assert "bin_dir \\u202e/opt\\x0d" in out and "error: cannot read /etc/\\x1b]0;owned\\x07x" in out
    assert "    fix: sed -i 's|/opt/cni/bin|/usr/libexec/cni|' /etc/containerd/config.toml\n" in out
    assert report.shown("ip addr del 10.244.3.1/24 dev cni0") == "ip addr del 10.244.3.1/24 dev cni0"

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
    st = iptables_checks.backend_state({4: rulesets.parse_save(LEGACY)})
    assert st == {"rules": 1, "chains": ["DOCKER-USER"], "policies": ["filter FORWARD DROP"],
                  "tables": {4: ["filter"]}}          # an empty nat table does not count
    empty = iptables_checks.backend_state({4: rulesets.parse_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")})
    assert empty["tables"] == {} and empty["rules"] == 0
    nft = iptables_checks.backend_state({4: rulesets.parse_save(NFT)})
    assert iptables_checks.chain_writers(nft["chains"]) == ["flanneld", "kube-proxy/kubelet"]


def test_the_backend_kube_proxy_marks_is_kept():
    states = {"iptables-legacy": iptables_checks.backend_state({4: rulesets.parse_save(LEGACY)}),
              "iptables-nft": iptables_checks.backend_state({4: rulesets.parse_save(NFT)})}
    assert iptables_checks.keep_backend(states, "iptables-legacy")[0] == "iptables-nft"
    states["iptables-nft"]["chains"] = ["FLANNEL-FWD"]
    keep, why = iptables_checks.keep_backend(states, "iptables-legacy")
    assert (keep, why) == ("iptables-nft", "it holds more rules")


def test_reset_input_empties_the_tables_and_restores_accept():
    text = iptables_checks.reset_input(["filter", "nat"]).replace("\\n", "\n")
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


# ---------------------------------------------------------------- 4. network managers

def link(name, kind, mac=""):
    return netmgr_checks.Link(name, kind, mac)


def test_networkmanager_specs():
    m = netmgr_checks.spec_matches
    assert m("interface-name:veth*", link("veth0123abcd", "veth"))
    assert not m("interface-name:=veth*", link("veth0123abcd", "veth"))
    assert m("interface-name:~CNI0", link("cni0", "bridge"))
    assert m("driver:veth", link("vethx", "veth")) and m("type:vxlan", link("flannel.1", "vxlan"))
    assert m("except:interface-name:eth*", link("cni0", "bridge"))
    assert m("mac:0E:00:00:00:00:01", link("x", "veth", "0e:00:00:00:00:01"))
    assert m("*", link("x", "veth")) and not m("interface-name:eth0", link("cni0", "bridge"))


def test_networkmanager_config_merges_like_networkmanager():
    files = [("/usr/lib/NetworkManager/conf.d/00-a.conf",
              "[keyfile]\nunmanaged-devices=interface-name:docker0\n"),
             ("/etc/NetworkManager/NetworkManager.conf",
              "[main]\nplugins=keyfile\n# a comment\n[device-all]\nmatch-device=*\nmanaged=1\n"),
             ("/etc/NetworkManager/conf.d/90-cni.conf",
              "[keyfile]\nunmanaged-devices+=interface-name:cni0;interface-name:veth*\n"
              "[device-flannel]\nmatch-device=interface-name:flannel*\nmanaged=0\n")]
    unmanaged, devices = netmgr_checks.nm_config(files)
    assert [s for s, _p in unmanaged] == ["interface-name:docker0", "interface-name:cni0",
                                          "interface-name:veth*"]
    assert [d[1] for d in devices] == ["device-flannel", "device-all"]       # later files first
    v = netmgr_checks.nm_verdict
    assert v(link("cni0", "bridge"), unmanaged, devices)[0] is False
    assert v(link("flannel.1", "vxlan"), unmanaged, devices) == (
        False, "[device-flannel] managed=0 (/etc/NetworkManager/conf.d/90-cni.conf)")
    assert v(link("eth0", "ether"), unmanaged, devices)[0] is True
    unmanaged, _ = netmgr_checks.nm_config(files + [("/etc/NetworkManager/conf.d/99-x.conf",
                                                     "[keyfile]\nunmanaged-devices-=interface-name:cni0\n")])
    assert "interface-name:cni0" not in [s for s, _p in unmanaged]
    unmanaged, _ = netmgr_checks.nm_config(files + [("/etc/NetworkManager/conf.d/99-y.conf",
                                                     "[keyfile]\nunmanaged-devices=interface-name:eth9\n")])
    assert [s for s, _p in unmanaged] == ["interface-name:eth9"]     # a plain = replaces the list


def test_networkmanager_file_order_and_shadowing():
    tree = {"/etc/NetworkManager/conf.d": ["20-b.conf", "10-a.conf", "x.txt"],
            "/usr/lib/NetworkManager/conf.d": ["10-a.conf", "05-sys.conf"],
            "/run/NetworkManager/conf.d": ["07-run.conf"]}

    def listdir(d):
        if d not in tree:
            raise FileNotFoundError(d)
        return tree[d]
    assert netmgr_checks.nm_files(lambda p: True, listdir) == [
        "/usr/lib/NetworkManager/conf.d/05-sys.conf", "/run/NetworkManager/conf.d/07-run.conf",
        "/etc/NetworkManager/NetworkManager.conf", "/etc/NetworkManager/conf.d/10-a.conf",
        "/etc/NetworkManager/conf.d/20-b.conf"]
    assert netmgr_checks.parse_nmcli("cni0:unmanaged\nflannel.1:connected (externally)\n") == {
        "cni0": "unmanaged", "flannel.1": "connected (externally)"}


def test_networkd_matching():
    r = netmgr_checks.read_network
    files = [("/etc/systemd/network/05-eth.network", r("[Match]\nName=!cni* flannel* veth*\n")),
             ("/usr/lib/systemd/network/80-container-ve.network", r("[Match]\nName=ve-*\nDriver=veth\n")),
             ("/etc/systemd/network/99-all.network", r("[Match]\n[Network]\nDHCP=yes\n"))]
    v = netmgr_checks.networkd_verdict
    assert v(link("cni0", "bridge"), files) == ("/etc/systemd/network/99-all.network", False)
    assert v(link("eth0", "ether"), files) == ("/etc/systemd/network/05-eth.network", False)
    assert v(link("ve-x", "veth"), files[1:])[0].endswith("80-container-ve.network")
    assert v(link("ve-x", "bridge"), files[1:])[0].endswith("99-all.network")
    unmanaged = [("/etc/systemd/network/00-cni.network",
                  r("[Match]\nName=cni0 veth*\n\n[Link]\nUnmanaged=yes\n"))]
    assert v(link("veth1", "veth"), unmanaged + files) == ("/etc/systemd/network/00-cni.network", True)
    assert v(link("vethx", "veth"), [("/a", r("[Match]\nType=ether\n"))])[0] == "/a"
    assert netmgr_checks.dropin_name("/etc/systemd/network/10-all.network") == "00-cni-unmanaged.network"
    assert netmgr_checks.dropin_name("/x/00-all.network") == "0-cni-unmanaged.network"


def test_networkd_file_order_and_shadowing():
    tree = {"/etc/systemd/network": ["50-x.network", "10-a.network", "x.link"],
            "/usr/lib/systemd/network": ["10-a.network", "80-c.network"]}

    def listdir(d):
        if d not in tree:
            raise FileNotFoundError(d)
        return tree[d]
    assert netmgr_checks.networkd_files(listdir) == ["/etc/systemd/network/10-a.network",
                                                     "/etc/systemd/network/50-x.network",
                                                     "/usr/lib/systemd/network/80-c.network"]


# ---------------------------------------------------------------- 6./7. runtimes and binaries

CONTAINERD_V2 = """version = 2
root = "/var/lib/containerd"  # a comment

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
"""
CONTAINERD_V3 = """version = 3
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [
    "/opt/pycni/bin",
    "/opt/cni/bin",
  ]
"""


def test_runtime_configs_read_with_and_without_tomllib():
    for text in (CONTAINERD_V2, CONTAINERD_V3):
        assert runtime_checks._mini_toml(text) == runtime_checks.load_toml(text)
    p = runtime_checks.containerd_path(runtime_checks.load_toml(CONTAINERD_V2), "/etc/containerd/config.toml")
    assert (p.dirs, p.key, p.source) == (["/usr/lib/cni"], "bin_dir", "/etc/containerd/config.toml bin_dir")
    p = runtime_checks.containerd_path(runtime_checks.load_toml(CONTAINERD_V3), "/c.toml")
    assert p.dirs == ["/opt/pycni/bin", "/opt/cni/bin"] and p.key == "bin_dirs"
    p = runtime_checks.containerd_path({"version": 2}, "/c.toml")
    assert p.dirs == ["/opt/cni/bin"] and p.key is None and "containerd's default" in p.source
    assert runtime_checks.containerd_path({"disabled_plugins": ["cri"]}, "/c.toml") is None


def test_crio_drop_ins_override_in_name_order():
    toml = runtime_checks.load_toml
    docs = [("/etc/crio/crio.conf", toml('[crio.network]\nplugin_dirs = ["/opt/cni/bin/"]\n')),
            ("/etc/crio/crio.conf.d/10-a.conf", toml('[crio.network]\nnetwork_dir = "/x"\n')),
            ("/etc/crio/crio.conf.d/20-b.conf",
             runtime_checks.load_toml('[crio.network]\nplugin_dirs = ["/usr/libexec/cni"]\n'))]
    p = runtime_checks.crio_path(docs)
    assert (p.dirs, p.source) == (["/usr/libexec/cni"], "/etc/crio/crio.conf.d/20-b.conf plugin_dirs")
    assert runtime_checks.crio_path([]).dirs == ["/opt/cni/bin"]


def test_find_in_path_takes_the_first_regular_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "flannel").mkdir()                       # a directory is not a plugin
    (b / "flannel").write_text("x")
    assert runtime_checks.find_in_path("flannel", [str(a), str(b)]) == str(b / "flannel")
    assert runtime_checks.find_in_path("bridge", [str(a), str(b)]) is None


def _buildinfo(version, modinfo):
    def s(b):
        n, out = len(b), b""
        while True:
            out += bytes([(n & 0x7f) | (0x80 if n > 0x7f else 0)])
            n >>= 7
            if not n:
                return out + b
    hdr = runtime_checks.GO_MAGIC + bytes([8, 2]) + b"\0" * 16
    return b"\x7fELF" + b"\0" * 100 + hdr + s(version) + s(b"0" * 16 + modinfo + b"1" * 16)


def test_go_buildinfo_and_origin(tmp_path):
    mod = (b"path\tgithub.com/flannel-io/cni-plugin\n"
           b"mod\tgithub.com/flannel-io/cni-plugin\tv1.4.0-flannel1\th1:x=\n")
    data = _buildinfo(b"go1.21.5", mod)
    assert runtime_checks.go_buildinfo(data) == ("go1.21.5", "github.com/flannel-io/cni-plugin",
                                                 {"github.com/flannel-io/cni-plugin": "v1.4.0-flannel1"})
    f = tmp_path / "flannel"
    f.write_bytes(data)
    ours, what = runtime_checks.origin(str(f), owner=lambda p: None)
    assert not ours and what.startswith("a Go binary: github.com/flannel-io/cni-plugin v1.4.0-flannel1, "
                                        "built with go1.21.5; kube-flannel's flannel plugin")
    ours, what = runtime_checks.origin(str(f), owner=lambda p: "flannel-cni")
    assert what.endswith("; installed by the package flannel-cni")
    launcher = tmp_path / "bridge"
    launcher.write_text('#!/usr/bin/python3 -IS\n# pycni-launcher: runs "bridge" of the pycni suite\n')
    assert runtime_checks.origin(str(launcher), owner=lambda p: None) == (
        True, "pycni's launcher (py form, runs /usr/bin/python3 -IS)")
    script = tmp_path / "other"
    script.write_text("#!/bin/sh\nexec true\n")
    assert runtime_checks.origin(str(script), owner=lambda p: None) == (False, "a script (#!/bin/sh)")
    bundle = tmp_path / "bin"
    (bundle / ".pycni").mkdir(parents=True)
    (bundle / "pycni").write_bytes(b"\x7fELF" + b"\0" * 60)
    os.symlink("pycni", str(bundle / "flannel"))
    assert runtime_checks.origin(str(bundle / "flannel"), owner=lambda p: None) == (
        True, "pycni's bundle (-> %s) (PyInstaller)" % (bundle / "pycni"))


def test_elf_interp_names_the_loader():
    with open("/bin/sh", "rb") as f:
        interp = runtime_checks._elf_interp(f.read(1 << 16))
    assert interp is None or interp.startswith("/lib")
    # a 64-bit little-endian header with one PT_INTERP entry
    path = b"/lib/ld-musl-x86_64.so.1\0"
    ehdr = b"\x7fELF\x02\x01" + b"\0" * 26 + struct.pack("<Q", 64) + b"\0" * 14 + struct.pack("<HH", 56, 1)
    ehdr += b"\0" * (64 - len(ehdr))
    phdr = struct.pack("<IIQQQQQQ", 3, 4, 120, 0, 0, len(path), len(path), 1)
    assert runtime_checks._elf_interp(ehdr + phdr + path) == "/lib/ld-musl-x86_64.so.1"


def test_needed_plugins_include_what_containerd_runs_itself():
    from cnilib.ops import runner
    net = runner.list_from_bytes(json.dumps({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
        {"type": "flannel"}, {"type": "portmap"}]}).encode(), "/d/10.conflist")
    got = dict(runtime_checks.needed_plugins([net], containerd=True))
    assert sorted(got) == ["bridge", "flannel", "host-local", "loopback", "portmap"]
    assert got["loopback"] == [("containerd's pod loopback", "0.3.1")]
    assert "loopback" not in dict(runtime_checks.needed_plugins([net], containerd=False))
