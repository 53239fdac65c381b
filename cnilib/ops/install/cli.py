"""``pycni install`` / ``uninstall`` / ``pause``: options, directories from
the environment, the conflist choice, the one log line, the exit code."""

import os
import sys
import time

from cnilib.base import errors, log, paths
from cnilib.ops.install.common import (
    BUILTIN_CONFLISTS,
    DEFAULT_BIN_DIR,
    DEFAULT_CONF_DIR,
    InstallError,
    clean,
)
from cnilib.ops.install.host import Host
from cnilib.ops.install.installer import Installer
from cnilib.ops.install.tree import Tree, own_tree


def _parser(verb):
    import argparse
    p = argparse.ArgumentParser(
        prog="pycni " + verb,
        description=("copy this build of the suite into a plugin dir, switching each plugin "
                     "name to it atomically, and write a conflist"
                     if verb == "install" else "remove what pycni install put into a plugin dir "
                     "and restore what it replaced"))
    p.add_argument("--bin-dir", default=None,
                   help="plugin dir ($PYCNI_BIN_DIR, default %s)" % DEFAULT_BIN_DIR)
    p.add_argument("--conf-dir", default=None,
                   help="network config dir ($PYCNI_CONF_DIR, default %s)" % DEFAULT_CONF_DIR)
    p.add_argument("--host-root", default=None,
                   help="the node's root file system when this runs in a container ($PYCNI_HOST_ROOT): "
                        "the check runs the plugins chrooted into it")
    if verb == "install":
        p.add_argument("--from", dest="src", default=None, metavar="DIR",
                       help="the built tree to install (default: the one this pycni runs from)")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--conflist", default=None, metavar="FILE",
                       help="network config to put into the conf dir, under its own name ($PYCNI_CONFLIST)")
        g.add_argument("--network", default=None, choices=sorted(BUILTIN_CONFLISTS),
                       help="a built-in network config ($PYCNI_NETWORK): flannel (%s) or bridge + "
                            "portmap (%s)" % (BUILTIN_CONFLISTS["flannel"][0],
                                              BUILTIN_CONFLISTS["bridge"][0]))
    p.add_argument("bin_dir_pos", nargs="?", default=None, metavar="BIN_DIR",
                   help="the plugin dir, as --bin-dir")
    return p


def load_conflist(path=None, network=None):
    if network:
        if network not in BUILTIN_CONFLISTS:
            raise InstallError("unknown built-in network %r" % clean(network, 40),
                               ["choose one of %s" % ", ".join(sorted(BUILTIN_CONFLISTS))])
        name, text = BUILTIN_CONFLISTS[network]
        return name, text.encode()
    if not path:
        return None
    name = os.path.basename(path)
    if not name.endswith((".conflist", ".conf", ".json")) or name.startswith("."):
        raise InstallError("the conflist %s must be named *.conflist, *.conf or *.json" % clean(path),
                           ["runtimes load only those names from the conf dir"])
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise InstallError("cannot read the conflist %s: %s" % (clean(path), exc.strerror),
                           ["nothing was changed"]) from exc
    import json
    try:
        conf = json.loads(data)
    except ValueError as exc:
        raise InstallError("the conflist %s is not JSON: %s" % (clean(path), clean(str(exc))),
                           ["nothing was changed"]) from None
    if not isinstance(conf, dict) or not isinstance(conf.get("name"), str) or not (
            isinstance(conf.get("plugins"), list) and conf["plugins"] or isinstance(conf.get("type"), str)):
        raise InstallError("the conflist %s is not a network config (it needs \"name\" and "
                           "\"plugins\", or \"type\")" % clean(path), ["nothing was changed"])
    return name, data


def _dirs(opts):
    env = os.environ
    bin_dir = opts.bin_dir or opts.bin_dir_pos or env.get("PYCNI_BIN_DIR") or DEFAULT_BIN_DIR
    conf_dir = opts.conf_dir or env.get("PYCNI_CONF_DIR") or DEFAULT_CONF_DIR
    host_root = opts.host_root if opts.host_root is not None else env.get("PYCNI_HOST_ROOT", "")
    for what, p in (("plugin dir", bin_dir), ("conf dir", conf_dir), ("host root", host_root)):
        if p and ("\x00" in p or not os.path.isabs(p)):
            raise InstallError("the %s %r must be an absolute path" % (what, clean(p, 80)))
    return bin_dir, conf_dir, host_root


def _finish(verb, inst, exc):
    out = sys.stdout
    for line in inst.lines if inst else ():
        out.write("pycni %s: %s\n" % (verb, line))
    out.flush()
    if exc is None:
        return 0
    err = ["pycni %s: FAILED: %s" % (verb, exc.msg)]
    err += ["  %s" % d for d in exc.details]
    sys.stderr.write("\n".join(err) + "\n")
    sys.stderr.flush()
    return 1


def main(argv, verb="install"):
    t0 = time.monotonic()
    opts = _parser(verb).parse_args(argv)
    inst, bin_dir = None, opts.bin_dir or "?"
    trace = None
    try:
        bin_dir, conf_dir, host_root = _dirs(opts)
        host = Host(host_root or None)
        if host.root and not os.path.isdir(host.root):
            raise InstallError("the host root %s is not a directory" % clean(host.root))
        inst = Installer(bin_dir, conf_dir, host)
        if verb == "install":
            src = opts.src or own_tree()
            if src is None:
                raise InstallError("this pycni runs from a source checkout, not a built tree",
                                   ["run dist/py/pycni install or dist/bin/pycni install, "
                                    "or give --from DIR"])
            tree = Tree(src)
            conflist = load_conflist(opts.conflist or os.environ.get("PYCNI_CONFLIST") or None,
                                     opts.network or os.environ.get("PYCNI_NETWORK") or None)
            outcome = inst.install(tree, conflist)
        else:
            outcome = inst.uninstall()
        failure = None
    except InstallError as exc:
        failure = exc
    except errors.CniError as exc:
        failure = InstallError(exc.msg, [exc.details] if exc.details else [])
    except Exception as exc:
        import traceback
        trace = traceback.format_exc()
        failure = InstallError("%s: %s" % (type(exc).__name__, clean(getattr(exc, "strerror", None) or exc)),
                               ["the traceback is in the suite's log (%s)"
                                % (os.environ.get("PYCNI_LOG") or paths.LOG_FILE)])
    if failure is not None:
        outcome = "error" if trace else "failed"
    log.Log("pycni").flush("%s pycni[%d] %s dir=%s %s %.1fms" % (
        log.stamp(), os.getpid(), verb.upper(), clean(bin_dir, 200), outcome,
        (time.monotonic() - t0) * 1000), trace=trace)
    return _finish(verb, inst, failure)


def uninstall_main(argv):
    return main(argv, verb="uninstall")


def pause_main(argv):
    """``pycni pause``: sleep until SIGTERM or SIGINT, then exit 0 (the
    DaemonSet's main container, once the init container has installed)."""
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write("usage: pycni pause\n\nsleep until stopped (SIGTERM, SIGINT): the main "
                         "container of the DaemonSet in deploy/kube-pycni.yml\n")
        return 0
    import signal
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    # PID 1 of a container ignores a signal it has no handler for: say when
    # SIGTERM counts (a stop before this line waits for the runtime's kill)
    sys.stdout.write("pycni pause: waiting for SIGTERM\n")
    sys.stdout.flush()
    while not stop:
        signal.pause()
    return 0
