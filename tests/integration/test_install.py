"""pycni install / uninstall (./build.sh install is a thin call to it), both forms.

Every test installs into temp dirs; the host-root tests chroot into a
read-only view of a cached Debian root, in a private mount namespace.
"""

import json
import os
import shutil
import subprocess
import threading

import cnitest
import distroots
import pytest
from cnitest import ROOT

pytestmark = pytest.mark.root
FORMS = {"py": "py", "bin": "bundle"}
PLUGINS = ("bridge", "host-local", "flannel", "portmap", "loopback", "firewall", "tuning")


def _build_sh(*args):
    return subprocess.run([os.path.join(ROOT, "build.sh")] + list(args), capture_output=True,
                          text=True, timeout=120)


def pycni(form, verb, *args, env=None, prefix=()):
    e = {"PATH": os.environ["PATH"], "PYCNI_LOG": os.environ.get("PYCNI_LOG", "off")}
    e.update(env or {})
    exe = os.path.join(cnitest.plugin_dir(form), "pycni")
    return subprocess.run(list(prefix) + [exe, verb] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=180, env=e)


def _version(path):
    p = subprocess.run([str(path)], env={"CNI_COMMAND": "VERSION", "PYCNI_LOG": "off"},
                       input=b'{"cniVersion":"1.0.0"}', capture_output=True, timeout=30)
    return p.returncode, p.stdout


def snapshot(*dirs):
    return cnitest.tree_snapshot(*dirs)


def settled(snap):
    """A snapshot without the times of directories, where a refused tree was
    made and removed again (every entry and every file's times still count)."""
    import stat
    return {k: (v[:2] + v[4:] if stat.S_ISDIR(v[1]) else v) for k, v in snap.items()}


def go_dir(tmp_path):
    d = tmp_path / "cni" / "bin"
    d.mkdir(parents=True)
    # what a node already has: a Go plugin we replace, one we do not ship
    (d / "bridge").write_bytes(b"\x7fELF old go bridge")
    (d / "macvlan").write_bytes(b"\x7fELF go macvlan")
    for p in (d / "bridge", d / "macvlan"):
        os.chmod(p, 0o755)
    return d


def variant(form, tmp_path, tag):
    """A copy of dist/<form> that differs by one byte: another "version"."""
    dst = tmp_path / ("tree-" + tag)
    shutil.copytree(cnitest.plugin_dir(form), dst, symlinks=True)
    marker = dst / ("pycni.d" if form == "py" else ".pycni") / "pycni-build-tag"
    marker.write_text(tag + "\n")
    return dst


def test_install_backs_up_and_uninstall_restores(form, tmp_path):
    d = go_dir(tmp_path)
    r = _build_sh("install", "--form", FORMS[form], str(d))
    assert r.returncode == 0, r.stderr
    for name in PLUGINS:
        rc, out = _version(d / name)
        assert rc == 0 and b'"cniVersion":"1.0.0"' in out, (name, out)
        assert os.readlink(d / name).startswith(".pycni-versions/")
    p = subprocess.run([str(d / "pycni"), "--version"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "pycni" in p.stdout
    assert (d / ".pycni-backup" / "bridge").read_bytes() == b"\x7fELF old go bridge"
    assert (d / "macvlan").read_bytes() == b"\x7fELF go macvlan"        # untouched
    assert "answer VERSION on this machine" in r.stdout
    state = json.loads((d / ".pycni-install.json").read_text())
    assert state["schema"] == "pycni-install/1" and state["backups"] == ["bridge"]
    assert state["form"] == FORMS[form]
    # a second install of another build keeps the original backup, not our own bridge
    assert pycni(form, "install", "--from", variant(form, tmp_path, "b"), d).returncode == 0
    assert (d / ".pycni-backup" / "bridge").read_bytes() == b"\x7fELF old go bridge"
    r = _build_sh("uninstall", str(d))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(d)) == ["bridge", "macvlan"]
    assert (d / "bridge").read_bytes() == b"\x7fELF old go bridge"
    # uninstalling nothing succeeds
    r = _build_sh("uninstall", str(d))
    assert r.returncode == 0 and "nothing of pycni is installed" in r.stdout


def test_rerun_changes_nothing(form, tmp_path):
    d, conf = go_dir(tmp_path), tmp_path / "net.d"
    r = pycni(form, "install", "--conf-dir", conf, "--network", "flannel", d)
    assert r.returncode == 0, r.stderr
    assert (conf / "10-flannel.conflist").read_bytes() == \
        open(os.path.join(ROOT, "conf", "10-flannel.conflist"), "rb").read()
    before = snapshot(d, conf)
    r = pycni(form, "install", "--conf-dir", conf, "--network", "flannel", d)
    assert r.returncode == 0, r.stderr
    assert "nothing changed" in r.stdout
    assert snapshot(d, conf) == before
    # the installed pycni installing itself is a no-op too
    r = subprocess.run([str(d / "pycni"), "install", "--conf-dir", str(conf), "--network", "flannel",
                        str(d)], capture_output=True, text=True, env={"PYCNI_LOG": "off"}, timeout=120)
    assert r.returncode == 0 and "nothing changed" in r.stdout, r.stdout + r.stderr
    assert snapshot(d, conf) == before


def test_conflist_from_a_file_written_when_absent_or_changed(form, tmp_path):
    d, conf = tmp_path / "bin", tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-mine.conflist").write_text('{"old": 1}')
    cm = tmp_path / "cm"
    cm.mkdir()
    src = cm / "10-mine.conflist"
    src.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}))
    assert pycni(form, "install", "--conf-dir", conf, "--conflist", src, d).returncode == 0
    assert (conf / "10-mine.conflist").read_text() == src.read_text()
    assert (conf / ".pycni-backup" / "10-mine.conflist").read_text() == '{"old": 1}'
    before = snapshot(d, conf)
    r = pycni(form, "install", "--conf-dir", conf, "--conflist", src, d)
    assert "nothing changed" in r.stdout and snapshot(d, conf) == before
    # the ConfigMap changes: only the conflist is rewritten
    src.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "loopback"}]}))
    r = pycni(form, "install", "--conf-dir", conf, "--conflist", src, d)
    assert r.returncode == 0 and "written (it differed)" in r.stdout, r.stdout
    # (the install record notes the conflist's new digest; the plugins stay)
    def plugins_of(snap):
        return {k: v for k, v in snap.items() if k.startswith(str(d) + "/") and
                not k.endswith(".pycni-install.json")}
    assert plugins_of(snapshot(d)) == plugins_of(before)
    assert json.loads((conf / "10-mine.conflist").read_text())["plugins"][0]["type"] == "loopback"
    # not JSON: refused, nothing changed
    bad = cm / "20-bad.conflist"
    bad.write_text("{nope")
    before = snapshot(d, conf)
    r = pycni(form, "install", "--conf-dir", conf, "--conflist", bad, d)
    assert r.returncode == 1 and "is not JSON" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(d, conf) == before
    # uninstall puts the original back
    assert pycni(form, "uninstall", "--conf-dir", conf, d).returncode == 0
    assert (conf / "10-mine.conflist").read_text() == '{"old": 1}'
    assert sorted(os.listdir(conf)) == ["10-mine.conflist"]


def test_upgrade_switches_every_name_and_keeps_the_previous_tree(form, tmp_path):
    d = go_dir(tmp_path)
    trees = [variant(form, tmp_path, t) for t in "abc"]
    ids = []
    for t in trees:
        r = pycni(form, "install", "--from", t, d)
        assert r.returncode == 0, r.stderr
        ids.append(json.loads((d / ".pycni-install.json").read_text())["tree"])
        for name in PLUGINS + ("pycni",):
            assert os.readlink(d / name) == ".pycni-versions/%s/%s" % (ids[-1], name)
    assert len(set(ids)) == 3
    # the current and the previous tree stay (an exec may still read the previous)
    assert sorted(os.listdir(d / ".pycni-versions")) == sorted(ids[1:])
    state = json.loads((d / ".pycni-install.json").read_text())
    assert (state["tree"], state["previous"]) == (ids[2], ids[1])
    # a rollback to the previous build reuses its tree
    r = pycni(form, "install", "--from", trees[1], d)
    assert r.returncode == 0 and "already there" in r.stdout, r.stdout
    assert os.readlink(d / "bridge") == ".pycni-versions/%s/bridge" % ids[1]
    # from the layout the older ./build.sh install made: names were plain copies
    old = tmp_path / "old"
    old.mkdir()
    shutil.copytree(os.path.join(cnitest.plugin_dir(form), "pycni.d" if form == "py" else ".pycni"),
                    old / ("pycni.d" if form == "py" else ".pycni"), symlinks=True)
    shutil.copy(os.path.join(cnitest.plugin_dir(form), "pycni"), old / "pycni")
    (old / "loopback").write_bytes((old / "pycni").read_bytes())
    (old / ".pycni-installed").write_text("pycni.d\n.pycni\npycni\nloopback\n")
    assert pycni(form, "install", old).returncode == 0
    assert sorted(n for n in os.listdir(old) if n.startswith(".") or n == "pycni.d") == [
        ".pycni-install.json", ".pycni-versions"]
    assert not (old / ".pycni-backup").exists()      # our old copies are not "originals"


def test_exec_during_upgrades_never_fails(tmp_path):
    """Runtimes exec plugins at any moment: while the names switch back and
    forth between two trees, every exec finds its name and runs one tree."""
    if not os.path.isdir(cnitest.plugin_dir("py")):
        pytest.skip("dist/py is not built")
    d = tmp_path / "bin"
    a, b = variant("py", tmp_path, "a"), variant("py", tmp_path, "b")
    assert pycni("py", "install", "--from", a, d).returncode == 0
    stop, results = threading.Event(), []

    def hammer():
        while not stop.is_set():
            results.append(_version(d / "host-local"))

    t = threading.Thread(target=hammer)
    t.start()
    try:
        for i in range(6):
            r = pycni("py", "install", "--from", b if i % 2 == 0 else a, d)
            assert r.returncode == 0, r.stderr
    finally:
        stop.set()
        t.join()
    assert len(results) > 10
    assert all(rc == 0 and b"supportedVersions" in out for rc, out in results), \
        [r for r in results if r[0] != 0][:3]


def test_rerun_repairs_what_a_cp_wrote_through_a_name(form, tmp_path):
    """kube-flannel's install-cni-plugin runs ``cp -f /flannel /opt/cni/bin/flannel``:
    cp opens the name for writing and so writes through our symlink into the
    tree (in the bundle: into pycni itself).  The next install finds the tree
    damaged, lands an intact copy and switches every name to it."""
    d = tmp_path / "bin"
    assert pycni(form, "install", d).returncode == 0
    first = json.loads((d / ".pycni-install.json").read_text())["tree"]
    subprocess.run(["cp", "-f", "/bin/true", str(d / "flannel")], check=True)
    assert not os.path.islink(d / "flannel") or os.path.realpath(d / "flannel").startswith(
        str(d / ".pycni-versions"))                        # written through, the name is still ours
    r = pycni(form, "install", d)
    assert r.returncode == 0, r.stderr
    now = json.loads((d / ".pycni-install.json").read_text())
    assert now["tree"] == first + ".1" and now["previous"] == first
    for name in PLUGINS:
        rc, out = _version(d / name)
        assert rc == 0, (name, out)
    # busybox-style: the name itself replaced by a regular file
    os.unlink(d / "flannel")
    shutil.copy("/bin/true", d / "flannel")
    r = pycni(form, "install", d)
    assert r.returncode == 0 and "replaced: flannel" in r.stdout, r.stdout
    assert json.loads((d / ".pycni-install.json").read_text())["tree"] == first + ".1"   # reused
    assert (d / ".pycni-backup" / "flannel").read_bytes() == open("/bin/true", "rb").read()
    assert _version(d / "flannel")[0] == 0


def test_a_command_that_cannot_run_installs_nothing(form, tmp_path):
    d, conf = go_dir(tmp_path), tmp_path / "net.d"
    good = variant(form, tmp_path, "good")
    assert pycni(form, "install", "--from", good, d).returncode == 0
    bad = variant(form, tmp_path, "bad")
    os.unlink(bad / "tuning")
    (bad / "tuning").write_text("#!/nonexistent/python3.99 -IS\n")
    os.chmod(bad / "tuning", 0o755)
    before = snapshot(d)
    r = pycni(form, "install", "--from", bad, "--conf-dir", conf, "--network", "bridge", d)
    assert r.returncode == 1
    assert "FAILED: 1 of 8 commands" in r.stderr and "tuning: exit 127" in r.stderr, r.stderr
    assert "nothing was changed" in r.stderr and "Traceback" not in r.stderr
    assert settled(snapshot(d)) == settled(before) and not conf.exists()


def test_read_only_dirs_fail_cleanly(form, tmp_path):
    d, conf = go_dir(tmp_path), tmp_path / "net.d"
    conf.mkdir()

    def ro(*dirs, args):
        mounts = " && ".join("mount --bind %s %s && mount -o remount,bind,ro %s %s" % (x, x, x, x)
                             for x in dirs)
        exe = os.path.join(cnitest.plugin_dir(form), "pycni")
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               mounts + ' && exec "$@"', "sh", exe, "install"] + [str(a) for a in args],
                              capture_output=True, text=True, timeout=120, env={"PYCNI_LOG": "off"})

    before = snapshot(d, conf)
    r = ro(d, args=[d])
    assert r.returncode == 1 and "Read-only file system" in r.stderr, r.stderr
    assert "nothing was changed" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(d, conf) == before
    # the plugin dir is writable but the conf dir is not: nothing of either changes
    r = ro(conf, args=["--conf-dir", conf, "--network", "flannel", d])
    assert r.returncode == 1 and "cannot write the conflist" in r.stderr, r.stderr
    assert snapshot(d, conf) == before


def test_installed_copy_is_relocatable(form, tmp_path):
    d = tmp_path / "a"
    assert _build_sh("install", "--form", FORMS[form], str(d)).returncode == 0
    moved = tmp_path / "b"
    os.rename(d, moved)
    rc, out = _version(moved / "host-local")
    assert rc == 0, out
    # and through a symlink from another dir, as some nodes link /opt/cni/bin
    other = tmp_path / "c"
    other.mkdir()
    os.symlink(moved / "loopback", other / "loopback")
    rc, out = _version(other / "loopback")
    assert rc == 0, out


# ---- on another distribution's root, as the DaemonSet sees the node at /host


@pytest.fixture(scope="module", params=["11", "12"])
def droot(request):
    try:
        return request.param, distroots.root(request.param)
    except distroots.RootUnavailable as exc:
        pytest.skip(str(exc))


def in_host_root(rootdir, opt, argv):
    """Run argv with a read-only view of ``rootdir`` at a temp mount point
    and ``opt`` (a test dir) on its /opt, in a private mount namespace:
    what a pod sees with the node's / at /host and /opt/cni/bin below it."""
    mnt = os.path.join(str(opt), "..", "hostroot")
    os.makedirs(mnt, exist_ok=True)
    mnt = os.path.realpath(mnt)
    script = ("mount --bind {r} {m} && mount -o remount,bind,ro {m} && mount --bind {o} {m}/opt && "
              "mount -t proc proc {m}/proc && exec \"$@\"").format(r=rootdir, m=mnt, o=opt)
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
                       + [str(a).replace("@HOST", mnt) for a in argv],
                       capture_output=True, text=True, timeout=180, env={"PYCNI_LOG": "off"})
    return p


def test_host_root_check_says_what_the_node_lacks(form, tmp_path, droot):
    from cnilib.ops import elf
    release, bullseye = droot
    opt = tmp_path / "opt"
    (opt / "cni" / "bin").mkdir(parents=True)
    (opt / "cni" / "bin" / "bridge").write_bytes(b"\x7fELF go bridge")
    before = snapshot(opt)
    exe = os.path.join(cnitest.plugin_dir(form), "pycni")
    r = in_host_root(bullseye, opt, [exe, "install", "--host-root", "@HOST",
                                     "--bin-dir", "@HOST/opt/cni/bin"])
    need, _ = elf.tree_glibc_needed(cnitest.plugin_dir(form))
    have = elf.glibc_provided(bullseye)
    interp = open(os.path.join(cnitest.plugin_dir(form), "pycni"), "rb").readline()
    runs = (need is None or need <= have) if form == "bin" else (
        elf.resolve_in(bullseye, interp[2:].split()[0].decode()) is not None)
    if runs:
        assert r.returncode == 0, r.stderr
        assert "on the node's root at" in r.stdout
        assert os.readlink(opt / "cni" / "bin" / "bridge").startswith(".pycni-versions/")
        assert (opt / "cni" / "bin" / ".pycni-backup" / "bridge").read_bytes() == b"\x7fELF go bridge"
        return
    assert r.returncode == 1, r.stdout
    assert "do not run on the node's root" in r.stderr and "Traceback" not in r.stderr
    if form == "bin":
        # the loader's words, and the glibc found vs needed
        assert "version `GLIBC_" in r.stderr and "not found" in r.stderr, r.stderr
        assert "the bundle needs glibc >= %s" % elf.vtext(need) in r.stderr
        assert "has glibc %s" % distroots.SUITES[release][1] in r.stderr
    else:
        assert "which the node's root at" in r.stderr, r.stderr
        assert "its python3 is %s" % distroots.SUITES[release][2] in r.stderr, r.stderr
    assert settled(snapshot(opt)) == settled(before)


def test_host_root_outside_is_refused(tmp_path):
    if not os.path.isdir(cnitest.plugin_dir("py")):
        pytest.skip("dist/py is not built")
    r = pycni("py", "install", "--host-root", tmp_path / "h", "--bin-dir", tmp_path / "bin")
    assert r.returncode == 1 and "not a directory" in r.stderr
    (tmp_path / "h").mkdir()
    r = pycni("py", "install", "--host-root", tmp_path / "h", "--bin-dir", tmp_path / "bin")
    assert r.returncode == 1 and "is not under the host root" in r.stderr, r.stderr
    assert not (tmp_path / "bin").exists()
