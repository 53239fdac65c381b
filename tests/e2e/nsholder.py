"""PID 1 of a runtime sandbox: private mounts, then wait until told to go.

Started by runtimes.Sandbox as

    ip netns exec <sandbox> unshare -m -p -f --mount-proc --propagation private \
        python3 nsholder.py <spec.json>

so it runs in the sandbox's network namespace, in a mount namespace of its
own (nothing it mounts reaches the machine) and as init of a new PID
namespace.  The runtime commands the tests run join these namespaces with
nsenter.  When stdin closes (the test is done, or it died) this process
exits, and the kernel kills every process left in the PID namespace:
daemons, conmon, containers.  No cleanup code has to be right for that.

The spec lists bind mounts {"src", "dst"} (a temp dir over /run,
/var/lib, /etc/containers, ...) and the cgroup hierarchies to mount again
(``ip netns exec`` mounted a fresh /sys for the sandbox, which has none).
It uses the mount(8) binary: argv lists, no shell.
"""

import json
import os
import select
import subprocess
import sys


def mount(*argv):
    subprocess.run(["mount", *argv], check=True, capture_output=True, text=True)


def setup(spec):
    for m in spec.get("binds", ()):
        os.makedirs(m["src"], exist_ok=True)
        mount("--bind", m["src"], m["dst"])
    cg = spec.get("cgroups")
    if cg:
        mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/sys/fs/cgroup")
        for c in cg:
            os.makedirs(c["dst"], exist_ok=True)
            mount("-t", c["fstype"], "-o", c["options"], c["fstype"], c["dst"])


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        setup(spec)
    except subprocess.CalledProcessError as exc:
        sys.stdout.write("error: %s: %s\n" % (" ".join(exc.cmd), exc.stderr.strip()))
        sys.stdout.flush()
        return 1
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # init duties: reap orphans until stdin reaches EOF
    while True:
        r, _, _ = select.select([0], [], [], 0.5)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if r and not os.read(0, 4096):
            return 0


if __name__ == "__main__":
    sys.exit(main())
