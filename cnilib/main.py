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


def main(name=None):
    import gc
    gc.disable()  # short-lived process: no cycles worth collecting (~5 ms saved)
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
    if (name in AGENT_PLUGINS and os.environ.get("CNI_COMMAND") in AGENT_VERBS
            and len(argv) < 2 and os.environ.get("PYCNI_AGENT_SOCKET") != "off"):
        from cnilib.agent import wire
        stdin = wire.read_input(0)    # None when unreadable: skel reports it
        if stdin is not None and len(stdin) <= wire.MAX_INPUT:
            got = wire.call(name, stdin)
            if isinstance(got, tuple):
                wire.write_all(1, got[1])
                os._exit(got[0])
            if "PYCNI_FAILPOINTS" in os.environ:   # the agent did not answer: work here
                from cnilib.base import failpoint
                failpoint.hit("agent-fallback")
            if got == "died" and os.environ.get("CNI_COMMAND") == "ADD":
                # the agent's worker died mid-ADD: undo whatever it did, then
                # do the ADD here, so the attachment converges to one ADD
                from cnilib.cni import skel
                mod = __import__(modname, fromlist=["PLUGIN"])
                skel.execute(mod.PLUGIN, dict(os.environ, CNI_COMMAND="DEL"), stdin_data=stdin)
    mod = __import__(modname, fromlist=["PLUGIN"])
    from cnilib.cni import skel
    rc = skel.run(mod.PLUGIN, argv, stdin=stdin)
    # skip interpreter finalization: stdout is written with os.write already
    os._exit(rc)


if __name__ == "__main__":
    main()
