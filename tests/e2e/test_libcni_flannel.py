"""conf/10-flannel.conflist (flannel -> bridge -> host-local, then portmap)
through Debian's libcni, as containerd runs kube-flannel's conflist: the
subnet file, state dirs and result cache in tmp, the node in a sandbox."""

import json
import os
import subprocess

import pytest
from cnitest import ROOT

pytestmark = pytest.mark.root

SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def ok(run):
    assert run.rc == 0, run
    return run


@pytest.mark.parametrize("v", ["0.3.1", "1.0.0"])
def test_flannel_conflist_through_libcni(clients, plugins, netns_factory, tmp_path, v):
    clients.use(plugins)
    base = clients.env
    clients.env = lambda **over: dict(base(**over), PYCNI_RUN_DIR=str(tmp_path / "run"),
                                      PYCNI_STATE_DIR=str(tmp_path / "pstate"))
    subnet = tmp_path / "subnet.env"
    subnet.write_text(SUBNET_ENV)
    with open(os.path.join(ROOT, "conf", "10-flannel.conflist")) as f:
        shipped = json.load(f)
    fl, pm = shipped["plugins"]
    fl = dict(fl, subnetFile=str(subnet), dataDir=str(tmp_path / "flannel"),
              ipam={"dataDir": str(tmp_path / "ipam")})
    conf = clients.conflist("cbr0", v, [fl, pm])
    ctr = netns_factory()
    kw = dict(netns=ctr.path, cid="kube-pod-1", ifname="eth0",
              args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
              capargs={"portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp"}]})
    res = json.loads(ok(clients.drive("add", conf, **kw)).stdout)
    assert res["cniVersion"] == v
    assert res["ips"][0]["address"] == "10.244.7.2/24"
    assert [i["name"] for i in res["interfaces"]][0] == "cni0"
    saved = tmp_path / "flannel" / "kube-pod-1"
    assert json.loads(saved.read_text())["ipam"]["ranges"] == [[{"subnet": "10.244.7.0/24"}]]
    links = clients.host.links()
    assert links["cni0"]["mtu"] == 1450
    # the hostPort answers from the node (containerd sent Go-style HostPort keys)
    srv = subprocess.Popen(["ip", "netns", "exec", ctr.name, "python3", "-c",
                            "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,"
                            "socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',80));s.listen(1);"
                            "c,a=s.accept();c.sendall(b'pod');c.close()"])
    try:
        got = ""
        for _ in range(50):
            p = clients.host.run("python3", "-c", "import socket;c=socket.create_connection(("
                                 "'10.244.7.1',8080),timeout=1);print(c.recv(9).decode())", check=False)
            if p.returncode == 0:
                got = p.stdout.strip()
                break
        assert got == "pod"
    finally:
        srv.kill()
        srv.wait()
    if v != "0.3.1":
        ok(clients.drive("check", conf, **kw))
    ok(clients.drive("del", conf, **kw))
    assert not saved.exists()
    assert [f for f in os.listdir(tmp_path / "ipam" / "cbr0") if f[0].isdigit()] == []
    assert "eth0" not in ctr.links()
    ok(clients.drive("del", conf, **kw))      # containerd's second DEL: nothing left, still 0
