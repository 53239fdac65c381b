"""Multi-call entry point: the command name (argv[0]) picks the plugin.

Both install forms end here: dist/py/<name> launchers pass their own name,
the PyInstaller bundle's symlinks arrive with argv[0] = <dir>/<name>.
Only the chosen plugin's module is imported.
"""

import os
import sys

from cnilib.cni.registry import PLUGINS, TOOLS

AGENT_VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
# plugins whose work touches links (bridge, flannel, tuning, loopback): the
# ones the warm agent was made for (bridge ADD still gains ~5 ms of imports
# and set-up); host-local, portmap and firewall are cheaper in-process than
# through a socket and a fork
AGENT_PLUGINS = frozenset(("bridge", "loopback", "tuning", "flannel"))


def unfreeze_environ(env):
    """Give children the environment the bundle was started with.

    The bundle's bootloader (PyInstaller) runs us with LD_LIBRARY_PATH
    pointing at the bundle's own libraries, built on Debian 11 (keeping the
    caller's value in LD_LIBRARY_PATH_ORIG), and with _PYI_* variables that
    tell a bundle it is already set up.  Children inherit both: nft,
    iptables or a delegated plugin would load Debian 11's libz and the
    like, and the bundle exec'd again (a delegate) would skip its set-up
    and miss its own libffi.  This process is not affected: its loader
    read the variables at exec."""
    orig = env.pop("LD_LIBRARY_PATH_ORIG", None)
    if orig is not None:
        env["LD_LIBRARY_PATH"] = orig
    else:
        env.pop("LD_LIBRARY_PATH", None)
    for k in [k for k in env if k.startswith("_PYI_")]:
        del env[k]


def main(name=None):
    import gc
    gc.disable()  # short-lived process: no cycles worth collecting (~5 ms saved)
    if getattr(sys, "frozen", False):
        unfreeze_environ(os.environ)
    # never looser than 022, whatever the runtime runs us with: directories
    # made on the way to a state dir must not come out world-writable
    os.umask(os.umask(0o022) | 0o022)
    argv = sys.argv
    if name is None:
        name = os.path.basename(argv[0]) if argv and argv[0] else "pycni"
    if name in TOOLS:
        mod = __import__(TOOLS[name], fromlist=["main"])
        rc = mod.main(argv[1:])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc or 0)
    modname = PLUGINS.get(name)
    if modname is None:
        # a bundle symlink or launcher under an unknown name: show what exists
        sys.stderr.write("pycni: unknown command %r; known: %s\n"
                         % (name, ", ".join(sorted(PLUGINS) + sorted(TOOLS))))
        os._exit(2)
    stdin = None
    plugin = None
    if (name in AGENT_PLUGINS and os.environ.get("CNI_COMMAND") in AGENT_VERBS
            and len(argv) < 2 and os.environ.get("PYCNI_AGENT_SOCKET") != "off"):
        from cnilib.agent import wire
        stdin = wire.read_input(0)    # None when unreadable: skel reports it
        if stdin is not None and len(stdin) <= wire.MAX_INPUT:
            got = wire.call(name, stdin)
            if got.answered:
                wire.write_all(1, got.out)
                os._exit(got.rc)
            if "PYCNI_FAILPOINTS" in os.environ:   # the agent did not answer: work here
                from cnilib.base import failpoint
                failpoint.hit("agent-fallback")
            plugin = _in_process(modname, stdin, got)
    from cnilib.cni import skel
    if plugin is None:
        plugin = __import__(modname, fromlist=["PLUGIN"]).PLUGIN
    rc = skel.run(plugin, argv, stdin=stdin)
    # skip interpreter finalization: stdout is written with os.write already
    os._exit(rc)


def _in_process(modname, stdin, got):
    """The plugin to run here after the agent did not do the work (``got``
    says why): first wait for any worker still busy with this attachment
    (its lock slot), then undo what a worker left of an ADD, and log why
    the work is done here."""
    from cnilib.agent import wire
    from cnilib.cni import skel
    plugin = __import__(modname, fromlist=["PLUGIN"]).PLUGIN
    env = os.environ
    notes = ["agent: %s; working in-process" % got.note] if got.note else []
    fd, slot = wire.open_slot(wire.socket_path(env), env.get("CNI_CONTAINERID", ""),
                              env.get("CNI_IFNAME", ""), env)
    if fd is not None:
        if not wire.lock_slot(fd, wire.SLOT_WAIT):
            from cnilib.base import errors
            return _wrapped(plugin, notes, errors.TryAgainLater(
                "an agent worker still holds this attachment (lock slot %s) after %g s"
                % (slot, wire.SLOT_WAIT),
                "the agent or its worker is stopped or stuck; see the agent's log, or restart it"))
        # held until this process exits; delegates it execs must not wait for it
        env[wire.SLOT_ENV] = ",".join(sorted(wire.held_slots(env) | {slot}))
    if got.partial and env.get("CNI_COMMAND") == "ADD":
        # the worker died or was stopped mid-ADD: undo whatever it did, then
        # do the ADD here, so the attachment converges to one ADD
        notes.append("agent: undid what the worker did of this ADD")
        skel.execute(plugin, dict(env, CNI_COMMAND="DEL"), stdin_data=stdin)
    return _wrapped(plugin, notes) if notes else plugin


def _wrapped(plugin, notes, error=None):
    """``plugin`` whose every verb first logs ``notes`` (and raises ``error``)."""
    from cnilib.cni import skel

    def wrap(handler):
        def run(a):
            for n in notes:
                a.log.info("%s", n)
            if error is not None:
                raise error
            return handler(a) if handler is not None else None
        return run
    p = skel.Plugin(plugin.name, cni_args=plugin.cni_args, uses_netns=plugin.uses_netns)
    p.handlers = {verb: wrap(h) for verb, h in plugin.handlers.items()}
    return p


if __name__ == "__main__":
    main()
