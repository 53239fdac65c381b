"""A plugin for the agent tests: ADD says whether the path in its config's
``"probe"`` exists where it runs (the worker's root must be the caller's).
It never enters CNI_NETNS, so a chrooted caller can name any path there."""

import os

from cnilib.cni import skel
from cnilib.cni.types import Result


def cmd_add(a):
    return Result(interfaces=[{"name": "exists-%s" % os.path.exists(a.conf["probe"])}])


PLUGIN = skel.Plugin("prober", add=cmd_add, delete=lambda a: None, uses_netns=False)
