"""Hostile names and paths from the runtime, through the built plugins in
sandbox namespaces (issue 16): a pod name in another script."""

import pytest

pytestmark = pytest.mark.root


@pytest.mark.parametrize("ns,pod,cid", [("default", "日本語のポッド名" * 12, "abc123"),
                                        ("名前空間" * 8, "é" * 100, "abc123"),
                                        ("default", "p" * 92, "c" * 123)], ids=["cjk", "cjk-ns", "ascii-255"])
def test_a_pod_name_in_another_script_fits_the_veth_alias(node, ns, pod, cid):
    """The alias was measured in characters against the kernel's limit in
    bytes: every bridge ADD of such a pod failed with a 999 (ERANGE).  The
    limit is 254 bytes and the NUL: an ASCII pod name that made the alias
    exactly 255 failed the same way."""
    ctr = node.container()
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s" % (ns, pod)
    res = node.add(node.conf(isGateway=True), ctr, cid=cid, args=args)
    alias = node.links()[res["interfaces"][1]["name"]]["ifalias"]
    assert alias.startswith("pycni net=bnet cid=%s if=eth0 pod=%s" % (cid, ns[:4]))
    assert len(alias.encode()) <= 254 and (ns + "/" + pod).startswith(alias.split(" pod=")[1])
    node.delete(node.conf(isGateway=True), ctr, cid=cid)
    node.assert_clean()
