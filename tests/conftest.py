import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnitest  # noqa: E402

# a pycni agent running on this machine must not serve the tests' execs;
# tests that want one start a private agent and pass its socket explicitly
os.environ["PYCNI_AGENT_SOCKET"] = "off"

# nothing a test runs may write the machine's own suite log (rule 2): every
# exec that does not get a log of its own writes to this session's temp file
if not os.environ.get("PYCNI_LOG"):
    import tempfile
    os.environ["PYCNI_LOG"] = os.path.join(
        tempfile.mkdtemp(prefix="pycni-testlog-"), "pycni.log")


def _terminated(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config):
    # `timeout` and CI cancel with SIGTERM, which would end the process with
    # no fixture teardown: made an interrupt, the session still ends below
    import signal
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def pytest_sessionfinish(session, exitstatus):
    """Whatever a failed fixture or an interrupted test left of the network
    namespaces this session made goes now (rule 2: leave none behind)."""
    left = cnitest.delete_leftover_netns()
    if left:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line("deleted %d network namespace(s) no fixture deleted: %s"
                          % (len(left), " ".join(left)), yellow=True)


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "root" in item.keywords and not cnitest.is_root():
            item.add_marker(skip_root)


@pytest.fixture(params=cnitest.forms())
def form(request):
    """Each install form under test: 'py' (launchers) and 'bin' (bundle)."""
    d = cnitest.plugin_dir(request.param)
    if not os.path.isdir(d):
        pytest.skip("dist/%s is not built (./build.sh)" % request.param)
    return request.param


@pytest.fixture
def plugins(form):
    """Directory holding the plugins of the form under test."""
    return cnitest.plugin_dir(form)


@pytest.fixture
def statedir(tmp_path, monkeypatch):
    """Temp state root; also where the suite's log goes for this test."""
    d = tmp_path / "state"
    d.mkdir()
    monkeypatch.setenv("PYCNI_LOG", str(tmp_path / "pycni.log"))
    return d


@pytest.fixture
def netns_factory():
    made = []

    def make(**kw):
        ns = cnitest.Netns(**kw)
        made.append(ns)
        return ns
    yield make
    for ns in reversed(made):
        ns.delete()


@pytest.fixture
def host(netns_factory):
    """A network namespace that plays the node's host netns."""
    return netns_factory()


@pytest.fixture
def ctr(netns_factory):
    """A container network namespace."""
    return netns_factory()


@pytest.fixture(scope="session")
def go_plugins():
    if not os.path.isfile(os.path.join(cnitest.GO_CNI, "bridge")):
        pytest.skip("Go reference plugins not installed (containernetworking-plugins)")
    return cnitest.GO_CNI


GOPATH = "/usr/share/gocode"
LIBCNI = os.path.join(GOPATH, "src/github.com/containernetworking/cni/libcni")


@pytest.fixture(scope="session")
def go_driver(tmp_path_factory):
    """tests/e2e/driver/main.go, built once per session in GOPATH mode
    against Debian's libcni (golang-github-appc-cni-dev), static
    (CGO_ENABLED=0): it runs on this machine and in any distribution root."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (Debian golang-go)")
    if not os.path.isdir(LIBCNI):
        pytest.skip("libcni is not in %s (Debian golang-github-appc-cni-dev)" % GOPATH)
    out = tmp_path_factory.mktemp("go-driver")
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="", CGO_ENABLED="0")
    if not os.environ.get("HOME"):
        env["GOCACHE"] = str(out / "gocache")
    p = subprocess.run([go, "build", "-o", str(out / "driver"), "main.go"],
                       cwd=os.path.join(cnitest.ROOT, "tests", "e2e", "driver"), env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail("building the libcni driver failed:\n%s" % p.stderr)
    return str(out / "driver")


@pytest.fixture(scope="session")
def have_nft():
    return shutil.which("nft") is not None
