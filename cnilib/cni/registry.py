"""The suite's commands: which module each exec'd name runs.

Read by cnilib.main (argv[0] -> module), cnilib.cni.invoke (a delegate run
in-process) and the agent (what a worker may run).
"""

# command name -> module; a plugin module exposes PLUGIN (a skel.Plugin)
PLUGINS = {
    "loopback": "plugins.loopback",
    "flannel": "plugins.flannel",
    "portmap": "plugins.portmap",
    "firewall": "plugins.firewall",
    "host-local": "plugins.host_local",
    "tuning": "plugins.tuning",
    "bridge": "plugins.bridge",
}
TOOLS = {
    "pycni": "cnilib.ops.cli",
}
