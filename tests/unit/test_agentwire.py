"""The agent's wire format: what the shim sends is what the worker reads."""

import socket

from cnilib.agent import wire


def _roundtrip(plugin, env, stdin):
    a, b = socket.socketpair()
    try:
        a.sendall(wire.encode_request(plugin, env, stdin))
        return wire.read_request(b)
    finally:
        a.close()
        b.close()


def test_request_roundtrip_keeps_cni_env_and_stdin():
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a=b",
           "CNI_NETNS": "/var/run/netns/ü", "PYCNI_LOG": "/tmp/x\udcff.log",
           "PATH": "/usr/sbin:/usr/bin", "CNI_EMPTY": "",
           "HOME": "/root", "SSH_AUTH_SOCK": "/tmp/agent"}
    plugin, got, stdin = _roundtrip("bridge", env, b'{"cniVersion":"1.0.0"}')
    assert plugin == "bridge"
    assert stdin == b'{"cniVersion":"1.0.0"}'
    assert got == {k: v for k, v in env.items() if k not in ("HOME", "SSH_AUTH_SOCK")}


def test_request_without_stdin_or_env():
    assert _roundtrip("loopback", {}, b"") == ("loopback", {}, b"")


def test_a_foreign_magic_is_refused():
    a, b = socket.socketpair()
    try:
        a.sendall(b"PYCNI1" + b"\0" * 8)
        try:
            wire.read_request(b)
        except ValueError:
            pass
        else:
            raise AssertionError("an older agent's frame was accepted")
    finally:
        a.close()
        b.close()


def test_agent_preload_finds_every_module_it_names():
    from cnilib.agent import server
    msgs = []
    server.preload(msgs.append)
    assert msgs == []
    import sys
    assert "pyroute2.netlink.rtnl.ifinfmsg" in sys.modules     # the VLAN requests' encoder
