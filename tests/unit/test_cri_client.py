"""The hand-written CRI client's wire formats (tests/e2e/cri.py), no runtime needed."""

import os
import socket
import struct
import sys
import threading

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e"))
import cri  # noqa: E402


def test_varint_and_fields_round_trip():
    msg = (cri.field_str(1, "pod") + cri.field_int(2, 300) + cri.field_int(3, 0)
           + cri.field_bytes(4, cri.field_str(1, "x" * 200)) + cri.field_map(6, {"b": "2", "a": "1"}))
    d = cri.decode(msg)
    assert d[1] == [b"pod"] and d[2] == [300] and 3 not in d
    assert cri.decode(d[4][0])[1] == [b"x" * 200]
    assert [cri.decode(e) for e in d[6]] == [{1: [b"a"], 2: [b"1"]}, {1: [b"b"], 2: [b"2"]}]


def test_pod_sandbox_config_fields():
    cfg = cri.decode(cri.pod_sandbox_config("web", "u1", "ns", port_mappings=[
        {"container_port": 80, "host_port": 8080, "protocol": "udp"}], cgroup_parent="/p"))
    meta = cri.decode(cfg[1][0])
    assert (meta[1], meta[2], meta[3]) == ([b"web"], [b"u1"], [b"ns"])
    assert cfg[2] == [b"web"]
    assert cri.decode(cfg[5][0]) == {1: [1], 2: [80], 3: [8080]}
    assert cri.decode(cfg[8][0]) == {1: [b"/p"]}


def test_hpack_integer_encoding():
    assert cri._hpack_int(10, 7) == b"\x0a"
    assert cri._hpack_int(126, 7) == b"\x7e"
    assert cri._hpack_int(127, 7) == b"\x7f\x00"
    assert cri._hpack_int(1337, 5) == bytes((31, 154, 10))      # RFC 7541 C.1.2


def _fake_server(path, reply):
    """Accept one HTTP/2 connection, read the request, send ``reply`` frames."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got = {}

    def serve():
        conn, _ = srv.accept()
        with conn:
            buf = cri._recv_exact(conn, len(cri.PREFACE))
            while True:                      # frames until the request's END_STREAM
                head = cri._recv_exact(conn, 9)
                payload = cri._recv_exact(conn, int.from_bytes(head[:3], "big"))
                buf += head + payload
                if head[3] == cri.DATA and head[4] & cri.END_STREAM:
                    break
            got["request"] = buf
            conn.sendall(reply)
            conn.settimeout(10)
            while conn.recv(4096):           # the client's ACKs, until it hangs up
                pass
        srv.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t, got


def test_unary_call_success_and_error(tmp_path):
    msg = cri.field_str(1, "sandbox-id")
    body = b"\x00" + struct.pack(">I", len(msg)) + msg
    ok = (cri._frame(cri.SETTINGS, 0, 0) + cri._frame(cri.HEADERS, cri.END_HEADERS, 1, b"\x88")
          + cri._frame(cri.DATA, 0, 1, body[:4]) + cri._frame(cri.DATA, 0, 1, body[4:])
          + cri._frame(cri.HEADERS, cri.END_HEADERS | cri.END_STREAM, 1, b"\x88"))
    t, got = _fake_server(str(tmp_path / "ok.sock"), ok)
    out = cri.unary(str(tmp_path / "ok.sock"), "RunPodSandbox", b"req", timeout=10)
    t.join(5)
    assert out == msg
    assert got["request"].startswith(cri.PREFACE)
    assert b"/runtime.v1.RuntimeService/RunPodSandbox" in got["request"]
    err = cri._frame(cri.HEADERS, cri.END_HEADERS | cri.END_STREAM, 1, b"\x88")
    t, _ = _fake_server(str(tmp_path / "err.sock"), err)
    with pytest.raises(cri.RpcError):
        cri.unary(str(tmp_path / "err.sock"), "PodSandboxStatus", b"", timeout=10)
    t.join(5)
