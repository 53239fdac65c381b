"""Every default path of the suite, in one place.

The reference layouts keep the reference's defaults, so that upgrades from
the Go plugins (and runtimes that assume them) find what they expect; a
network config or an option overrides each of them:

  CONF_DIR             network configs a runtime loads
  BIN_DIRS             where runtimes look for plugins (containerd/cri-o, Red Hat)
  CACHE_DIR            libcni's result cache (``results/`` under it), $PYCNI_CACHE_DIR
  HOST_LOCAL_DIR       host-local's leases (ipam.dataDir)
  FLANNEL_DIR          flannel's saved delegate configs (dataDir)
  FLANNEL_SUBNET_FILE  what flanneld writes for this node (subnetFile)
  TUNING_DIR           tuning's saved originals (dataDir; gone with a reboot, as the links)
  TUNING_ALLOWLIST     the sysctl allowlist of the reference tuning plugin
  NETNS_DIR            named network namespaces (ip netns, runtimes)

The suite's own files:

  run dir              locks and other scratch that must not survive a reboot
                       ($PYCNI_RUN_DIR, default /run/pycni)
  state dir            records that must survive one ($PYCNI_STATE_DIR,
                       default /var/lib/cni/pycni)
  LOG_FILE             the suite's log ($PYCNI_LOG)
  AGENT_SOCKET         the warm agent's socket ($PYCNI_AGENT_SOCKET)
"""

import os

CONF_DIR = "/etc/cni/net.d"
BIN_DIRS = ("/opt/cni/bin", "/usr/libexec/cni")
CACHE_DIR = "/var/lib/cni"
HOST_LOCAL_DIR = "/var/lib/cni/networks"
FLANNEL_DIR = "/var/lib/cni/flannel"
FLANNEL_SUBNET_FILE = "/run/flannel/subnet.env"
TUNING_DIR = "/run/cni/tuning"
TUNING_ALLOWLIST = "/etc/cni/tuning/allowlist.conf"
NETNS_DIR = "/var/run/netns"

RUN_DIR = "/run/pycni"
STATE_DIR = "/var/lib/cni/pycni"
LOG_FILE = "/var/log/pycni/pycni.log"
AGENT_SOCKET = "/run/pycni/agent.sock"


def run_dir():
    return os.environ.get("PYCNI_RUN_DIR") or RUN_DIR


def state_dir():
    return os.environ.get("PYCNI_STATE_DIR") or STATE_DIR
