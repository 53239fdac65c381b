"""The node of the distribution matrix (see conftest.py): one test's host
netns, state dir and the commands it runs chrooted into a Debian root."""

import json
import os
import re
import shutil
import subprocess
import tempfile

import distroots
from cnitest import PluginRun, read_text

RELEASES = ("11", "12", "13")
FORM_DIR = "/tmp/cni/bin"          # the form under test, inside the root
DRIVER_DIR = "/tmp/cni/driver"
_COUNTERS = re.compile(r"counter packets \d+ bytes \d+")
_IPT_COUNTERS = re.compile(r"\[\d+:\d+\]")
_SEP = "=== pycni-distro ==="


class Node:
    """One node in a root: its host netns, state dir, and the commands run there."""

    def __init__(self, release, rootdir, plugins, driver, host, netns_factory):
        self.release, self.host, self.netns_factory = release, host, netns_factory
        self.tmp = tempfile.mkdtemp(prefix="pycni-distro-", dir="/tmp")
        os.chmod(self.tmp, 0o755)
        for d in ("net.d", "cache", "ipam", "state", "run", "log"):
            os.mkdir(os.path.join(self.tmp, d))
        self.log = os.path.join(self.tmp, "log", "pycni.log")
        self.env = {"PYCNI_LOG": self.log, "PYCNI_STATE_DIR": os.path.join(self.tmp, "state"),
                    "PYCNI_RUN_DIR": os.path.join(self.tmp, "run"), "PYCNI_AGENT_SOCKET": "off"}
        self.inroot = distroots.InRoot(
            rootdir, binds={plugins: FORM_DIR, os.path.dirname(driver): DRIVER_DIR, self.tmp: self.tmp},
            writable={self.tmp})
        self.driver = DRIVER_DIR + "/" + os.path.basename(driver)
        self.pods = {}

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def run(self, *argv, env=None, input=None, timeout=120):
        """``argv`` on the node: chrooted into the root, in its host netns."""
        p = self.inroot.run(*argv, netns=self.host.name, env=dict(self.env, **(env or {})),
                            input=input, timeout=timeout)
        return PluginRun(p.returncode, p.stdout, p.stderr)

    def conflist(self, name, version, plugins):
        p = self.path("net.d", "10-%s.conflist" % name)
        with open(p, "w") as f:
            json.dump({"cniVersion": version, "name": name, "plugins": plugins}, f)
        return p

    def pod(self, cid):
        if cid not in self.pods:
            self.pods[cid] = self.netns_factory()
        return self.pods[cid]

    def drive(self, verb, conf, cid="", ifname="eth0", capargs=None, args=""):
        """The Go driver in the root: libcni's AddNetworkList & co., as
        containerd calls them, with the plugins of the form under test."""
        netns = self.pod(cid).path if cid else ""
        argv = [self.driver, verb, "--conflist", conf, "--cachedir", self.path("cache"),
                "--path", FORM_DIR, "--netns", netns, "--cid", cid, "--ifname", ifname, "--args", args]
        if capargs is not None:
            argv += ["--capargs", json.dumps(capargs)]
        return self.run(*argv)

    def plugin(self, name, command, stdin, **cni):
        """One exec of a plugin in the root, as a runtime makes it."""
        env = {"CNI_COMMAND": command, "CNI_PATH": FORM_DIR}
        env.update({"CNI_" + k.upper(): v for k, v in cni.items()})
        return self.run(FORM_DIR + "/" + name, env=env, input=stdin)

    # -- what the node holds
    def files(self):
        out = set()
        for d in ("cache", "ipam", "state", "run"):
            top = self.path(d)
            for base, dirs, files in os.walk(top):
                for n in dirs + files:
                    out.add(os.path.relpath(os.path.join(base, n), self.tmp))
        return out

    def snapshot(self):
        """Everything an attachment could leave on the node: state files,
        links and addresses, routes, the whole nftables ruleset and both
        iptables families (counters masked), the rules read by the node's
        own nft and iptables (an older nft can crash on a newer one's)."""
        links = json.loads(self.host.run("ip", "-j", "-d", "addr", "show").stdout or "[]")
        routes = set()
        for fam in ("-4", "-6"):
            for r in json.loads(self.host.run("ip", "-j", fam, "route", "show").stdout or "[]"):
                routes.add((r.get("dst"), r.get("dev"), r.get("gateway")))
        r = self.run("sh", "-c", "nft list ruleset && echo %s && iptables-save && echo %s && ip6tables-save"
                     % (_SEP, _SEP))
        assert r.rc == 0, r
        nft, ipt4, ipt6 = r.stdout.split(_SEP + "\n")
        ipt = "".join(_IPT_COUNTERS.sub("[0:0]", ln) + "\n"
                      for ln in (ipt4 + ipt6).splitlines() if not ln.startswith("#"))
        return {"files": self.files(),
                "links": {(ln["ifname"], ln.get("linkinfo", {}).get("info_kind", "")) for ln in links},
                "addrs": {(ln["ifname"], "%s/%s" % (a["local"], a["prefixlen"]))
                          for ln in links for a in ln.get("addr_info", [])},
                "routes": routes, "nft": _COUNTERS.sub("counter", nft), "iptables": ipt}

    def log_text(self):
        return read_text(self.log)


def diff(before, after):
    """What changed between two snapshots ({} when nothing did)."""
    out = {}
    for k in sorted(set(before) | set(after)):
        a, b = before.get(k), after.get(k)
        if a == b:
            continue
        if isinstance(a, set):
            out[k] = {"gone": sorted(a - b), "new": sorted(b - a)}
        else:
            al, bl = a.splitlines(), b.splitlines()
            out[k] = {"gone": [x for x in al if x not in bl], "new": [x for x in bl if x not in al]}
    return out


def tcp_get(ns, addr, port, timeout=1.0):
    """Connect from netns ``ns`` to addr:port; the first bytes, or None."""
    p = subprocess.run(["ip", "netns", "exec", ns.name, "python3", "-c",
                        "import socket,sys\ntry:\n c=socket.create_connection((%r,%d),timeout=%r)\n"
                        " print(c.recv(64).decode())\nexcept OSError as e:\n sys.exit(1)"
                        % (addr, port, timeout)], capture_output=True, text=True, timeout=30)
    return p.stdout.strip() if p.returncode == 0 else None


class Listener:
    """A TCP server in a pod netns answering ``word`` to each connection."""

    def __init__(self, ns, port, word):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "python3", "-c",
             "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
             "s.bind(('0.0.0.0',%d))\ns.listen(8)\nprint('ready',flush=True)\nwhile True:\n"
             " c,a=s.accept()\n c.sendall(b'%s')\n c.close()" % (port, word.encode().decode())],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def close(self):
        self.proc.kill()
        self.proc.wait()
