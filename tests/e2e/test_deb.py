"""The Debian package (./build.sh deb) in Debian 11 and 12 roots as they
are (minbase + iproute2, nftables, iptables, python3; no systemd), each a
throwaway copy of the cached root: install, upgrade, remove, purge, never
over another package's file, and a plugin from it doing ADD/DEL through
libcni in sandbox namespaces.  A root whose glibc is older than the one
the bundle needs must refuse the package before anything is unpacked."""

import json
import os
import shutil
import subprocess

import cnitest
import distroots
import pytest

from cnilib.ops import elf

pytestmark = [pytest.mark.root, pytest.mark.slow]

BUILD = os.path.join(cnitest.ROOT, "build.sh")


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """(older, current) packages: the same bundle as versions 0.0.9 and the suite's."""
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed")
    if not os.path.isfile(os.path.join(cnitest.DIST, "bin", "pycni")):
        pytest.skip("dist/bin is not built (./build.sh)")
    out = tmp_path_factory.mktemp("debs")
    made = []
    for version in ("0.0.9", None):
        env = dict(os.environ, PYCNI_DEB_OUT=str(out))
        if version:
            env["PYCNI_DEB_VERSION"] = version
        p = subprocess.run([BUILD, "deb", "--no-build"], env=env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr
        made.append(sorted(set(os.listdir(out)) - {os.path.basename(m) for m in made})[0])
        made[-1] = str(out / made[-1])
    return made


def fake_owner_deb(tmp_path):
    """A package of another vendor owning /usr/libexec/cni/portmap."""
    root = tmp_path / "fake"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "libexec" / "cni").mkdir(parents=True)
    (root / "usr" / "libexec" / "cni" / "portmap").write_text("#!/bin/sh\necho other vendor\n")
    os.chmod(root / "usr" / "libexec" / "cni" / "portmap", 0o755)
    (root / "DEBIAN" / "control").write_text(
        "Package: othercni\nVersion: 1.0\nArchitecture: all\nMaintainer: x <x@localhost>\n"
        "Description: another vendor's portmap\n")
    deb = tmp_path / "othercni.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return str(deb)


@pytest.fixture(params=["11", "12"])
def droot(request, tmp_path):
    """A throwaway copy of the cached root of Debian ``release``."""
    try:
        cached = distroots.root(request.param)
    except distroots.RootUnavailable as exc:
        pytest.skip(str(exc))
    copy = tmp_path / ("debian" + request.param)
    subprocess.run(["cp", "-a", "--reflink=auto", cached, str(copy)], check=True)
    try:
        yield request.param, str(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def test_package_in_a_debian_root(droot, debs, go_driver, netns_factory, tmp_path):
    release, root = droot
    old, new = debs
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    for d in (old, new, fake_owner_deb(tmp_path)):
        shutil.copy(d, pkgs)
    state = tmp_path / "state"
    state.mkdir()
    inroot = distroots.InRoot(root, binds={str(pkgs): "/tmp/pkgs", os.path.dirname(go_driver): "/tmp/drv",
                                           str(state): "/tmp/state"}, writable={str(state)},
                              readonly=False)      # a throwaway copy: dpkg writes into it

    def sh(script, netns=None, env=None):
        return inroot.run("sh", "-c", script, netns=netns, env=env, timeout=300)

    newdeb, olddeb = "/tmp/pkgs/" + os.path.basename(new), "/tmp/pkgs/" + os.path.basename(old)
    need, _ = elf.tree_glibc_needed(os.path.join(cnitest.DIST, "bin"))
    if need and need > elf.glibc_provided(root):
        # the node's glibc is too old for this bundle: dpkg refuses before unpacking
        r = sh("dpkg -i %s" % newdeb)
        assert r.returncode != 0
        assert "pre-dependency problem" in r.stderr, r.stderr
        assert "libc6 (>= %s)" % elf.vtext(need) in r.stderr, r.stderr
        assert sh("dpkg-query -W -f='${Status}' pycni").stdout.endswith(" not-installed")
        assert not os.path.exists(os.path.join(root, "usr", "libexec", "cni"))
        assert not os.path.lexists(os.path.join(root, "usr", "bin", "pycni"))
        return

    # another package's file is never overwritten: dpkg refuses, the file stays
    assert sh("dpkg -i /tmp/pkgs/othercni.deb").returncode == 0
    r = sh("dpkg -i %s" % newdeb)
    assert r.returncode != 0 and "also in package othercni" in r.stderr, r.stderr
    assert "other vendor" in sh("/usr/libexec/cni/portmap").stdout
    assert sh("dpkg -r othercni && dpkg --remove pycni || true").returncode == 0

    # install the older version, then upgrade
    r = sh("dpkg -i %s" % olddeb)
    assert r.returncode == 0, r.stderr
    assert os.readlink(os.path.join(root, "usr", "libexec", "cni", "bridge")) == \
        "../../lib/pycni/0.0.9/bridge"
    r = sh("dpkg -i %s" % newdeb)
    assert r.returncode == 0, r.stderr
    version = sh("dpkg-query -W -f='${Version}' pycni").stdout
    assert version == os.path.basename(new).split("_")[1]
    assert os.listdir(os.path.join(root, "usr", "lib", "pycni")) == [version]   # the old tree is gone
    r = sh("pycni --version && CNI_COMMAND=VERSION /usr/libexec/cni/host-local")
    assert r.returncode == 0 and "pycni %s" % version in r.stdout, r.stderr
    assert json.loads(r.stdout.splitlines()[1])["supportedVersions"]
    # the agent's unit and gc's service and timer are there and not enabled
    for name in ("pycni-agent.service", "pycni-gc.service", "pycni-gc.timer"):
        with open(os.path.join(root, "lib", "systemd", "system", name)) as f, \
                open(os.path.join(cnitest.ROOT, "conf", name)) as g:
            assert f.read() == g.read(), name
    for wants in ("multi-user.target.wants", "timers.target.wants"):
        d = os.path.join(root, "etc", "systemd", "system", wants)
        assert not [n for n in (os.listdir(d) if os.path.isdir(d) else ()) if n.startswith("pycni")]
    # the timer's command runs from the package; this root has no network config, so it refuses,
    # with the reason: no conf dir at all, then an empty one (the cached roots may hold either)
    confd = os.path.join(root, "etc", "cni", "net.d")
    if os.path.isdir(confd):
        os.rmdir(confd)         # empty in a fresh root: nothing installed a network yet
    r = sh("/usr/libexec/cni/pycni gc --auto --dry-run")
    assert r.returncode == 2 and "REFUSED: no network config dir /etc/cni/net.d" in r.stderr, r.stderr
    os.makedirs(confd)
    r = sh("/usr/libexec/cni/pycni gc --auto --dry-run")
    assert r.returncode == 2 and "REFUSED: no network config loads in /etc/cni/net.d: no *.conflist" \
        in r.stderr, r.stderr

    # a plugin from the package at work: bridge + host-local ADD/DEL through libcni
    host, ctr = netns_factory(), netns_factory()
    conf = {"cniVersion": "1.0.0", "name": "debnet", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True,
         "ipam": {"type": "host-local", "subnet": "10.67.0.0/24", "dataDir": "/tmp/state/ipam"}}]}
    (state / "net.conflist").write_text(json.dumps(conf))
    drv = "/tmp/drv/" + os.path.basename(go_driver)
    for verb in ("add", "del"):
        r = inroot.run(drv, verb, "--conflist", "/tmp/state/net.conflist", "--cachedir", "/tmp/state/cache",
                       "--path", "/usr/libexec/cni", "--netns", ctr.path, "--cid", "deb-ctr",
                       "--ifname", "eth0", "--args", "", netns=host.name,
                       env={"PYCNI_STATE_DIR": "/tmp/state/pstate", "PYCNI_RUN_DIR": "/tmp/state/run"})
        assert r.returncode == 0, (verb, r.stdout, r.stderr)
        if verb == "add":
            assert json.loads(r.stdout)["ips"][0]["address"] == "10.67.0.2/24"
            assert ctr.run("ping", "-c1", "-W3", "10.67.0.1").returncode == 0
    assert "eth0" not in ctr.links()
    log = os.path.join(root, "var", "log", "pycni", "pycni.log")      # the default log, in the root
    assert "bridge[" in cnitest.read_text(log)

    # remove keeps the log, purge takes it
    assert sh("dpkg -r pycni").returncode == 0
    for p in ("usr/libexec/cni/bridge", "usr/bin/pycni", "usr/lib/pycni"):
        assert not os.path.lexists(os.path.join(root, p)), p
    assert os.path.exists(log)
    assert sh("dpkg -P pycni").returncode == 0
    assert not os.path.exists(os.path.dirname(log))
    assert "pycni" not in sh("dpkg -l").stdout


def test_rpm_lists_the_same_layout():
    """./build.sh rpm (rpmbuild from Debian's rpm), inspected with rpm -qlp."""
    if not (shutil.which("rpmbuild") and shutil.which("rpm")):
        pytest.skip("rpmbuild is not installed (Debian's rpm package)")
    if not os.path.isfile(os.path.join(cnitest.DIST, "bin", "pycni")):
        pytest.skip("dist/bin is not built (./build.sh)")
    p = subprocess.run([BUILD, "rpm", "--no-build"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    version = subprocess.run([os.path.join(cnitest.DIST, "bin", "pycni"), "--version"],
                             capture_output=True, text=True).stdout.split()[1]
    rpm = os.path.join(cnitest.DIST, "pycni-%s-1.x86_64.rpm" % version)
    files = subprocess.run(["rpm", "-qlp", rpm], capture_output=True, text=True, check=True).stdout.split()
    plugins = ("bridge", "host-local", "flannel", "portmap", "loopback", "firewall", "tuning", "pycni")
    assert {"/usr/libexec/cni/" + n for n in plugins} <= set(files)
    assert "/usr/libexec/cni" not in files          # containernetworking-plugins owns the dir on RHEL
    assert {"/usr/bin/pycni", "/usr/lib/systemd/system/pycni-agent.service",
            "/usr/lib/systemd/system/pycni-gc.service", "/usr/lib/systemd/system/pycni-gc.timer",
            "/usr/lib/pycni/%s/.pycni" % version} <= set(files)
    dump = subprocess.run(["rpm", "-qp", "--dump", rpm], capture_output=True, text=True, check=True).stdout
    links = {ln.split()[0]: ln.split()[-1] for ln in dump.splitlines() if ln.startswith("/usr/libexec/cni/")}
    assert links["/usr/libexec/cni/bridge"] == "../../lib/pycni/%s/bridge" % version
    reqs = subprocess.run(["rpm", "-qp", "--requires", rpm], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    need, _ = elf.tree_glibc_needed(os.path.join(cnitest.DIST, "bin"))
    assert "glibc >= %s" % elf.vtext(need) in reqs
    assert not [r for r in reqs if r.startswith("libpython")]     # the bundle carries its own
