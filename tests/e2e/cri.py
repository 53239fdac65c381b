"""A very small CRI client: the four pod-sandbox calls kubelet makes, over gRPC.

crictl is not packaged for Debian 12 and no Go CRI API package is on the
machine, so this speaks the CRI (k8s.io/cri-api, package runtime.v1)
directly: grpcio carries raw bytes (no generated stubs), and the few
messages needed are encoded and decoded here by field number, as written
in api.proto:

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


# ------------------------------------------------------------ client


class Client:
    """RuntimeService over a unix socket; errors raise grpc.RpcError."""

    def __init__(self, socket_path, timeout=120):
        import grpc
        self.grpc = grpc
        self.channel = grpc.insecure_channel("unix://" + socket_path)
        self.timeout = timeout

    def call(self, method, request):
        stub = self.channel.unary_unary(SERVICE + method)
        return stub(request, timeout=self.timeout)

    def wait_ready(self, timeout=30):
        self.grpc.channel_ready_future(self.channel).result(timeout=timeout)

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

    def close(self):
        self.channel.close()
