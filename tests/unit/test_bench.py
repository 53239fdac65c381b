"""The benchmark's pure parts (percentiles, targets, rows, the table), and a
smoke run of ``python -m bench --quick --only version`` (root, slow)."""

import json
import os
import subprocess
import sys

import pytest
from cnitest import ROOT

from bench import stats, workloads
from bench.__main__ import parse_args
from bench.stats import Row, Target


def test_percentile_interpolates_between_ranks():
    xs = [5, 1, 4, 2, 3]
    assert stats.percentile(xs, 50) == 3
    assert stats.percentile(xs, 0) == 1
    assert stats.percentile(xs, 100) == 5
    assert stats.percentile(list(range(1, 11)), 90) == pytest.approx(9.1)
    assert stats.percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert stats.percentile([7.5], 99) == 7.5
    assert stats.percentile([], 50) is None


def test_summarize_skips_failed_samples():
    s = stats.summarize([10, -1, 30, None, 20])
    assert s["n"] == 3 and s["p50"] == 20 and s["min"] == 10 and s["max"] == 30
    assert s["mean"] == 20
    assert stats.summarize([-1]) == {"n": 0}


def test_ratio_and_growth():
    assert stats.ratio(30, 10) == 3
    assert stats.ratio(None, 10) is None and stats.ratio(3, None) is None and stats.ratio(3, 0) is None
    lat = [10.0] * 20 + [99.0] * 60 + [12.0] * 20
    g = stats.growth(lat, 20)
    assert g["first"] == 10 and g["last"] == 12 and g["growth_pct"] == pytest.approx(20)
    assert stats.growth(lat[:39], 20) is None              # windows would overlap
    assert stats.growth([-1] * 40, 20) is None              # nothing but failures
    # medians (p50s), as issue 20's target reads: one slow pod moves nothing
    g = stats.growth([10.0] * 19 + [500.0] + [11.0] * 20, 20)
    assert g["first"] == 10 and g["last"] == 11


@pytest.mark.parametrize("target,value,verdict", [
    (Target("ms", "<=", 15, ["py"]), 15.0, "PASS"),
    (Target("ms", "<=", 15, ["py"]), 15.1, "MISS"),
    (Target("ratio", "<=", 0.5, ["py"]), 0.49, "PASS"),
    (Target("throughput", ">=", 1.0, ["py"]), 0.99, "MISS"),
    (Target("growth", "<", 10, ["py"]), 10.0, "MISS"),
    (Target("growth", "<", 10, ["py"]), -3.0, "PASS"),
    (Target("ratio", "<=", 3.0, ["py"]), None, None),
])
def test_target_check(target, value, verdict):
    assert target.check(value) == verdict


def test_target_text():
    assert Target("ms", "<=", 15, ["py"]).text() == "p50 <= 15 ms"
    assert Target("ratio", "<=", 3, ["py"]).text() == "<= 3.0x Go"
    assert Target("throughput", ">=", 1, ["py"]).text() == ">= 1.0x Go"
    assert Target("growth", "<", 10, ["py"]).text() == "growth < 10%"
    assert Target("ms", "<=", 15, ["py"]).applies("py")
    assert not Target("ms", "<=", 15, ["py"]).applies("bin")


VARIANTS = [("go", "Go", None), ("py", "py", None), ("bin", "bundle", None),
            ("agent", "py+agent", "n/a (not built)")]


def test_latency_rows_ratio_targets_and_status():
    results = {"go": {"samples": [10, 10, 10], "errors": 0},
               "py": {"samples": [25, 25, 26], "errors": 0},
               "bin": {"samples": [50, 50], "errors": 2}}
    targets = [Target("ratio", "<=", 3.0, ["py"]), Target("ratio", "<=", 1.0, ["agent"])]
    go, py, bundle, agent = stats.latency_rows("bridge ADD", VARIANTS, results, targets)
    assert go.p50 == 10 and go.ratio is None and go.verdict is None
    assert py.ratio == 2.5 and py.verdict == "PASS" and py.target == "<= 3.0x Go"
    assert bundle.ratio == 5 and bundle.target is None and bundle.verdict == "ERR 2"
    assert agent.text == "n/a (not built)" and agent.target == "<= 1.0x Go" and agent.verdict is None


def test_latency_rows_ms_target_and_missing_baseline():
    results = {"py": {"samples": [16, 16, 16], "errors": 0}}
    rows = stats.latency_rows("VERSION", [("go", "Go", "n/a (no /usr/lib/cni)"), ("py", "py", None)],
                              results, [Target("ms", "<=", 15, ["py"])])
    assert rows[0].text.startswith("n/a")
    assert rows[1].ratio is None and rows[1].verdict == "MISS"
    ratio_only = stats.latency_rows("x", [("go", "Go", None), ("py", "py", None)],
                                    {"py": {"samples": [1]}}, [Target("ratio", "<=", 1, ["py"])])
    assert ratio_only[0].text == "no samples" and ratio_only[1].verdict is None


def test_throughput_rows():
    rates = {"go": (29.0, 200, 0), "py": (31.9, 200, 0), "bin": (20.0, 199, 1)}
    go, py, bundle, agent = stats.throughput_rows("p8 ADD", VARIANTS, rates,
                                                  [Target("throughput", ">=", 1.0, ["py", "bin"])])
    assert py.ratio == pytest.approx(1.1) and py.verdict == "PASS" and py.unit == "/s"
    assert bundle.verdict == "ERR 1"
    assert agent.text == "n/a (not built)"


def test_growth_row():
    t = Target("growth", "<", 10, ["py"])
    r = stats.growth_row("growth", "py", "py", {"first": 20.0, "last": 21.0, "growth_pct": 5.0}, t)
    assert r.text == "20.0 -> 21.0 ms (+5%)" and r.verdict == "PASS"
    assert stats.growth_row("growth", "go", "Go", None).text == "too few samples"


def test_checks():
    assert stats.check_unique([["10.0.0.2/22"], ["10.0.0.3/22"], ["10.0.0.2/22"], None]) == (2, 1)
    before = {"veths": ["a"], "nft": ["rule x", "rule y"], "leases": []}
    after = {"veths": ["a", "b"], "nft": ["rule x", "rule y", "rule y"], "leases": []}
    assert stats.leftovers(before, after) == {"veths": 1, "nft": 1, "leases": 0}
    assert stats.leftovers(after, before) == {"veths": 0, "nft": 0, "leases": 0}
    text, verdict = stats.check_text(200, 200, 200, 0, {"veths": 0, "leases": 0})
    assert verdict == "OK" and text == "200/200 ADDs, 200 unique IPs; left: nothing"
    text, verdict = stats.check_text(200, 199, 198, 1, {"veths": 2, "leases": 0})
    assert verdict == "FAIL" and "1 duplicates" in text and "2 veths" in text


def _rows():
    return [Row("VERSION exec", "Go", 100, 2.41, 2.9, 3.5),
            Row("VERSION exec", "py", 100, 9.83, 10.5, 12.04, ratio=4.08, target="p50 <= 15 ms",
                verdict="PASS"),
            Row("VERSION exec", "bundle", text="n/a (not built)", target="p50 <= 45 ms"),
            Row("pods p8 ADD throughput", "Go", 200, 29.04, unit="/s"),
            Row("pods p8 check", "py", text="200/200 ADDs, 200 unique IPs; left: nothing", verdict="OK")]


def test_render_text():
    lines = stats.render_text(_rows()).splitlines()
    assert lines[0].split() == ["workload", "variant", "n", "median", "p90", "p99", "vs", "Go",
                                "target", "result"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].startswith("VERSION exec") and "2.4" in lines[2]
    assert lines[3].startswith(" ") and lines[3].split() == ["py", "100", "9.8", "10.5", "12.0", "4.08",
                                                                  "p50", "<=", "15", "ms", "PASS"]
    # the numbers right-align under their headers
    col = lines[0].index("median") + len("median")
    assert lines[2][:col].endswith("2.4") and lines[3][:col].endswith("9.8")
    assert "n/a (not built)" in lines[4] and lines[4].rstrip().endswith("p50 <= 45 ms")
    assert "29.0/s" in lines[5]
    assert lines[6].rstrip().endswith("OK")
    # the target column lines up for numeric and text rows
    assert lines[3].index("p50 <=") == lines[4].index("p50 <=")


def test_render_markdown():
    lines = stats.render_markdown(_rows()).splitlines()
    assert len(lines) == 2 + 5
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert lines[3].startswith("|  | py | 100 | 9.8 | 10.5 | 12.0 | 4.08 | p50 <= 15 ms | PASS |")


def test_fmt_num():
    assert stats.fmt_num(2.449) == "2.4" and stats.fmt_num(123.6) == "124" and stats.fmt_num(None) == ""


def test_targets_are_the_issues():
    assert [t.text() for t in workloads.T_VERSION] == ["p50 <= 15 ms", "p50 <= 15 ms"]
    assert workloads.T_BRIDGE_ADD[0].value == 3.0 and workloads.T_BRIDGE_ADD[1].variants == ("agent",)
    assert workloads.T_CHAIN_DEL[0].value == 0.5 and workloads.T_PORTMAP[0].value == 0.5
    # issue 20: the bundle against Go, and pod 1,000 against pod 1 (py)
    bundle = {(t.kind, t.value) for ts in (workloads.T_VERSION, workloads.T_BRIDGE_ADD, workloads.T_CHAIN_ADD,
                                           workloads.T_THROUGHPUT_ADD) for t in ts if t.applies("bin")}
    assert bundle == {("ms", 15), ("ratio", 1.0), ("ratio", 0.7), ("throughput", 1.2)}
    assert not [t for t in workloads.T_THROUGHPUT if t.applies("bin")]      # DEL: no bundle goal
    assert workloads.T_GROWTH.variants == ("py",)
    assert workloads.T_GROWTH.check(30.0) == "PASS" and workloads.T_GROWTH.check(30.1) == "MISS"


def test_configs_are_json_and_reference_shaped():
    class V:
        ipam_dir = "/tmp/x/ipam"
    conf = workloads.conflist("n", "1.0.0", [workloads.bridge_plugin(V, "cni-br", "10.10.0.0/16"),
                                             workloads.portmap_plugin()])
    assert json.loads(json.dumps(conf)) == conf
    br = conf["plugins"][0]
    assert br["ipMasq"] is True and br["ipam"]["type"] == "host-local" and br["ipam"]["dataDir"] == V.ipam_dir
    assert len(workloads.MAPPINGS) == 3


def test_parse_args():
    a = parse_args(["--forms", "py,bin", "--quick", "--only", "version", "loopback"])
    assert a.forms == ["py", "bin"] and a.quick and a.only == ["version", "loopback"]
    assert parse_args([]).forms == ["py", "bin", "agent"]
    with pytest.raises(SystemExit):
        parse_args(["--forms", "py,rust"])
    with pytest.raises(SystemExit):
        parse_args(["--only", "nonsense"])


def test_parse_args_in_a_root():
    """--root: our forms only (the machine's Go plugins and the agent stay
    out), the workloads that run there; --python must be absolute."""
    a = parse_args(["--root", "11"])
    assert a.root == "11" and a.forms == ["py", "bin"] and a.go == "none"
    assert a.only == ["version", "loopback", "host-local", "portmap", "bridge", "chain"]
    assert parse_args(["--root", "13", "--only", "bridge"]).only == ["bridge"]
    for bad in (["--root", "10"], ["--root", "11", "--forms", "py,agent"], ["--root", "11", "--go", "/x"],
                ["--root", "12", "--only", "pods"], ["--python", "python3.9"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert parse_args(["--python", "/usr/bin/python3.13"]).python == "/usr/bin/python3.13"


def test_retarget_rewrites_only_launchers(tmp_path):
    from bench import plumbing
    (tmp_path / "bridge").write_text("#!/usr/bin/python3 -IS\n# pycni-launcher: runs bridge\nmain()\n")
    (tmp_path / "other").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "pycni.d").mkdir()
    plumbing.retarget(str(tmp_path), "/opt/py/bin/python3.12")
    head, rest = (tmp_path / "bridge").read_text().split("\n", 1)
    assert head == "#!/opt/py/bin/python3.12 -IS" and rest == "# pycni-launcher: runs bridge\nmain()\n"
    assert (tmp_path / "other").read_text() == "#!/bin/sh\necho hi\n"
    assert os.access(tmp_path / "bridge", os.X_OK)


@pytest.mark.root
@pytest.mark.slow
def test_quick_version_run(tmp_path):
    if not os.path.isdir(os.path.join(ROOT, "dist", "py")):
        pytest.skip("dist/py is not built (./build.sh)")
    out = tmp_path / "bench.json"
    p = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--only", "version", "--json", str(out)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    assert "VERSION exec (loopback)" in stdout and "machine:" in stdout
    data = json.loads(out.read_text())
    rows = {(r["workload"], r["variant"]): r for r in data["rows"]}
    assert rows["VERSION exec (loopback)", "py"]["n"] == 10
    assert rows["VERSION exec (loopback)", "py"]["target"] == "p50 <= 15 ms"
    if os.path.isdir("/usr/lib/cni"):
        assert rows["VERSION exec (loopback)", "Go"]["p50"] > 0
    # its namespaces and temp dir are gone
    assert not [n for n in os.listdir("/var/run/netns") if n.startswith("pcbench%d-" % p.pid)]


def test_importtime_parse_and_summary():
    from bench import importtime
    text = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        100 |   _json",
        "import time:       200 |        300 | cnilib.base.jsonio",
        "import time:      2000 |       3500 |     re",
        "import time:      1000 |       5000 |   pyroute2.netlink",
        "import time:      4000 |      9000 | cnilib.kernel.netlink",
        "unrelated line"])
    entries = importtime.parse(text)
    assert entries[0] == (1, "_json", 100, 100) and entries[3] == (1, "pyroute2.netlink", 1000, 5000)
    assert entries[2][0] == 2
    total, heavy = importtime.summary(entries, top=3)
    assert total == pytest.approx(9.3)
    assert heavy == [("cnilib.kernel.netlink", 9.0), ("pyroute2.netlink", 5.0), ("re", 3.5)]
