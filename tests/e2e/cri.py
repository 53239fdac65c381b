"""A very small CRI client: the four pod-sandbox calls kubelet makes, over gRPC.

crictl is not packaged for Debian 12, and neither a Go CRI API package nor
gRPC is available offline, so this speaks the CRI (k8s.io/cri-api, package
runtime.v1) by hand, with the standard library only:

* gRPC is HTTP/2: one connection per call over the unix socket, the
  client preface and SETTINGS, a HEADERS frame (HPACK literals, never
  Huffman-coded, so no table is needed to send), and one DATA frame with
  the length-prefixed message.  A unary call succeeded when a response
  message came back; an error arrives as trailers only (grpc-status and
  grpc-message, which Go's HPACK encoder Huffman-codes: the caller shows
  containerd's own log instead of decoding them).
* protobuf: the few messages needed are encoded and decoded here by field
  number, as written in api.proto:

  RunPodSandboxRequest      config=1 (PodSandboxConfig)
  PodSandboxConfig          metadata=1 hostname=2 log_directory=3 port_mappings=5
                            labels=6 annotations=7 linux=8
  PodSandboxMetadata        name=1 uid=2 namespace=3 attempt=4
  PortMapping               protocol=1 container_port=2 host_port=3 host_ip=4
  LinuxPodSandboxConfig     cgroup_parent=1
  RunPodSandboxResponse     pod_sandbox_id=1
  Stop/Remove/StatusRequest pod_sandbox_id=1 (status: verbose=2)
  PodSandboxStatusResponse  status=1 info=2 (map<string,string>)
  PodSandboxStatus          id=1 state=3 network=5
  PodSandboxNetworkStatus   ip=1 additional_ips=2 (PodIP ip=1)
"""

import json
import socket
import struct

SERVICE = "/runtime.v1.RuntimeService/"
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1


# ------------------------------------------------------------ protobuf wire format


def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num, data):
    if isinstance(data, str):
        data = data.encode()
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def field_int(num, value):
    return _varint(num << 3) + _varint(value) if value else b""


def field_str(num, value):
    return field_bytes(num, value) if value else b""


def field_map(num, mapping):
    return b"".join(field_bytes(num, field_str(1, k) + field_str(2, v))
                    for k, v in sorted((mapping or {}).items()))


def decode(data):
    """{field number: [values]}: ints for varints, bytes for length-delimited."""
    out, i = {}, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _read_varint(data, i)
        elif wt == 2:
            n, i = _read_varint(data, i)
            val, i = data[i:i + n], i + n
        elif wt == 1:
            val, i = data[i:i + 8], i + 8
        elif wt == 5:
            val, i = data[i:i + 4], i + 4
        else:
            raise ValueError("unsupported protobuf wire type %d" % wt)
        out.setdefault(num, []).append(val)
    return out


def _read_varint(data, i):
    shift = n = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _first(msg, num, default=b""):
    vals = msg.get(num)
    return vals[0] if vals else default


# ------------------------------------------------------------ messages


PROTOCOLS = {"tcp": 0, "udp": 1, "sctp": 2}


def pod_sandbox_config(name, uid, namespace="default", hostname=None, log_directory="",
                       port_mappings=(), labels=None, annotations=None, cgroup_parent=""):
    meta = field_str(1, name) + field_str(2, uid) + field_str(3, namespace)
    ports = b"".join(
        field_bytes(5, field_int(1, PROTOCOLS[p.get("protocol", "tcp")])
                    + field_int(2, p["container_port"]) + field_int(3, p["host_port"])
                    + field_str(4, p.get("host_ip", "")))
        for p in port_mappings)
    linux = field_str(1, cgroup_parent)
    return (field_bytes(1, meta) + field_str(2, hostname or name) + field_str(3, log_directory)
            + ports + field_map(6, labels) + field_map(7, annotations) + field_bytes(8, linux))


class SandboxStatus:
    def __init__(self, raw):
        resp = decode(raw)
        st = decode(_first(resp, 1))
        self.id = _first(st, 1).decode()
        self.state = _first(st, 3, 0)
        net = decode(_first(st, 5))
        self.ip = _first(net, 1).decode()
        self.additional_ips = [decode(p).get(1, [b""])[0].decode() for p in net.get(2, [])]
        self.info = {}
        for entry in resp.get(2, []):
            kv = decode(entry)
            self.info[_first(kv, 1).decode()] = _first(kv, 2).decode()

    @property
    def ready(self):
        return self.state == SANDBOX_READY

    def netns_path(self):
        """The pod's netns, from the verbose info (containerd: info.runtimeSpec)."""
        try:
            spec = json.loads(self.info["info"])["runtimeSpec"]
        except (KeyError, ValueError):
            return None
        for ns in spec.get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                return ns.get("path")
        return None


# ------------------------------------------------------------ gRPC over HTTP/2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
BIG_WINDOW = (1 << 31) - 1 - 65535


class RpcError(Exception):
    """A call that returned no response message (a gRPC error status)."""


def _frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(">I", stream) + payload


def _hpack_int(value, prefix_bits):
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes((value,))
    out, value = bytearray((top,)), value - top
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name, value):
    """HPACK 'literal header field without indexing, new name', no Huffman."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(n), 7) + n + _hpack_int(len(v), 7) + v


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RpcError("connection closed by the server")
        buf += chunk
    return bytes(buf)


def unary(socket_path, method, request, timeout=120):
    """One unary gRPC call: request bytes in, response message bytes out."""
    headers = (b"\x83\x86"                     # :method POST, :scheme http (static table)
               + _literal(":path", SERVICE + method) + _literal(":authority", "localhost")
               + _literal("content-type", "application/grpc") + _literal("te", "trailers"))
    body = b"\x00" + struct.pack(">I", len(request)) + request
    settings = struct.pack(">HI", 4, BIG_WINDOW + 65535)   # INITIAL_WINDOW_SIZE
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, settings)
                     + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", BIG_WINDOW))
                     + _frame(HEADERS, END_HEADERS, 1, headers) + _frame(DATA, END_STREAM, 1, body))
        data, ended = b"", False
        while not ended:
            head = _recv_exact(sock, 9)
            length = int.from_bytes(head[:3], "big")
            ftype, flags = head[3], head[4]
            stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
            payload = _recv_exact(sock, length)
            if ftype == SETTINGS and not flags & ACK:
                sock.sendall(_frame(SETTINGS, ACK, 0))
            elif ftype == PING and not flags & ACK:
                sock.sendall(_frame(PING, ACK, 0, payload))
            elif ftype == GOAWAY:
                raise RpcError("%s: the server sent GOAWAY" % method)
            elif stream == 1 and ftype == RST_STREAM:
                raise RpcError("%s: the server reset the stream (code %d)"
                               % (method, struct.unpack(">I", payload)[0]))
            elif stream == 1 and ftype in (DATA, HEADERS):
                if ftype == DATA:
                    if flags & PADDED:
                        payload = payload[1:len(payload) - payload[0]]
                    data += payload
                ended = bool(flags & END_STREAM)
    if len(data) < 5:
        raise RpcError("%s failed: the runtime answered with an error status" % method)
    (n,) = struct.unpack(">I", data[1:5])
    return data[5:5 + n]


# ------------------------------------------------------------ client


class Client:
    """RuntimeService over a unix socket; a failed call raises RpcError."""

    def __init__(self, socket_path, timeout=120):
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method, request):
        return unary(self.socket_path, method, request, self.timeout)

    def wait_ready(self, timeout=30):
        """Until the runtime answers Version (the socket exists before it serves)."""
        import time
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.version()
            except (OSError, RpcError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def version(self):
        resp = decode(self.call("Version", field_str(1, "v1")))
        return {k: _first(resp, n).decode() for k, n in
                (("runtime_name", 2), ("runtime_version", 3), ("runtime_api_version", 4))}

    def run_pod_sandbox(self, config):
        return _first(decode(self.call("RunPodSandbox", field_bytes(1, config))), 1).decode()

    def pod_sandbox_status(self, sandbox_id, verbose=False):
        req = field_str(1, sandbox_id) + field_int(2, 1 if verbose else 0)
        return SandboxStatus(self.call("PodSandboxStatus", req))

    def stop_pod_sandbox(self, sandbox_id):
        self.call("StopPodSandbox", field_str(1, sandbox_id))

    def remove_pod_sandbox(self, sandbox_id):
        self.call("RemovePodSandbox", field_str(1, sandbox_id))
