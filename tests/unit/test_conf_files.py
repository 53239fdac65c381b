"""conf/: every shipped network config is one the suite and libcni accept."""

import glob
import json
import os
import re

import pytest
from cnitest import ROOT

from cnilib.cni import skel, version

FILES = sorted(glob.glob(os.path.join(ROOT, "conf", "*.conf")) +
               glob.glob(os.path.join(ROOT, "conf", "*.conflist")))


def suite_plugins():
    with open(os.path.join(ROOT, "build.sh")) as f:
        return re.search(r"^PLUGINS=\(([^)]*)\)", f.read(), re.M).group(1).split()


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p) for p in FILES])
def test_conf_file(path):
    with open(path) as f:
        conf = json.load(f)
    skel.check_network_name(conf["name"])
    assert conf["cniVersion"] in version.SUPPORTED
    plugins = conf["plugins"] if path.endswith(".conflist") else [conf]
    assert plugins and all(p["type"] in suite_plugins() for p in plugins)
    assert not any("name" in p or "cniVersion" in p for p in plugins if path.endswith(".conflist"))


def test_the_three_runtime_configs_are_there():
    names = {os.path.basename(p) for p in FILES}
    assert {"87-podman-bridge.conflist", "10-containerd-net.conflist", "99-loopback.conf"} <= names
