"""A plugin for the agent tests: ADD runs a child program, as plugins that
exec nft, iptables-restore or a delegate IPAM plugin do, and names its exit
status in the result.  Registered in an agent by tests/integration/agent_env.py.

With ``"run": [argv, ...]`` in the config it runs those instead, each
through cnilib.base.proc as a delegate is run, and appends one JSON line per
program to the file ``"report"`` names: its argv, exit status (or the error
that kept it from running) and output."""

import json

from cnilib.base import proc
from cnilib.cni import skel
from cnilib.cni.types import Result


def cmd_add(a):
    runs = a.conf.get("run")
    if not runs:
        r = proc.run(["true"], env={"PATH": proc.SYSTEM_PATH})
        return Result(interfaces=[{"name": "child-rc-%d" % r.rc}])
    with open(a.conf["report"], "a") as f:
        for argv in runs:
            try:
                r = proc.run(argv, env={"PATH": proc.SYSTEM_PATH})
                line = {"argv": argv, "rc": r.rc, "out": r.out.decode(), "err": r.err.decode()}
            except OSError as exc:
                line = {"argv": argv, "error": "%s: %s" % (type(exc).__name__, exc)}
            f.write(json.dumps(line) + "\n")
    return Result(interfaces=[{"name": "ran-%d" % len(runs)}])


PLUGIN = skel.Plugin("spawner", add=cmd_add, delete=lambda a: None)
