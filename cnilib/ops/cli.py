"""``pycni``: the operator's command.

``pycni add|del|check|gc|status <network> [<netns>]`` drives a network
config list as cnitool does (same environment, same container ID, same
result cache as libcni), through cnilib.ops.runner; ``pycni gc --auto``
(no network: every one) is cnilib.ops.autogc.  Other subcommands live in
their own modules, listed in SUBCOMMANDS; each exposes ``main(argv) -> int``
(or the function named after a ':') taking argv after the subcommand name,
and is imported only when asked for.

Exit codes: 0 success, 1 failure (the CNI error is printed on stderr with its
code), 2 usage error or a subcommand this build does not have.
"""

import os
import sys

from cnilib.base import errors, paths
from cnilib.base.text import printable

RUNNER_VERBS = {
    "add": "attach a container netns to a network (prints the result)",
    "del": "detach it (the cached result is the plugins' prevResult)",
    "check": "verify an attachment (cniVersion >= 0.4.0)",
    "gc": "free what no valid attachment holds (--valid FILE, --dry-run); --auto: every network, "
          "the attachments whose netns is gone",
    "status": "ask every plugin of a network whether it can ADD (cniVersion >= 1.1.0)",
}

# subcommand -> (module exposing main(argv), one-line help)
SUBCOMMANDS = {
    "whois": ("cnilib.ops.whois", "map veth / IP / netns / container ID to one attachment"),
    "doctor": ("cnilib.ops.doctor.main", "check this node's CNI setup, with the fix for each failure"),
    "fabric": ("cnilib.ops.fabric", "flannel by hand: flannel.1, routes, neighbours, fdb, subnet.env"),
    "demo": ("cnilib.ops.demo", "two flannel nodes in throwaway namespaces, pods pinging across"),
    "agent": ("cnilib.agent.server", "the warm agent the plugins hand their work to (optional)"),
    "install": ("cnilib.ops.install.cli",
                "copy this build into a plugin dir (atomic switch, backups, checks)"),
    "uninstall": ("cnilib.ops.install.cli:uninstall_main",
                  "remove it again and restore what install replaced"),
    "pause": ("cnilib.ops.install.cli:pause_main", "sleep until stopped (the DaemonSet's main container)"),
}

CODE_NAMES = {
    1: "incompatible CNI version", 2: "unsupported field", 3: "unknown container",
    4: "invalid environment variables", 5: "I/O failure", 6: "failed to decode content",
    7: "invalid network config", 8: "invalid network namespace", 11: "try again later",
    50: "plugin not available", 51: "limited connectivity", 999: "internal error",
}

ENV_HELP = """environment (as cnitool):
  NETCONFPATH   network config dir (default %s)
  CNI_PATH      plugin dirs, ':'-separated
  CNI_IFNAME    interface name (default eth0)
  CNI_ARGS      K=V;K2=V2 passed to the plugins
  CAP_ARGS      capability args, a JSON object ({"portMappings": [...]})
  PYCNI_CACHE_DIR  libcni result cache (default %s)""" % (paths.CONF_DIR, paths.CACHE_DIR)


def usage():
    from cnilib.cni import version
    lines = ["usage: pycni <command> [args]   (pycni <command> -h for its options)", "",
             "runner (cnitool-compatible):"]
    lines += ["  %-8s %s" % (k, v) for k, v in RUNNER_VERBS.items()]
    lines += ["", "operator tools:"]
    lines += ["  %-8s %s" % (k, v[1]) for k, v in SUBCOMMANDS.items()]
    lines += ["", ENV_HELP, "", "pycni %s" % version.SUITE_VERSION]
    return "\n".join(lines) + "\n"


def version_text():
    from cnilib.cni import version
    return "pycni %s (CNI spec versions %s)\n" % (version.SUITE_VERSION, ", ".join(version.SUPPORTED))


def main(argv):
    if not argv:
        sys.stderr.write(usage())
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0
    if cmd in ("--version", "-v", "version"):
        sys.stdout.write(version_text())
        return 0
    if cmd in RUNNER_VERBS:
        return run_verb(cmd, rest)
    if cmd in SUBCOMMANDS:
        return run_subcommand(cmd, rest)
    sys.stderr.write("pycni: unknown command %r; known: %s (pycni --help)\n"
                     % (cmd, ", ".join(list(RUNNER_VERBS) + list(SUBCOMMANDS))))
    return 2


def run_subcommand(cmd, argv):
    modname, _, func = SUBCOMMANDS[cmd][0].partition(":")
    try:
        mod = __import__(modname, fromlist=["main"])
    except ModuleNotFoundError as exc:
        if exc.name != modname:
            raise
        sys.stderr.write("pycni %s: not available in this build (module %s is missing)\n"
                         % (cmd, modname))
        return 2
    return getattr(mod, func or "main")(argv)


# ---- the runner verbs -----------------------------------------------------------

def _parser(verb):
    import argparse
    p = argparse.ArgumentParser(
        prog="pycni " + verb, description=RUNNER_VERBS[verb],
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("network", help="network name (the \"name\" of a config in NETCONFPATH)")
    p.add_argument("netns", nargs="?", default="",
                   help="container netns path" + (" (ignored)" if verb in ("gc", "status") else ""))
    p.add_argument("--cache-dir", default=None,
                   help="libcni result cache dir ($PYCNI_CACHE_DIR, default %s)" % paths.CACHE_DIR)
    if verb in ("add", "del", "check"):
        p.add_argument("-i", "--ifname", default=None, help="interface name ($CNI_IFNAME, default eth0)")
        p.add_argument("--container-id", default=None,
                       help="container ID (default: cnitool- + 20 hex digits of sha512(netns))")
    if verb == "gc":
        p.add_argument("--valid", metavar="FILE", default=None,
                       help="valid attachments, a JSON list of {containerID, ifname} ('-' = stdin); "
                            "default: the attachments in the result cache")
        p.add_argument("--all", action="store_true",
                       help="allow an empty valid set (frees every attachment of the network)")
        p.add_argument("--dry-run", action="store_true", help="show what would be freed, change nothing")
        p.add_argument("--auto", action="store_true",
                       help="no network: every network of the conf dir, freeing the attachments whose "
                            "netns is gone (pycni gc --auto -h)")
    return p


def cnitool_container_id(netns):
    """cnitool's container ID: 'cnitool-' + hex of the first 10 bytes of
    sha512 of the absolute netns path."""
    import hashlib
    return "cnitool-" + hashlib.sha512(netns.encode()).digest()[:10].hex()


def abs_path(p):
    """Go's filepath.Abs: absolute and cleaned ('//x' -> '/x', unlike normpath)."""
    p = os.path.abspath(p)
    return "/" + p.lstrip("/") if p.startswith("//") else p


def cap_args_from_env(env):
    raw = env.get("CAP_ARGS", "")
    if not raw:
        return {}
    from cnilib.base import jsonio
    try:
        caps = jsonio.loads(raw)
    except ValueError as exc:
        raise errors.InvalidEnvironment("CAP_ARGS is not JSON: %s" % exc,
                                        "expected an object such as {\"portMappings\": [...]}") from None
    if not isinstance(caps, dict):
        raise errors.InvalidEnvironment("CAP_ARGS is a JSON %s, expected an object"
                                        % type(caps).__name__)
    return caps


def attachment(verb, opts, env):
    from cnilib.ops import runner
    netns = abs_path(opts.netns) if opts.netns else ""
    if not netns and (verb != "del" or not opts.container_id):
        raise errors.InvalidEnvironment(
            "pycni %s needs a netns path" % verb,
            "usage: pycni %s <network> <netns>%s" % (verb, " (or --container-id for del)"
                                                      if verb == "del" else ""))
    cid = opts.container_id or cnitool_container_id(netns)
    ifname = opts.ifname or env.get("CNI_IFNAME") or "eth0"
    return runner.Attachment(cid, netns, ifname, runner.parse_cni_args(env.get("CNI_ARGS", "")),
                             cap_args_from_env(env))


def run_verb(verb, argv):
    if verb == "gc" and "--auto" in argv:
        from cnilib.ops import autogc
        return autogc.main(argv)
    opts = _parser(verb).parse_args(argv)
    env = os.environ
    from cnilib.ops import runner
    r = None
    try:
        conf_dir = env.get("NETCONFPATH") or paths.CONF_DIR
        net, skipped = runner.find_network(conf_dir, opts.network)
        for _, exc in skipped:
            _note("skipped a config: %s" % exc)
        cache_dir = opts.cache_dir or env.get("PYCNI_CACHE_DIR") or paths.CACHE_DIR
        r = runner.Runner(env.get("CNI_PATH", "").split(":"), cache_dir)
        if verb == "gc":
            return run_gc(r, net, opts)
        if verb == "status":
            if not r.status(net):
                _note("network %s is at cniVersion %s, which has no STATUS (1.1.0+): nothing asked"
                      % (net.name, net.version))
            return 0
        att = attachment(verb, opts, env)
        if verb == "add":
            import json
            sys.stdout.write(json.dumps(r.add(net, att), indent=4) + "\n")
        elif verb == "del":
            r.delete(net, att)
        elif not r.check(net, att):
            _note("network %s has disableCheck set: nothing checked" % net.name)
        return 0
    except errors.CniError as exc:
        _error("%s %s" % (verb, opts.network), exc)
        return 1
    finally:
        for n in (r.notes if r is not None else ()):
            _note(n)


def _note(text):
    sys.stderr.write("pycni: %s\n" % printable(text))


def _error(what, exc):
    # a plugin's message may quote input (or come from a plugin that is not
    # ours): escaped, so it can only be read, not obeyed, by the terminal
    lines = ["pycni %s: %s" % (printable(what), printable(exc.msg))]
    lines.append("  code %d (%s)" % (exc.code, CODE_NAMES.get(exc.code, "plugin-specific")))
    if exc.details:
        lines.append("  details: %s" % printable(exc.details))
    sys.stderr.write("\n".join(lines) + "\n")


# ---- gc ---------------------------------------------------------------------------

def load_valid(path):
    """--valid FILE: a JSON list of {containerID, ifname} -> [(cid, ifname)]."""
    from cnilib.base import jsonio
    from cnilib.cni.args import get_ci
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise errors.IOFailure("cannot read the valid attachments file %s: %s"
                               % (path, exc.strerror)) from exc
    try:
        items = jsonio.loads(data)
    except ValueError as exc:
        raise errors.DecodingFailure("%s is not JSON: %s" % (path, exc)) from None
    if not isinstance(items, list):
        raise errors.DecodingFailure("%s holds a JSON %s, expected a list of "
                                     "{\"containerID\": ..., \"ifname\": ...}" % (path, type(items).__name__))
    out = []
    for i, it in enumerate(items):
        cid, ifn = get_ci(it, "containerID"), get_ci(it, "ifname")
        if not (isinstance(cid, str) and cid and isinstance(ifn, str) and ifn):
            raise errors.DecodingFailure(
                "%s: entry %d is %s" % (path, i, str(it)[:120]),
                "expected {\"containerID\": \"<id>\", \"ifname\": \"eth0\"}")
        out.append((cid, ifn))
    return out


def run_gc(r, net, opts):
    if net.disable_gc:
        _note("network %s has disableGC set: nothing collected" % net.name)
        return 0
    if opts.valid is not None:
        valid = load_valid(opts.valid)
        source = "from %s" % opts.valid
    else:
        valid = [(c.container_id, c.ifname) for c in r.cache.attachments(net.name)]
        source = "from the result cache %s" % r.cache.results
    if not valid and not opts.all:
        raise errors.InvalidConfig(
            "refusing to GC network %s with an empty valid set (%s)" % (net.name, source),
            "GC frees everything outside the valid set, here every attachment of the network; "
            "pass --valid FILE listing the live attachments, or --all if that is really meant")
    plan = r.plan_gc(net, valid)
    out = sys.stdout
    out.write("gc %s%s: cniVersion %s, cache %s\n" % (
        net.name, " (dry run: nothing changed)" if opts.dry_run else "", net.version, r.cache.results))
    out.write("  valid: %d attachment(s) %s\n" % (len(plan.valid), source))
    for cid, ifn in plan.valid:
        out.write("    %s %s\n" % (cid, ifn))
    if opts.dry_run:
        _write_plan(out, plan, "would DEL", "would send GC to")
        if plan.gc_plugins:
            _write_gc_preview(out, r, net, plan)
        return 0
    try:
        r.gc(plan)
    finally:
        _write_plan(out, plan, "DELeted", "sent GC to", done=plan.deleted)
    return 0


def _write_plan(out, plan, del_word, gc_word, done=None):
    stale = plan.stale if done is None else done
    out.write("  %s %d stale cached attachment(s)\n" % (del_word, len(stale)))
    for c in stale:
        out.write("    %s %s%s\n" % (c.container_id, c.ifname, " netns %s" % c.netns if c.netns else ""))
    if plan.gc_plugins:
        out.write("  %s %d plugin(s): %s (each frees what it holds outside the valid set)\n"
                  % (gc_word, len(plan.gc_plugins), ", ".join(p["type"] for p in plan.gc_plugins)))
    else:
        out.write("  no GC verb: cniVersion %s predates it (1.1.0)\n" % plan.net.version)
    out.flush()


def _write_gc_preview(out, r, net, plan):
    """The state on this node the plugins' GC would free (read-only, best
    effort: what pycni whois sees in the dirs the network's config names),
    and the valid attachments whose netns is gone (kept: never guessed)."""
    from cnilib.ops import nodestate, whois
    loc = nodestate.Locations.of_network(net, os.path.dirname(net.source) or ".", r.cache.dir)
    try:
        node = whois.build(loc)
    except OSError as exc:
        out.write("  (cannot read this node's state to preview the plugins' GC: %s)\n" % exc)
        return
    items = whois.gc_preview(node, net.name, plan.valid)
    out.write("  the plugins' GC would free %d item(s) this node holds outside the valid set%s\n"
              % (len(items), ":" if items else ""))
    for layer, text in items:
        out.write("    %-8s %s\n" % (layer, text))
    gone = [c for c in plan.cached if (c.container_id, c.ifname) in set(plan.valid)
            and c.netns and not nodestate.netns_alive(c.netns)]
    for c in gone:
        out.write("  note: valid %s %s has a netns that is gone (%s); it stays valid unless "
                  "--valid leaves it out\n" % (c.container_id, c.ifname, c.netns))
    out.flush()
