"""The pure parts of pycni doctor: conf dir findings, parsers, rendering, schema."""

import json
import os
import re

import pytest
from cnitest import schema_errors

from cnilib import flannel
from cnilib.base import errors
from cnilib.ops import doctor, runner
from cnilib.ops.doctor import config_checks, fabric_checks, main, node_checks, report, trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def net(path, name, *plugins, version="1.0.0"):
    data = json.dumps({"cniVersion": version, "name": name, "plugins": list(plugins)}).encode()
    return (path, runner.list_from_bytes(data, path))


FLANNEL = {"type": "flannel", "subnetFile": "/x/subnet.env", "delegate": {"hairpinMode": True}}
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
ENV = flannel.parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                               "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def bridge(subnet, name="cni1"):
    return {"type": "bridge", "bridge": name,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}}


def env_of(path):
    return ENV if path == "/x/subnet.env" else None


def test_one_config_passes_and_names_what_the_runtime_loads():
    st, summary, ev, fix = config_checks.conf_dir_findings(
        [net("/d/10-flannel.conflist", "cbr0", FLANNEL, PORTMAP)], env_of)
    assert st == "PASS" and "runtime loads 10-flannel.conflist (network cbr0)" in summary
    assert ev == ["1. 10-flannel.conflist: network cbr0 (flannel, portmap), cniVersion 1.0.0"]
    assert fix == []


def test_no_config_fails():
    assert config_checks.conf_dir_findings([])[0] == "FAIL"


def test_a_file_before_flannel_shadows_it():
    confs = [net("/d/05-old.conflist", "old", bridge("10.88.0.0/16")),
             net("/d/10-flannel.conflist", "cbr0", FLANNEL)]
    st, summary, ev, fix = config_checks.conf_dir_findings(confs, env_of, flannel_live=True)
    assert st == "FAIL" and "its flannel network cbr0 is shadowed" in summary
    assert fix == ["mv /d/05-old.conflist /root/   # the file shadowing the flannel conflist"]
    st, summary, _ev, _fix = config_checks.conf_dir_findings(confs, env_of, flannel_live=False)
    assert st == "WARN" and "the runtime's pod network is old (05-old.conflist" in summary


def test_duplicate_names_and_overlapping_subnets_fail():
    confs = [net("/d/10-flannel.conflist", "cbr0", FLANNEL),
             net("/d/20-dup.conf", "cbr0", bridge("10.99.0.0/16")),
             net("/d/30-other.conflist", "other", bridge("10.244.5.0/24"))]
    st, summary, ev, fix = config_checks.conf_dir_findings(confs, env_of)
    assert st == "FAIL"
    assert "network cbr0 is defined by 10-flannel.conflist, 20-dup.conf: libcni loads " \
           "10-flannel.conflist by name" in summary
    assert "networks cbr0 (10.244.0.0/16, 10-flannel.conflist) and other (10.244.5.0/24, " \
           "30-other.conflist) overlap" in summary
    assert "mv /d/20-dup.conf /root/   # a duplicate of cbr0" in fix


def test_conflist_wins_over_conf_of_the_same_name_whatever_the_order():
    confs = [net("/d/00-a.conf", "n", bridge("10.1.0.0/16")),
             net("/d/99-b.conflist", "n", bridge("10.1.0.0/16"))]
    _st, summary, _ev, fix = config_checks.conf_dir_findings(confs)
    assert "libcni loads 99-b.conflist by name" in summary and fix[0].startswith("mv /d/00-a.conf")


def test_unparsable_first_file_fails_later_one_warns():
    bad = ("/d/00-broken.conflist", errors.DecodingFailure("/d/00-broken.conflist: cannot decode"))
    good = net("/d/10-flannel.conflist", "cbr0", FLANNEL)
    st, summary, ev, fix = config_checks.conf_dir_findings([bad, good], env_of)
    assert st == "FAIL" and "the first file, 00-broken.conflist, does not load" in summary
    assert ev[0].startswith("1. 00-broken.conflist: does not load")
    st, summary, _ev, _fix = config_checks.conf_dir_findings([good, ("/d/99-x.conflist", bad[1])], env_of)
    assert st == "WARN" and "99-x.conflist does not load" in summary


def test_plugin_types_include_delegate_and_ipam():
    _p, n = net("/d/a.conflist", "cbr0", FLANNEL, PORTMAP)
    assert config_checks.plugin_types(n) == ["flannel", "bridge", "host-local", "portmap"]
    _p, n = net("/d/b.conflist", "x",
                {"type": "flannel", "delegate": {"type": "ipvlan"}, "ipam": {"type": "static"}},
                {"type": "bridge", "ipam": {"type": "dhcp"}})
    assert config_checks.plugin_types(n) == ["flannel", "ipvlan", "static", "bridge", "dhcp"]


def test_node_lists_and_annotations():
    assert fabric_checks.parse_node_list({"nodes": [{"name": "a", "publicIP": "1.1.1.1"},
                                             {"publicIP": "2.2.2.2"}]}) \
        == [("a", "1.1.1.1"), ("node 1", "2.2.2.2")]
    kubectl = {"kind": "List", "items": [
        {"metadata": {"name": "n1", "annotations": {
            "flannel.alpha.coreos.com/public-ip": "10.0.2.15",
            "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:01\"}"}}},
        {"metadata": {"name": "n2", "annotations": {
            "flannel.alpha.coreos.com/public-ip": "10.0.2.15",
            "flannel.alpha.coreos.com/public-ip-overwrite": "192.0.2.2"}}},
        {"metadata": {"name": "n3", "annotations": {"flannel.alpha.coreos.com/public-ip": "10.0.2.15"}}}]}
    got = fabric_checks.parse_annotations(kubectl)
    assert got == [("n1", "10.0.2.15", "aa:bb:cc:dd:ee:01"), ("n2", "192.0.2.2", None),
                   ("n3", "10.0.2.15", None)]
    assert fabric_checks.duplicates([(n, ip) for n, ip, _ in got]) == {"10.0.2.15": ["n1", "n3"]}
    assert fabric_checks.parse_annotations({"n1": {"flannel.alpha.coreos.com/public-ip": "1.2.3.4"}}) == \
        [("n1", "1.2.3.4", None)]


def test_remote_address_is_another_nodes_pod():
    import ipaddress
    n, local = ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("10.244.0.0/24")
    assert str(trace.remote_address(n, local)) == "10.244.1.2"
    assert trace.remote_address(local, local) is None


def _report(*checks):
    out = []
    for cid, st, summary, ev, fix in checks:
        c = report.Check(cid, cid.replace("-", " "))
        c.set(st, summary, ev, fix)
        out.append(c)
    loc = type("L", (), {"as_dict": lambda self: {"confDir": "/d"}})()
    return report.report(out, loc, ["cannot read /x"])


def test_human_output_one_line_per_check_details_under_failures():
    rep = _report(("conflists", "PASS", "fine", ["seen"], []),
                  ("forward-policy", "FAIL", "dropped", ["policy DROP"], ["iptables -P FORWARD ACCEPT"]),
                  ("br-netfilter", "SKIP", "no bridge netfilter", [], []),
                  ("mtu", "WARN", "odd", ["veth1 mtu 1500"], ["ip link set veth1 mtu 1450"]))
    assert rep["exit"] == 1 and rep["summary"] == {"PASS": 1, "WARN": 1, "FAIL": 1, "SKIP": 1}
    assert report.render(rep).splitlines() == [
        "pycni doctor %s: 4 checks, PASS 1  WARN 1  FAIL 1  SKIP 1" % rep["version"],
        "PASS  conflists       fine",
        "FAIL  forward-policy  dropped",
        "        policy DROP",
        "    fix: iptables -P FORWARD ACCEPT",
        "SKIP  br-netfilter    no bridge netfilter",
        "WARN  mtu             odd",
        "        veth1 mtu 1500",
        "    fix: ip link set veth1 mtu 1450",
        "note: cannot read /x",
        "pycni doctor: FAILED: see the fix lines above"]
    colored = report.render(rep, color=True)
    assert "\x1b[31;1mFAIL\x1b[0m  forward-policy" in colored


def test_human_output_escapes_names_from_pods_and_runtimes():
    """Evidence quotes interface and process names a pod chose: an ESC there
    drove the terminal of whoever ran doctor.  JSON stays exact."""
    rep = _report(("orphans", "FAIL", "veth \x1b]0;x\x07 has no pod",
                   ["veth1 peer \x1b[2J in pid 7 \x1b]2;owned\x07", "line\nforged"], ["ip link del \x1b"]))
    text = report.render(rep, color=True)
    body = text.replace("\x1b[31;1m", "").replace("\x1b[0m", "")        # doctor's own colours
    assert "\x1b" not in body and "\x07" not in body
    assert "        veth1 peer \\x1b[2J in pid 7 \\x1b]2;owned\\x07" in text.splitlines()
    assert "        line\\x0aforged" in text.splitlines()          # doctor escapes as \\xNN
    assert rep["checks"][0]["evidence"][0] == "veth1 peer \x1b[2J in pid 7 \x1b]2;owned\x07"


def test_exit_codes():
    ok = report.Check("a", "a").set("WARN", "w")
    broken = report.Check("b", "b")
    broken.error = "OSError: x"
    failed = report.Check("c", "c").set("FAIL", "f")
    assert report.exit_code([ok]) == 0
    assert report.exit_code([ok, broken]) == 2
    assert report.exit_code([ok, broken, failed]) == 1


def test_report_matches_its_schema():
    rep = _report(("conflists", "PASS", "fine", [], []), ("mtu", "FAIL", "x", ["e"], ["f"]))
    assert schema_errors(report.JSON_SCHEMA, rep) == []
    rep["checks"][0]["status"] = "OK"
    rep["extra"] = 1
    errs = schema_errors(report.JSON_SCHEMA, rep)
    assert any("'OK' not in" in e for e in errs) and any("unexpected key 'extra'" in e for e in errs)


def _schema_block(text, start):
    i = text.index(start)
    j = text.index("{", i)
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return json.loads(text[j:k + 1])
    raise AssertionError("unterminated schema")


def test_schema_in_readme_is_the_one_in_the_code():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert _schema_block(readme, "pycni-doctor/1 JSON Schema") == report.JSON_SCHEMA


def test_every_check_is_documented():
    for cid in main.CHECK_IDS:
        assert re.search(r"^  %s\s" % re.escape(cid), doctor.__doc__, re.M), cid
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    for cid in main.CHECK_IDS:
        assert "`%s`" % cid in readme, cid


def test_unknown_check_is_a_usage_error(capsys):
    assert main.main(["--only", "nope"]) == 2
    assert "unknown check nope" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"]])
def test_help_lists_checks(argv, capsys):
    with pytest.raises(SystemExit):
        main.main(argv)
    out = capsys.readouterr().out
    assert "forward-policy" in out and "Exit status: 0 healthy" in out


def test_rule_checks_cannot_pass_without_the_rules():
    from types import SimpleNamespace
    node = SimpleNamespace(raw_rules={"unread": {"nft": "nft: Operation not permitted (you must be root)",
                                                  6: "ip6tables-save: denied"}}, rows=[], groups=[])
    checks = main.run_checks(SimpleNamespace(node=node), only=["leftover-rules"])
    c = checks[0].as_dict()
    assert (c["status"], c["summary"]) == ("SKIP", "could not read the firewall rules (run as root)")
    assert c["error"] == "nft: Operation not permitted (you must be root)"
    assert report.exit_code(checks) == 2


def _sysctl_ctx(values, bridges=True):
    from types import SimpleNamespace
    return SimpleNamespace(bridge_networks=lambda: [("cbr0", "cni0", ["10.244.1.0/24"],
                                                     True)] if bridges else [],
                           sysctl=lambda name: values.get(name))


def test_br_netfilter_skips_with_the_reason_where_the_kernel_lacks_it():
    c = report.Check("br-netfilter", "")
    node_checks.check_br_netfilter(_sysctl_ctx({}), c)
    assert c.status == "SKIP" and "the kernel has no bridge netfilter in this netns" in c.summary
    assert c.fix == ["modprobe br_netfilter && echo br_netfilter > /etc/modules-load.d/br_netfilter.conf"]
    c = report.Check("br-netfilter", "")
    node_checks.check_br_netfilter(_sysctl_ctx({"net/bridge/bridge-nf-call-iptables": "0",
                                           "net/bridge/bridge-nf-call-ip6tables": "0"}), c)
    assert c.status == "WARN" and c.fix[0].startswith("sysctl -w net.bridge.bridge-nf-call-iptables=1")
    c = report.Check("br-netfilter", "")
    node_checks.check_br_netfilter(_sysctl_ctx({}, bridges=False), c)
    assert c.status == "SKIP" and c.summary == "no bridge network configured"
