"""A plugin for the agent tests: ADD runs a child program, as plugins that
exec nft, iptables-restore or a delegate IPAM plugin do, and names its exit
status in the result.  Registered in an agent by tests/integration/test_agent.py."""

from cnilib.base import proc
from cnilib.cni import skel
from cnilib.cni.types import Result


def cmd_add(a):
    r = proc.run(["true"], env={"PATH": proc.SYSTEM_PATH})
    return Result(interfaces=[{"name": "child-rc-%d" % r.rc}])


PLUGIN = skel.Plugin("spawner", add=cmd_add, delete=lambda a: None)
