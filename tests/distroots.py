"""Real Debian roots for the distribution matrix, and running commands in
them (tools/roots.py, shared with build.sh and the bench).

``root(release)`` returns a minbase root of that Debian release (made once
per machine by ``./build.sh root``, cached in /var/cache/pycni-roots and
reused by every clone).  ``InRoot`` runs a command chrooted into such a
root, inside a sandbox network namespace when given one, in a private mount
namespace of its own, with the root read-only: nothing stays mounted and
the cached root is never written, whatever happens to the test.
"""

import os
import subprocess

from cnitest import ROOT

from tools.roots import SUITES, SYSTEM_PATH, TEST_PACKAGES, InRoot, RootUnavailable, root

__all__ = ["SUITES", "SYSTEM_PATH", "TEST_PACKAGES", "InRoot", "RootUnavailable", "root", "testdeps"]


def testdeps(python):
    """The site-packages dir holding the unit tier's test packages for
    python3 ``python`` ("3.9", "3.11", "3.13"), made once per machine by
    ``./build.sh testdeps`` beside the roots (never installed into one)."""
    p = subprocess.run([os.path.join(ROOT, "build.sh"), "testdeps", python],
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RootUnavailable("./build.sh testdeps %s failed:\n%s" % (python, p.stderr[-3000:]))
    return p.stdout.strip().splitlines()[-1]
