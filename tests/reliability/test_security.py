"""Security: state files, symlinks, world-writable dirs, shells, derived names,
and the plugin's own netns.

* state files and the directories holding them are never world-writable,
  even when the runtime runs the plugins with umask 000;
* a symlink planted where a state file, lease, lock, saved config or cache
  entry goes is never followed (the file it points at is untouched) and the
  plugin answers with a result or a well-formed CNI error;
* a world-writable state dir is refused (code 5) before anything is made;
* no shell anywhere in cnilib/ and plugins/ (AST scan);
* names with nftables/iptables metacharacters (ifname, pod name) work, and
  every table and chain name is derived (hashes), never the raw input;
* every plugin refuses, on every verb that takes a netns, a CNI_NETNS that
  is its own network namespace (code 8), changing nothing.
"""

import ast
import json
import os
import re
import stat

import pytest
from cnitest import assert_cni_error
from relnode import NETWORKS, PY_ONLY, ROOT, diff

pytestmark = pytest.mark.root

PLUGINS = ("bridge", "host-local", "flannel", "portmap", "firewall", "tuning", "loopback")


def walk(top):
    for base, dirs, files in os.walk(top):
        for n in dirs + files:
            yield os.path.join(base, n)


# ---- modes ------------------------------------------------------------------------------------

@PY_ONLY
def test_state_is_never_world_writable_even_with_umask_000(rnode):
    for d in ("flannel", "ipam", "tuning", "cache", "run"):
        rnode.p[d] = os.path.join(rnode.tmp, "deep", d, "a", "b")     # parents made by the plugins
    for net, plugins_ in rnode.conflists().items():
        with open(os.path.join(rnode.conf_dir, "%s.conflist" % net), "w") as f:
            json.dump({"name": net, "cniVersion": "1.1.0", "plugins": plugins_}, f)
    old = os.umask(0)
    try:
        for net in NETWORKS:
            rnode.add(net, net + "1")
    finally:
        os.umask(old)
    made = list(walk(os.path.join(rnode.tmp, "deep")))
    assert any("/ipam/" in p for p in made) and any("/flannel/" in p for p in made)
    loose = ["%s %o" % (p, os.lstat(p).st_mode & 0o7777) for p in made
             if os.lstat(p).st_mode & 0o002 and not stat.S_ISLNK(os.lstat(p).st_mode)]
    assert loose == []
    for net in NETWORKS:
        rnode.delete(net, net + "1")


# ---- planted symlinks ---------------------------------------------------------------------------

def plant(path, victim):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(victim, path)


def victim_file(rnode, name):
    v = os.path.join(rnode.tmp, "victim-" + name)
    with open(v, "w") as f:
        f.write("precious\n")
    os.chmod(v, 0o644)
    return v


def assert_untouched(v):
    with open(v) as f:
        assert f.read() == "precious\n"
    assert os.stat(v).st_mode & 0o7777 == 0o644


PLANTS = {
    # name -> (network, path under the node's tmp dir, what must still work)
    "flannel saved config": ("cbr0", "flannel/%(cid)s"),
    "host-local lease": ("bnet", "ipam/bnet/10.99.0.2"),
    "host-local round-robin cursor": ("bnet", "ipam/bnet/last_reserved_ip.0"),
    "host-local lock": ("bnet", "ipam/bnet/lock"),
    "tuning record": ("bnet", "tuning/bnet/%(cid)s:eth0.json"),
    "tuning lock": ("bnet", "tuning/bnet/.lock"),
    "runner cache entry": ("bnet", "cache/results/bnet-%(cid)s-eth0"),
    "iptables lock": ("bnet", "run/iptables.lock"),
}


@PY_ONLY
@pytest.mark.parametrize("what", sorted(PLANTS))
def test_a_planted_symlink_is_never_followed(rnode, what):
    net, rel = PLANTS[what]
    cid = "sym1"
    for n in NETWORKS:                   # state dirs exist, as on a node in use
        rnode.add(n, "warm1")
        rnode.delete(n, "warm1")
    victim = victim_file(rnode, "a")
    path = os.path.join(rnode.tmp, rel % {"cid": cid})
    if os.path.lexists(path):
        os.unlink(path)
    plant(path, victim)
    runs = [rnode.pycni("add", net, cid), rnode.pycni("del", net, cid), rnode.pycni("del", net, cid)]
    assert_untouched(victim)
    for r in runs:
        assert "Traceback" not in r.stdout + r.stderr, r
        assert r.rc in (0, 1), r
        if r.rc == 1:
            assert re.search(r"code (5|11) ", r.stderr), r     # an I/O error naming the path
    if runs[0].rc == 0:                  # it worked around the link: the DELs cleaned up
        assert runs[1].rc == 0 and runs[2].rc == 0, runs
        assert rnode.rules() == set() and rnode.veths() == []
    # and a DEL of an attachment whose state is a planted link succeeds without following it
    if what in ("flannel saved config", "tuning record", "runner cache entry"):
        if os.path.lexists(path):
            os.unlink(path)
        plant(path, victim_file(rnode, "b"))
        r = rnode.pycni("del", net, cid)
        assert r.rc == 0, r
        assert_untouched(os.path.join(rnode.tmp, "victim-b"))


# ---- planted directory links ----------------------------------------------------------------------

PLANTED_DIRS = {
    # name -> (network, directory below a configured one, replaced by a link to the victim dir)
    "host-local network dir": ("bnet", "ipam/bnet"),
    "host-local index dir": ("bnet", "ipam/bnet/.pycni-attachments"),
    "flannel dataDir entry": ("cbr0", "flannel/other9"),
    "tuning network dir": ("bnet", "tuning/bnet"),
    "runner cache results": ("bnet", "cache/results"),
    "record dir (portmap)": ("cbr0", "state/nft/hostport"),
    "record dir (all kinds)": ("bnet", "state/nft"),
}


def victim_tree(rnode):
    """A directory of files named as what a DEL or a GC sweep would remove
    through a link (leases, index entries, records, cache entries, saved
    configs), with a subdir per record kind; {relative path: (bytes, mode)}."""
    v = os.path.join(rnode.tmp, "victim-dir")
    names = ["10.99.0.2", "10.99.0.3", "fd99::2", "sym1@eth0", "sym1:eth0.json", "sym1_eth0.json",
             "bnet-sym1-eth0", "cbr0-sym1-eth0", "sym1", "other9", "lock", ".lock", "passwd",
             "0123456789abcdef0123", ".pycni-tmp-1-dead"]
    for sub in ("", "masq", "hostport", "fw", "spoof"):
        os.makedirs(os.path.join(v, sub), exist_ok=True)
        for n in names:
            with open(os.path.join(v, sub, n), "w") as f:
                f.write('{"net": "bnet", "cid": "sym1", "if": "eth0"}\n')
            os.utime(os.path.join(v, sub, n), (1, 1))       # old enough for any temp sweep
    return v, tree(v)


def tree(top):
    out = {}
    for base, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(base, n)
            st = os.lstat(p)
            data = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data = f.read()
            out[os.path.relpath(p, top)] = (data, st.st_mode, st.st_mtime)
    return out


@PY_ONLY
@pytest.mark.parametrize("what", sorted(PLANTED_DIRS))
def test_a_planted_directory_link_is_never_followed(rnode, what):
    """ADD refuses it (code 5 naming it) or works around it without
    following it; DEL and GC (libcni's, through ``pycni gc --all``) never
    delete through it; the link stays, its target untouched, and the DELs
    leave the node clean."""
    import shutil
    net, rel = PLANTED_DIRS[what]
    rnode.add(net, "warm1")                       # the state dirs exist, as on a node in use
    rnode.delete(net, "warm1")
    victim, before = victim_tree(rnode)
    path = os.path.join(rnode.tmp, rel)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    plant(path, victim)
    runs = [rnode.pycni("add", net, "sym1"), rnode.pycni("del", net, "sym1"), rnode.pycni("del", net, "sym1"),
            rnode.pycni("gc", net, extra=["--all"])]
    assert tree(victim) == before
    assert os.path.islink(path) and os.readlink(path) == victim
    for r in runs:
        assert "Traceback" not in r.stdout + r.stderr, r
        assert r.rc in (0, 1), r
        if r.rc == 1:
            assert re.search(r"code 5 ", r.stderr) and path in r.stderr, r     # names the link
    assert runs[1].rc == 0 and runs[2].rc == 0, runs                          # DEL of it succeeds
    rnode.settle()
    assert rnode.rules() == set() and rnode.veths() == []


# ---- world-writable state dirs ------------------------------------------------------------------

WW = {
    "flannel dataDir": ("cbr0", "flannel"),
    "host-local network dir": ("bnet", "ipam/bnet"),
    "host-local dataDir": ("bnet", "ipam"),
    "tuning network dir": ("bnet", "tuning/bnet"),
    "runner cache": ("bnet", "cache/results"),
}


@PY_ONLY
@pytest.mark.parametrize("what", sorted(WW))
def test_a_world_writable_state_dir_is_refused(rnode, what):
    net, rel = WW[what]
    for n in NETWORKS:
        rnode.add(n, "warm1")
        rnode.delete(n, "warm1")
    d = os.path.join(rnode.tmp, rel)
    os.chmod(d, 0o777)
    base = rnode.snapshot()
    r = rnode.pycni("add", net, "ww1")
    assert r.rc == 1 and "world-writable" in r.stderr and "code 5 " in r.stderr, r
    rnode.pycni("del", net, "ww1")
    assert diff(base, rnode.snapshot()) == {}


# ---- no shell -------------------------------------------------------------------------------------

SHELLS = ("sh", "bash", "dash", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/env")


def shell_uses(path):
    """(line, what) of every way ``path`` could run a shell."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    out.append((node.lineno, "shell=..."))
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            if owner == "os" and (name in ("system", "popen") or name.startswith(("exec", "spawn"))):
                out.append((node.lineno, "os.%s" % name))
            if name in ("getoutput", "getstatusoutput", "spawn") and \
                    owner in ("subprocess", "commands", "pty"):
                out.append((node.lineno, "%s.%s" % (owner, name)))
        if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) >= 2:
            first, second = node.elts[0], node.elts[1]
            if isinstance(first, ast.Constant) and first.value in SHELLS and \
                    isinstance(second, ast.Constant) and second.value in ("-c", "-lc", "sh", "bash"):
                out.append((node.lineno, "argv %r" % [first.value, second.value]))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                re.search(r"(^|[\s/])(ba|da)?sh\s+-c\b", node.value):
            out.append((node.lineno, "string %r" % node.value[:40]))
    return out


def test_no_shell_anywhere():
    found = []
    for top in ("cnilib", "plugins"):
        for path in walk(os.path.join(ROOT, top)):
            if path.endswith(".py"):
                found += ["%s:%d %s" % (os.path.relpath(path, ROOT), ln, what)
                          for ln, what in shell_uses(path)]
    assert found == []


def test_the_shell_scan_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess\nos.system('x')\nsubprocess.run('x', shell=True)\n"
                   "os.popen('x')\nos.execv('/bin/x', [])\nsubprocess.run(['sh', '-c', 'x'])\n"
                   "a = 'bash -c x'\n")
    assert sorted(w for _l, w in shell_uses(str(bad))) == sorted([
        "os.system", "shell=...", "os.popen", "os.execv", "argv ['sh', '-c']", "string 'bash -c x'"])


# ---- derived names --------------------------------------------------------------------------------

METAS = ['a"b;c{d}$e#f', "x'y`z|&<>!", "if\\n*?[]()", "-j;ACCEPT\"#"]
TABLE = re.compile(r"^pycni-[a-z]+-[0-9a-f]{12}-[0-9a-f]{16}$")      # the previous design's
SHARED_TABLES = {"pycni-masq", "pycni-hostport", "pycni-fw", "pycni-spoof"}
KEYED = re.compile(r'comment "pycni [0-9a-f]{12}-[0-9a-f]{16} ')
SHARED = {"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ", "CNI-FORWARD",
          "CNI-ADMIN"}


@PY_ONLY
@pytest.mark.parametrize("ifname", METAS)
def test_names_with_rule_metacharacters_work_and_never_become_rule_names(rnode, ifname):
    assert len(ifname.encode()) <= 15
    pod = "K8S_POD_NAMESPACE=ns\"$x{}#;K8S_POD_NAME=p{o}d$(x)|&'\\"
    for net in NETWORKS:
        r = rnode.pycni("add", net, net + "m", ifname=ifname, env={"CNI_ARGS": pod})
        assert r.rc == 0, r
        assert ifname in rnode.pods[net + "m"].links().keys()
    text = rnode.nft() + rnode.iptables()
    tables = set(re.findall(r"^table \w+ (\S+)", rnode.nft(), re.M))
    chains = set(re.findall(r"^:(\S+)", rnode.iptables(), re.M))
    ours = {t for t in tables if t.startswith("pycni")}
    assert ours and all(t in SHARED_TABLES or TABLE.match(t) for t in ours), ours
    nft_chains = set(re.findall(r"^\s*chain (\S+) \{", rnode.nft(), re.M))
    assert not any(ifname in c for c in nft_chains), nft_chains
    cni = {c for c in chains if c.startswith("CNI")}
    assert all(c in SHARED or re.match(r"^CNI-(DN-|SN-)?[0-9a-f]{16,24}$", c) for c in cni), cni
    assert not any(ifname in n for n in tables | chains)
    assert KEYED.search(text) or "name: " in text                     # comments carry the key
    for path in walk(rnode.tmp):
        assert os.path.realpath(path).startswith(os.path.realpath(rnode.tmp) + "/"), path
    for net in NETWORKS:
        r = rnode.pycni("del", net, net + "m", ifname=ifname, env={"CNI_ARGS": pod})
        assert r.rc == 0, r
    rnode.settle()
    assert rnode.rules() == set() and rnode.veths() == []


# ---- the plugin's own netns -------------------------------------------------------------------------

def own_netns_conf(rnode, plugin):
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "10.99.0.9/24"}]}
    if plugin == "host-local":
        return dict(rnode.plugin_conf("bnet", "bridge"), type="host-local")
    if plugin == "loopback":
        return {"cniVersion": "1.1.0", "name": "bnet", "type": "loopback"}
    net = "cbr0" if plugin == "flannel" else "bnet"
    c = rnode.plugin_conf(net, plugin)
    if plugin in ("portmap", "firewall", "tuning"):
        c["prevResult"] = prev
        if plugin == "portmap":
            c["runtimeConfig"] = {"portMappings": [{"hostPort": 81, "containerPort": 80}]}
    return c


@pytest.mark.parametrize("verb", ["ADD", "CHECK", "DEL"])
@pytest.mark.parametrize("plugin", PLUGINS)
def test_every_plugin_refuses_its_own_netns(mnode, plugin, verb):
    """The node holds live attachments, and an eth0 of its own for the
    plugins to take down if they did not refuse."""
    node = mnode
    if "own_base" not in node.__dict__:
        for net in NETWORKS:
            node.add(net, "live-" + net)
        node.host.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        node.own_base = node.snapshot()
    for own in (node.host.path, "/proc/self/ns/net", "/proc/thread-self/ns/net"):
        r = node.exec_plugin(plugin, verb, own_netns_conf(node, plugin), cid="live-bnet", netns=own)
        err = assert_cni_error(r, 8)
        assert "own network namespace" in err["msg"], err
    now = node.snapshot()
    changed, node.own_base = diff(node.own_base, now), now
    assert changed == {}
