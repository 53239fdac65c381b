"""e2e with real clients: a Go driver on Debian's libcni, and ``pycni``.

``go_driver`` (tests/conftest.py) builds tests/e2e/driver/main.go once per
session; ``clients`` gives a test one temp world (config dir, result cache,
fake-plugin dir and its call record) and runs both clients in the test's
host sandbox netns.
"""

import json
import os
import subprocess

import pytest
from cnitest import PluginRun, fake_calls, install_fake_plugins


class Clients:
    """One test's world: NETCONFPATH, result cache, plugin path, sandbox."""

    def __init__(self, driver, tmp, host):
        self.driver_exe = driver
        self.host = host
        self.conf_dir = tmp / "net.d"
        self.conf_dir.mkdir()
        self.cache_dir = str(tmp / "cache")
        self.record = str(tmp / "calls.jsonl")
        self.fake_dir = install_fake_plugins(str(tmp / "fakebin"), "recorder")
        self.path = [self.fake_dir]

    def use(self, plugin_dir):
        self.path = [plugin_dir, self.fake_dir]

    def conflist(self, name, version, plugins, ext=".conflist", **extra):
        if ext == ".conflist":
            conf = dict({"cniVersion": version, "name": name, "plugins": plugins}, **extra)
        else:
            (conf,) = plugins
            conf = dict(conf, cniVersion=version, name=name)
        p = self.conf_dir / ("10-%s%s" % (name, ext))
        p.write_text(json.dumps(conf))
        return str(p)

    def env(self, **over):
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "FAKE_RECORD": self.record, "NETCONFPATH": str(self.conf_dir),
               "CNI_PATH": ":".join(self.path), "PYCNI_CACHE_DIR": self.cache_dir}
        for k in ("PYCNI_LOG", "PYCNI_LOG_LEVEL"):
            if k in os.environ:
                env[k] = os.environ[k]
        env.update(over)
        return env

    def _run(self, argv, env, input=None):
        p = subprocess.run(["ip", "netns", "exec", self.host.name] + argv, env=env, input=input,
                           capture_output=True, timeout=120)
        return PluginRun(p.returncode, p.stdout.decode("utf-8", "replace"),
                         p.stderr.decode("utf-8", "replace"))

    def drive(self, verb, conflist, netns="", cid="", ifname="eth0", capargs=None, args="",
              valid=None):
        """The Go driver: libcni's AddNetworkList & co., as containerd calls them."""
        argv = [self.driver_exe, verb, "--conflist", conflist, "--cachedir", self.cache_dir,
                "--path", ":".join(self.path), "--netns", netns, "--cid", cid, "--ifname", ifname,
                "--args", args]
        if capargs is not None:
            argv += ["--capargs", json.dumps(capargs)]
        if valid is not None:
            argv += ["--valid", json.dumps(valid)]
        return self._run(argv, self.env())

    def pycni(self, form_dir, *argv, **env):
        return self._run([os.path.join(form_dir, "pycni")] + [str(a) for a in argv], self.env(**env))

    def calls(self):
        out = fake_calls(self.record)
        if os.path.exists(self.record):
            os.unlink(self.record)
        return out

    def cache_entry(self, network, cid, ifname):
        p = os.path.join(self.cache_dir, "results", "%s-%s-%s" % (network, cid, ifname))
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f)


@pytest.fixture
def clients(go_driver, tmp_path, host, statedir):
    return Clients(go_driver, tmp_path, host)
