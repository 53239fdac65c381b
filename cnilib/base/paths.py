"""Where the suite keeps its own files (besides the reference layouts).

run dir   -- locks and other scratch that must not survive a reboot
             ($PYCNI_RUN_DIR, default /run/pycni)
state dir -- records that must survive one ($PYCNI_STATE_DIR, default
             /var/lib/cni/pycni)
Plugin-specific state keeps the reference's keys and defaults (host-local's
``dataDir``, flannel's ``dataDir``), so upgrades from the Go plugins work.
"""

import os


def run_dir():
    return os.environ.get("PYCNI_RUN_DIR") or "/run/pycni"


def state_dir():
    return os.environ.get("PYCNI_STATE_DIR") or "/var/lib/cni/pycni"
