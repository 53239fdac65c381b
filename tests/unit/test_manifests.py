"""deploy/: the DaemonSet and the kube-flannel patch, validated offline
against the Kubernetes schemas kubernetes-validate carries, and held to
what the image and the installer expect."""

import os
import re

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (requirements.txt)")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
# the oldest Kubernetes the package carries that clusters still run, and the newest
VERSIONS = ("1.28.0", kv.latest_version())


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(path):
    return {d["kind"]: d for d in docs(path)}


def image_env():
    """The env ./build.sh image sets in the image."""
    with open(os.path.join(ROOT, "build.sh")) as f:
        return dict(m.split("=", 1) for m in re.findall(r"--env (\S+=\S+)", f.read()))


@pytest.mark.parametrize("version", VERSIONS)
def test_kube_pycni_validates(version):
    kinds = []
    for d in docs(os.path.join(DEPLOY, "kube-pycni.yml")):
        kv.validate(d, version, strict=True)
        kinds.append(d["kind"])
    assert kinds == ["Namespace", "ServiceAccount", "DaemonSet"]


def test_invalid_manifest_is_caught():
    ds = by_kind(os.path.join(DEPLOY, "kube-pycni.yml"))["DaemonSet"]
    ds["spec"]["template"]["spec"]["containers"][0]["resource"] = {}      # a typo'd key
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, VERSIONS[-1], strict=True)


def test_daemonset_runs_the_installer_on_every_node():
    from cnilib.cni import version
    ds = by_kind(os.path.join(DEPLOY, "kube-pycni.yml"))["DaemonSet"]
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["hostNetwork"] is True                   # no pod network before the plugins exist
    (init,), (main,) = pod["initContainers"], pod["containers"]
    for c in (init, main):
        assert c["image"] == "localhost/pycni:" + version.SUITE_VERSION
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert init["args"] == ["install"] and main["args"] == ["pause"]
    env = {e["name"]: e["value"] for e in init["env"]}
    img = image_env()
    assert env["PYCNI_BIN_DIR"] == img["PYCNI_BIN_DIR"] and env["PYCNI_CONF_DIR"] == img["PYCNI_CONF_DIR"]
    vols = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: (vols[m["name"]], m.get("readOnly", False)) for m in init["volumeMounts"]}
    # each host dir where the installer looks for it, the node's / read-only at the host root
    assert mounts[env["PYCNI_HOST_ROOT"]] == ("/", True)
    assert mounts[env["PYCNI_BIN_DIR"]] == ("/opt/cni/bin", False)
    assert mounts[env["PYCNI_CONF_DIR"]] == ("/etc/cni/net.d", False)
    assert "SYS_CHROOT" in init["securityContext"]["capabilities"]["add"]


def strategic_delete(target, patch):
    """The part of a strategic merge patch this repo uses: list items of
    containers merged by name, ``$patch: delete`` removing one."""
    out = dict(target)
    for key, val in patch.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_delete(out[key], val)
        elif isinstance(val, list) and isinstance(out.get(key), list):
            drop = {i["name"] for i in val if i.get("$patch") == "delete"}
            assert all(i.get("$patch") == "delete" for i in val), "only deletes are expected"
            out[key] = [i for i in out[key] if i.get("name") not in drop]
        elif key not in ("apiVersion", "kind", "metadata"):
            out[key] = val
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_kube_flannel_patch_drops_only_the_plugin_copy(version):
    ds = docs(os.path.join(ROOT, "tests", "unit", "golden", "kube-flannel-ds.yml"))[0]
    kv.validate(ds, version, strict=True)
    (patch,) = docs(os.path.join(DEPLOY, "kube-flannel-patch.yml"))
    for k in ("apiVersion", "kind"):
        assert patch[k] == ds[k]
    assert patch["metadata"] == {"name": ds["metadata"]["name"], "namespace": ds["metadata"]["namespace"]}
    patched = strategic_delete(ds, patch)
    kv.validate(patched, version, strict=True)
    inits = patched["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["install-cni"]       # the conflist is still written
    assert "/opt/cni/bin/flannel" not in yaml.safe_dump(patched)
    assert patched["spec"]["template"]["spec"]["containers"] == ds["spec"]["template"]["spec"]["containers"]


def test_kustomize_overlay_is_pinned_and_uses_the_patch():
    with open(os.path.join(DEPLOY, "kube-flannel", "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    (res,) = k["resources"]
    assert re.search(r"/releases/download/v\d+\.\d+\.\d+/kube-flannel\.yml$", res), res
    (p,) = k["patches"]
    assert os.path.realpath(os.path.join(DEPLOY, "kube-flannel", p["path"])) == \
        os.path.join(DEPLOY, "kube-flannel-patch.yml")
