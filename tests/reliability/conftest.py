"""Fixtures of the reliability tier: a sandboxed node (relnode.RelNode) per
test, or per module and install form for the long parametrized runs."""

import os

import cnitest
import pytest
from relnode import FIGURES, NetnsSet, RelNode


@pytest.fixture
def rnode(plugins, tmp_path, netns_factory, statedir):
    return RelNode(plugins, tmp_path, netns_factory)


@pytest.fixture(scope="module", params=cnitest.forms())
def mform(request):
    if not os.path.isdir(cnitest.plugin_dir(request.param)):
        pytest.skip("dist/%s is not built (./build.sh)" % request.param)
    return request.param


@pytest.fixture(scope="module")
def mnode(mform, tmp_path_factory):
    """One node for a whole module and form (tests leave it as they found it)."""
    made = NetnsSet()
    try:
        yield RelNode(cnitest.plugin_dir(mform), tmp_path_factory.mktemp("node-" + mform), made)
    finally:
        made.close()


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("reliability figures")
        for k in sorted(FIGURES):
            terminalreporter.write_line("%s: %s" % (k, FIGURES[k]))
