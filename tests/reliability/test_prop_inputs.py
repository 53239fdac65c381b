"""Property-based tests over config parsing and CNI_ARGS (no root needed).

Every plugin runs in-process through ``cnilib.cni.skel.execute`` on generated
input: valid configs with keys replaced by arbitrary JSON, arbitrary JSON
documents, arbitrary bytes, arbitrary CNI_ARGS / ifname / container ID.
The answer must be a success or a well-formed CNI error (JSON with an int
code, a one-line msg, exit 1), never an exception escaping the skel and
never a 999 that is a Python exception in disguise ("TypeError: ...").

Nothing may reach the machine: every way to change it (netlink sockets,
entering a netns, exec'ing nft/iptables/conntrack, sysctl writes, state
file writes, locks, unlinks) is sealed and raises ``Reached``, which means
"the input was accepted and the plugin went on to act": a pass.  The
netns-using plugins run as copies with ``uses_netns=False``, so their
handlers are reached without a namespace.
"""

import importlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relnode import count

from cnilib import main
from cnilib.base import errors
from cnilib.cni import skel

PLUGINS = sorted(main.PLUGINS)
VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
PY_EXCEPTION = re.compile(r"^[A-Z]\w*(Error|Exception|Exit|Interrupt)\b")
PREV = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0}]}
PROP = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Reached(BaseException):
    """The request passed validation and the plugin went on to act."""


def _reached(*_a, **_k):
    raise Reached()


@pytest.fixture
def sealed(monkeypatch, tmp_path):
    """Every side effect raises Reached; state paths point into tmp_path."""
    from cnilib import flannel
    from cnilib.base import fsutil, proc
    from cnilib.kernel import conntrack, netlink, netns, sysctl
    # every netlink socket (rtnetlink, nf_tables, conntrack) is one of these
    monkeypatch.setattr(netlink.Netlink, "__init__", _reached)
    monkeypatch.setattr(netlink.Netlink, "in_netns", classmethod(_reached))
    for mod, names in ((proc, ("run", "start")), (sysctl, ("write",)), (netns, ("setns",)),
                       (conntrack, ("conntrack_delete_dports", "conntrack_count")),
                       (fsutil, ("write_atomic", "ensure_dir", "ensure_root", "remove", "sweep_temps")),
                       (fsutil.Dir, ("write_atomic", "create_temp", "remove", "rmdir", "link", "rename",
                                     "utime", "sweep_temps")),
                       (flannel, ("wait_subnet_env",))):
        for n in names:
            monkeypatch.setattr(mod, n, _reached)
    # state dirs held by fd (cnilib.base.fsutil.Dir): reading is fine, making one is an effect
    open_root, sub = fsutil.open_root, fsutil.Dir.sub

    def sealed_root(path, create=False, *a, **k):
        if create:
            raise Reached()
        return open_root(path, create, *a, **k)

    def sealed_sub(self, name, create=False, *a, **k):
        if create:
            raise Reached()
        return sub(self, name, create, *a, **k)
    monkeypatch.setattr(fsutil, "open_root", sealed_root)
    monkeypatch.setattr(fsutil.Dir, "sub", sealed_sub)
    monkeypatch.setattr(netns.Enter, "__enter__", _reached)
    monkeypatch.setattr(fsutil.Flock, "__enter__", _reached)      # iptables.lock() is a Flock too
    for k, v in (("PYCNI_RUN_DIR", tmp_path / "run"), ("PYCNI_STATE_DIR", tmp_path / "state"),
                 ("PYCNI_LOG", "off"), ("PYCNI_TUNING_ALLOWLIST", tmp_path / "none")):
        monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("PYCNI_FAILPOINTS", raising=False)
    return tmp_path


def plugin(name):
    """A copy of plugin ``name`` that does not open CNI_NETNS."""
    real = importlib.import_module(main.PLUGINS[name]).PLUGIN
    p = skel.Plugin(real.name, cni_args=real.cni_args, uses_netns=False)
    p.handlers = dict(real.handlers)
    return p


def base_conf(name, tmp):
    c = {"cniVersion": "1.1.0", "name": "pnet", "type": name}
    ipam = {"type": "host-local", "dataDir": str(tmp / "ipam"),
            "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00:1::/64"}]]}
    if name == "bridge":
        c.update(bridge="br9", isGateway=True, ipMasq=True, ipam=ipam)
    elif name == "host-local":
        c["ipam"] = ipam
    elif name == "flannel":
        c.update(subnetFile=str(tmp / "subnet.env"), dataDir=str(tmp / "flannel"),
                 delegate={"isDefaultGateway": True}, ipam={"dataDir": str(tmp / "ipam")})
    elif name == "portmap":
        c.update(prevResult=PREV, runtimeConfig={"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    elif name in ("firewall", "tuning"):
        c.update(prevResult=PREV)
        if name == "tuning":
            c.update(mtu=1400, sysctl={"net.core.somaxconn": "512"}, dataDir=str(tmp / "tuning"))
    return c


def env(command, cid="c1", ifname="eth0", args="", path="/nonexistent-cni-path"):
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/x",
            "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": path, "PYCNI_LOG": "off"}


def run(p, e, data):
    """'reached', or (rc, parsed output); asserts the output is well formed."""
    count("generated inputs run through skel.execute")
    try:
        rc, out = skel.execute(p, e, stdin_data=data)
    except Reached:
        return "reached"
    if rc == 0:
        return rc, out
    assert rc == 1, (rc, out)
    err = json.loads(out)
    assert isinstance(err.get("code"), int) and not isinstance(err["code"], bool), err
    assert isinstance(err.get("msg"), str) and err["msg"] and "\n" not in err["msg"], err
    assert "\n" not in err.get("details", ""), err
    assert isinstance(err.get("cniVersion"), str), err
    assert not PY_EXCEPTION.match(err["msg"]), "an exception escaped as a 999: %s" % err
    return rc, err


# ---- strategies ---------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
NASTY = st.sampled_from(["", " ", "..", "../../etc", "a\x00b", "x\ny", "\u202e", "-1", "1e309",
                         "0.0.0.0/0", "::/0", "10.1.2.300/24", "host-local; rm -rf /",
                         "$(reboot)", "9" * 400, "eth0", "/", "%s", "{}", "null"])
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                   st.floats(allow_nan=False), TEXT, NASTY)
JSON = st.recursive(SCALAR, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                   st.dictionaries(TEXT, kids, max_size=4)),
                    max_leaves=12)

KEYS = ["cniVersion", "name", "type", "ipam", "ipam.type", "ipam.ranges", "ipam.subnet",
        "ipam.gateway", "ipam.routes", "ipam.dataDir", "ipam.rangeStart", "ipam.resolvConf",
        "bridge", "mtu", "vlan", "vlanTrunk", "isGateway", "isDefaultGateway", "ipMasq",
        "ipMasqBackend", "hairpinMode", "promiscMode", "macspoofchk", "forceAddress",
        "enabledad", "disableContainerInterface", "preserveDefaultVlan", "mac", "delegate",
        "delegate.type", "subnetFile", "subnetFileWait", "dataDir", "runtimeConfig",
        "runtimeConfig.portMappings", "runtimeConfig.mac", "runtimeConfig.ips", "prevResult",
        "prevResult.ips", "prevResult.interfaces", "backend", "snat", "masqAll", "markMasqBit",
        "externalSetMarkChain", "conditionsV4", "conditionsV6", "iptablesAdminChainName",
        "ingressPolicy", "sysctl", "promisc", "allmulti", "txQLen", "args", "args.cni",
        "cni.dev/valid-attachments", "cni.dev/attachments", "dns", "logLevel", "capabilities"]


def mutate(conf, changes):
    conf = json.loads(json.dumps(conf))
    for key, value in changes:
        if key.startswith("cni.dev/"):
            parts = [key]
        else:
            parts = key.split(".")
        d = conf
        for k in parts[:-1]:
            if not isinstance(d.get(k), dict):
                d[k] = {}
            d = d[k]
        if value == "<delete>":
            d.pop(parts[-1], None)
        else:
            d[parts[-1]] = value
    return conf


CHANGES = st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(JSON, st.just("<delete>"))),
                   min_size=1, max_size=4)


# ---- properties -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", PLUGINS)
@PROP
@given(changes=CHANGES, verb=st.sampled_from(VERBS))
def test_mutated_configs_get_a_result_or_a_cni_error(sealed, name, changes, verb):
    conf = mutate(base_conf(name, sealed), changes)
    run(plugin(name), env(verb), json.dumps(conf).encode())


@pytest.mark.parametrize("name", PLUGINS)
@PROP
@given(doc=JSON, raw=st.binary(max_size=64), verb=st.sampled_from(VERBS + ("VERSION",)))
def test_arbitrary_documents_and_bytes_get_a_cni_error(sealed, name, doc, raw, verb):
    for data in (json.dumps(doc).encode(), raw):
        got = run(plugin(name), env(verb), data)
        if verb != "VERSION" and not isinstance(doc, dict):
            assert got != "reached"


ARGS = st.one_of(
    TEXT, NASTY,
    st.lists(st.tuples(st.one_of(st.sampled_from(["IP", "MAC", "IgnoreUnknown", "K8S_POD_NAME",
                                                  "K8S_POD_NAMESPACE", "FOO"]), TEXT),
                       st.one_of(TEXT, NASTY)), max_size=5)
    .map(lambda kv: ";".join("%s=%s" % p for p in kv)))


@pytest.mark.parametrize("name", PLUGINS)
@PROP
@given(args=ARGS, ifname=st.one_of(TEXT, NASTY), cid=st.one_of(TEXT, NASTY),
       verb=st.sampled_from(VERBS), command=st.one_of(st.just(None), TEXT))
def test_arbitrary_environment_gets_a_result_or_a_cni_error(sealed, name, args, ifname, cid, verb,
                                                             command):
    e = env(command if command is not None else verb, cid=cid, ifname=ifname, args=args)
    run(plugin(name), e, json.dumps(base_conf(name, sealed)).encode())


@PROP
@given(raw=st.one_of(TEXT, NASTY, ARGS), known=st.sets(st.sampled_from(["IP", "MAC", "FOO"])))
def test_cni_args_parse_to_a_dict_or_an_environment_error(raw, known):
    from cnilib.cni import args
    try:
        got = args.parse_cni_args(raw, known)
    except errors.InvalidEnvironment as exc:
        assert exc.msg and exc.code == 4
        return
    assert isinstance(got, dict) and all(isinstance(k, str) and k for k in got)
    assert all("=" not in k and ";" not in k for k in got)


@pytest.mark.parametrize("schema", ["bridge", "flannel", "host-local", "portmap", "portmappings",
                                    "firewall", "tuning", "loopback", "result"])
@PROP
@given(doc=st.dictionaries(st.one_of(TEXT, st.sampled_from(KEYS)), JSON, max_size=6))
def test_schema_validation_returns_a_dict_or_a_config_error(schema, doc):
    from cnilib.cni import validate
    try:
        got = validate.validate(schema, doc)
    except errors.CniError as exc:
        assert exc.code in (6, 7) and "\n" not in errors.one_line(exc.msg)
        return
    assert isinstance(got, dict)


def test_the_seal_holds(sealed):
    """A valid ADD of each plugin gets as far as acting, and stops there."""
    for name in PLUGINS:
        if name in ("portmap", "firewall", "tuning", "loopback", "host-local", "flannel"):
            got = run(plugin(name), env("ADD"), json.dumps(base_conf(name, sealed)).encode())
            assert got == "reached", (name, got)
