"""The distribution matrix: the suite run inside real Debian 11, 12 and 13
roots (glibc 2.31/2.36/2.41, python3 3.9/3.11/3.13), both install forms.

A ``node`` is one test's Kubernetes node: a sandbox network namespace made
by the test plays its host netns, and every command of the node (the Go
libcni driver, the plugins it execs, their nft/iptables/ip) runs chrooted
into the root, entered inside that namespace: enter the namespace, then
chroot.  The machine's /run/netns is bound onto the root's own /run/netns,
so ``CNI_NETNS=/var/run/netns/<pod>`` names the test's pod namespaces.  The
node's state (network configs, the libcni cache, host-local's dataDir,
flannel's subnet.env, the suite's state dirs and log) lives in a temp dir
bound at the same path inside the root, so a path reads the same from the
test and from the plugins.  Nothing is written into the cached roots (they
are mounted read-only) and nothing stays mounted.
"""

import distroots
import pytest
from distronode import RELEASES, Node


@pytest.fixture(scope="session")
def distro_roots():
    """release -> root path, made once per machine (./build.sh root)."""
    made = {}

    def get(release):
        if release not in made:
            try:
                made[release] = distroots.root(release)
            except distroots.RootUnavailable as exc:
                made[release] = exc
        if isinstance(made[release], Exception):
            pytest.skip(str(made[release]))
        return made[release]
    return get


@pytest.fixture(params=RELEASES, ids=lambda r: "debian" + r)
def release(request):
    return request.param


@pytest.fixture
def node(release, distro_roots, plugins, go_driver, host, netns_factory):
    n = Node(release, distro_roots(release), plugins, go_driver, host, netns_factory)
    yield n
    n.close()
