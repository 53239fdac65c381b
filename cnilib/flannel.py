"""The flannel meta-plugin's work: subnet.env, the delegate config, the saved file.

flanneld writes the node's lease to subnet.env; the plugin turns it into a
bridge + host-local config (the "delegate"), saves that under
``<dataDir>/<container id>`` and hands it to the delegate.  DEL replays the
saved config, so the delegate sees at DEL exactly what it saw at ADD.  Both
the file layout and the delegate JSON are the reference plugin's
(flannel-io/cni-plugin), byte for byte after key sorting, so files the Go
plugin saved are honoured and vice versa.

Beyond the reference:
  * ADD waits a bounded time for a missing or incomplete subnet.env (node
    start-up races flanneld) and then fails with code 11 naming the file
    and what is missing;
  * the saved file is written atomically and removed only after the
    delegate's DEL succeeded, so a retried DEL still works;
  * when the saved file is missing, empty or corrupt, DEL rebuilds the
    config from the current one and subnet.env, or, without subnet.env,
    releases the lease through the IPAM plugin and removes the veth itself.

No lock guards the saved files: each belongs to one container, whose
ADD/DEL/CHECK the runtime serialises, and GC never runs concurrently with
ADD or DEL on a network (spec 1.1 section 3).
"""

import errno
import os
import stat
import time

from cnilib.base import errors, fsutil, jsonio, paths

MAX_SUBNET_FILE = 64 * 1024
POLL_INTERVAL = 0.05

# host-local DEL releases by (container ID, ifname) whatever the ranges, but
# its config must still hold a valid range: this one stands in when the
# node's real subnet is unknown (subnet.env gone).
PLACEHOLDER_SUBNET = "169.254.0.0/16"

NETWORK, SUBNET = "FLANNEL_NETWORK", "FLANNEL_SUBNET"
NETWORK6, SUBNET6 = "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET"
MTU, IPMASQ = "FLANNEL_MTU", "FLANNEL_IPMASQ"
KEYS = (NETWORK, SUBNET, NETWORK6, SUBNET6, MTU, IPMASQ)


# ------------------------------------------------------------ subnet.env


class SubnetEnvError(Exception):
    """subnet.env is absent, unreadable, incomplete or has a bad value.

    ``kind`` is one of "absent", "unreadable", "missing", "invalid";
    ``str()`` is one line naming the file.
    """

    def __init__(self, kind, msg):
        super().__init__(msg)
        self.kind = kind
        self.msg = msg


class SubnetEnv:
    """The node's lease as flanneld published it.  Networks and subnets are
    CIDR strings with the host bits masked, as Go's net.ParseCIDR gives them."""

    __slots__ = ("networks", "subnet", "networks6", "subnet6", "mtu", "ipmasq")

    def __init__(self):
        self.networks = []
        self.subnet = None
        self.networks6 = []
        self.subnet6 = None
        self.mtu = None
        self.ipmasq = None

    def missing(self):
        """The reference's rule: either family will do, MTU and IPMASQ are required."""
        out = []
        if not self.networks and not self.networks6:
            out += [NETWORK, NETWORK6]
        if self.subnet is None and self.subnet6 is None:
            out += [SUBNET, SUBNET6]
        if self.mtu is None:
            out.append(MTU)
        if self.ipmasq is None:
            out.append(IPMASQ)
        return out

    def subnets(self):
        return [s for s in (self.subnet, self.subnet6) if s]

    def all_networks(self):
        return self.networks + self.networks6


def parse_cidr(text):
    """Go's net.ParseCIDR: "10.244.1.1/24" -> "10.244.1.0/24" (host bits
    masked); ValueError for anything Go refuses."""
    import ipaddress
    addr, sep, plen = text.partition("/")
    # leading zeros in an IPv4 octet: Go refuses them, as ipaddress does only
    # from Python 3.9.5 on (CVE-2021-29921; Debian 11 shipped 3.9.2)
    quad = addr.rpartition(":")[2].split(".")
    if (not sep or not plen.isascii() or not plen.isdigit() or "%" in addr
            or (len(quad) > 1 and any(len(o) > 1 and o[0] == "0" for o in quad))):
        raise ValueError("%r is not a CIDR such as 10.244.0.0/16" % text)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError("%r is not a CIDR such as 10.244.0.0/16" % text) from None


def _parse_uint32(text):
    if not text or not text.isascii() or not text.isdigit() or int(text) > 0xFFFFFFFF:
        raise ValueError("%r is not an unsigned 32-bit decimal number" % text)
    return int(text)


def parse_subnet_env(text, path=paths.FLANNEL_SUBNET_FILE):
    """Parse subnet.env text with the reference's rules.

    Each line is split on its first '='; only the six known keys count, so a
    line with leading space or ``export`` is ignored, as is a known key
    without '=' (the reference panics on that one).  A repeated key replaces
    the earlier value.  Network lists are comma separated and de-duplicated.
    FLANNEL_IPMASQ is true only for the exact text ``true``.  Raises
    SubnetEnvError("invalid") for a value the reference refuses and
    SubnetEnvError("missing") naming every missing key.
    """
    env = SubnetEnv()
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.endswith("\r"):
            line = line[:-1]
        key, sep, value = line.partition("=")
        if not sep or key not in KEYS:
            continue
        try:
            if key in (NETWORK, NETWORK6):
                nets = []
                for item in value.split(","):
                    net = parse_cidr(item)
                    if net not in nets:
                        nets.append(net)
                if key == NETWORK:
                    env.networks = nets
                else:
                    env.networks6 = nets
            elif key == SUBNET:
                env.subnet = parse_cidr(value)
            elif key == SUBNET6:
                env.subnet6 = parse_cidr(value)
            elif key == MTU:
                env.mtu = _parse_uint32(value)
            else:
                env.ipmasq = value == "true"
        except ValueError as exc:
            raise SubnetEnvError("invalid", "%s line %d: %s value %s" % (path, lineno, key, exc)) from None
    missing = env.missing()
    if missing:
        raise SubnetEnvError("missing", "%s is missing %s" % (path, ", ".join(missing)))
    return env


def _read(path):
    """Text of ``path``; SubnetEnvError when absent, unreadable or no regular
    file (opened without blocking: a FIFO there would hang every exec)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SubnetEnvError("unreadable", "%s is not a regular file" % path)
            data = os.read(fd, MAX_SUBNET_FILE + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise SubnetEnvError("absent", "%s does not exist" % path) from None
    except OSError as exc:
        raise SubnetEnvError("unreadable", "cannot read %s: %s" % (path, exc.strerror)) from None
    if len(data) > MAX_SUBNET_FILE:
        raise SubnetEnvError("invalid", "%s is over %d bytes" % (path, MAX_SUBNET_FILE))
    return data.decode("utf-8", "replace")


def load_subnet_env(path):
    """Read and parse subnet.env now; SubnetEnvError when it is not usable."""
    return parse_subnet_env(_read(path), path)


def _signature(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def wait_subnet_env(path, timeout, log=None):
    """subnet.env, waiting up to ``timeout`` seconds for it to exist and parse.

    Between attempts it only stats the file (every 50 ms) and parses again
    when the file changed.  On timeout raises TryAgainLater (code 11) naming
    the file and what was wrong with it.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    waited = False
    while True:
        sig = _signature(path)
        try:
            env = load_subnet_env(path)
        except SubnetEnvError as exc:
            problem = exc
        else:
            if waited and log is not None:
                log.info("subnet file %s usable after %.0f ms", path, (time.monotonic() - t0) * 1000)
            return env
        if time.monotonic() >= deadline:
            raise subnet_env_error(problem, errors.TryAgainLater, waited=timeout)
        if not waited and log is not None:
            log.info("waiting up to %g s for %s: %s", timeout, path, problem.msg)
        waited = True
        while _signature(path) == sig:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(POLL_INTERVAL, left))


_HINT = ("flanneld writes it once it holds a lease for this node: check that flanneld "
         "runs here (kubectl -n kube-flannel logs <flannel pod on this node>) and that "
         "subnetFile names the file it writes (flanneld --subnet-file)")


def subnet_env_error(problem, cls, waited=None):
    """A CNI error of class ``cls`` for a SubnetEnvError."""
    msg = "flannel subnet file not usable: %s" % problem.msg
    if waited:
        msg += " (waited %g s)" % waited
    details = _HINT
    if problem.kind == "missing":
        details = ("the file holds FLANNEL_NETWORK, FLANNEL_SUBNET (or their IPV6 forms), "
                   "FLANNEL_MTU and FLANNEL_IPMASQ when flanneld wrote it completely; " + _HINT)
    elif problem.kind == "invalid":
        details = "expected the KEY=VALUE lines flanneld writes; " + _HINT
    return cls(msg, details)


# ------------------------------------------------------------ the delegate


def check_delegate_block(conf):
    """The reference's checks on ``delegate`` (same messages: users search them)."""
    d = conf.get("delegate")
    if d is None:
        return
    if not isinstance(d, dict):
        raise errors.InvalidConfig("'delegate' must be a JSON object, found %s" % type(d).__name__)
    if "type" in d and not isinstance(d["type"], str):
        raise errors.InvalidConfig("'delegate' dictionary, if present, must have (string) 'type' field",
                                   "found type %s" % jsonio.dumps(d["type"])[:80])
    if "name" in d:
        raise errors.InvalidConfig("'delegate' dictionary must not have 'name' field, "
                                   "it'll be set by flannel",
                                   "remove delegate.name; the delegate gets the network's name")
    if "ipam" in d:
        raise errors.InvalidConfig("'delegate' dictionary must not have 'ipam' field, "
                                   "it'll be set by flannel",
                                   "put IPAM settings in the top-level 'ipam' object instead")
    if "type" in d:
        from cnilib.cni import invoke
        invoke.check_type_name(d["type"], "delegate type")


_ROUTE_KEYS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")


def _route(r, i):
    """A conf ipam route as Go's types.Route re-marshals it (unknown keys dropped,
    dst keeps its host bits, zero mtu/advmss/priority omitted)."""
    import ipaddress
    where = "ipam.routes[%d]" % i
    dst = r.get("dst")
    try:
        addr, _, plen = dst.partition("/")
        parse_cidr(dst)
        out = {"dst": "%s/%s" % (ipaddress.ip_address(addr), int(plen))}
        if r.get("gw"):
            out["gw"] = str(ipaddress.ip_address(r["gw"]))
    except (ValueError, AttributeError) as exc:
        raise errors.InvalidConfig(
            "failed to assemble Delegate IPAM: failed to read IPAM routes: %s is invalid: %s" % (where, exc),
            "expected {\"dst\": \"<cidr>\", \"gw\": \"<ip>\"}") from None
    for k in ("mtu", "advmss", "priority"):
        if r.get(k):
            out[k] = r[k]
    for k in ("table", "scope"):
        if r.get(k) is not None:
            out[k] = r[k]
    return out


def delegate_ipam(conf, env):
    """The reference's getDelegateIPAM: conf ipam as the base, type host-local
    unless given, ranges = the node's subnets, routes = conf routes + networks."""
    ipam = dict(conf.get("ipam") or {})
    if not ipam.get("type"):
        ipam["type"] = "host-local"
    ipam["ranges"] = [[{"subnet": s}] for s in env.subnets()]
    routes = [_route(r, i) for i, r in enumerate(ipam.get("routes") or ())]
    routes += [{"dst": n} for n in env.all_networks()]
    ipam["routes"] = routes
    return ipam


def build_delegate(conf, env):
    """The delegate config, exactly as the reference builds it from the raw
    network config ``conf`` and the node's SubnetEnv ``env``.

    name, ipam and cniVersion are always set; type (bridge), ipMasq (not
    FLANNEL_IPMASQ: flanneld masquerades when that is on), mtu and, for
    bridge, isGateway only when ``delegate`` does not set them.
    runtimeConfig is passed through; nothing else of the conf is.
    """
    check_delegate_block(conf)
    d = dict(conf.get("delegate") or {})
    if conf.get("runtimeConfig") is not None:
        d["runtimeConfig"] = conf["runtimeConfig"]
    d["name"] = conf["name"]
    d.setdefault("type", "bridge")
    d.setdefault("ipMasq", not env.ipmasq)
    d.setdefault("mtu", env.mtu)
    if d["type"] == "bridge":
        d.setdefault("isGateway", True)
    if conf.get("cniVersion"):
        d["cniVersion"] = conf["cniVersion"]
    d["ipam"] = delegate_ipam(conf, env)
    return d


def encode(delegate):
    """The bytes saved and sent: compact JSON with sorted keys (Go's map order)."""
    return jsonio.dumps(delegate, sort_keys=True).encode()


def release_config(conf):
    """A minimal config for the IPAM plugin's DEL when the node's subnet is
    unknown: the conf's ipam (its dataDir matters) with a placeholder range."""
    ipam = dict(conf.get("ipam") or {})
    if not ipam.get("type"):
        ipam["type"] = "host-local"
    ipam["ranges"] = [[{"subnet": PLACEHOLDER_SUBNET}]]
    ipam.pop("routes", None)
    out = {"name": conf["name"], "ipam": ipam}
    if conf.get("cniVersion"):
        out["cniVersion"] = conf["cniVersion"]
    return out


def subnets_of(delegate):
    """The subnets in a saved delegate's ipam ranges (for CHECK)."""
    out = []
    ipam = delegate.get("ipam")
    for rs in (ipam.get("ranges") if isinstance(ipam, dict) else None) or ():
        for r in rs if isinstance(rs, list) else ():
            if isinstance(r, dict) and isinstance(r.get("subnet"), str):
                try:
                    out.append(parse_cidr(r["subnet"]))
                except ValueError:
                    pass
    return out


# ------------------------------------------------------------ saved files


def saved_path(data_dir, container_id):
    return os.path.join(data_dir, fsutil.check_component(container_id, "container ID"))


def _data_dir(data_dir, create=False):
    """dataDir held open (resolved as configured, links in its own path
    followed: see cnilib.base.fsutil); None when it does not exist.  Each
    saved file is then taken relative to it without following a link."""
    return fsutil.open_root(fsutil.check_path(data_dir, "dataDir"), create, 0o700, "flannel dataDir")


def saved_exists(data_dir, container_id):
    name = fsutil.check_component(container_id, "container ID")
    d = _data_dir(data_dir)
    if d is None:
        return False
    with d:
        return d.lstat(name) is not None


def save(data_dir, container_id, data):
    """Write the delegate config atomically (0600 in a 0700 dataDir); a link
    planted under its name is replaced, never written through."""
    name = fsutil.check_component(container_id, "container ID")
    path = saved_path(data_dir, container_id)
    with _data_dir(data_dir, create=True) as d:
        try:
            d.write_atomic(name, data, 0o600)
        except OSError as exc:
            raise errors.IOFailure("cannot save the delegate config to %s: %s"
                                   % (path, exc.strerror)) from exc
    return path


def remove_saved(data_dir, container_id):
    """Remove the saved file (a link there: the link itself); True if there was one."""
    name = fsutil.check_component(container_id, "container ID")
    d = _data_dir(data_dir)
    if d is None:
        return False
    with d:
        return d.remove(name)


class Saved:
    """A saved delegate config: ``state`` is "ok", "missing", "empty" or
    "corrupt"; ``data`` the bytes, ``conf`` the parsed dict when ok."""

    __slots__ = ("path", "state", "data", "conf", "why")

    def __init__(self, path, state, data=None, conf=None, why=""):
        self.path, self.state, self.data, self.conf, self.why = path, state, data, conf, why

    @property
    def cid(self):
        return os.path.basename(self.path)

    @property
    def network(self):
        """The network the config names, or None."""
        name = self.conf.get("name") if isinstance(self.conf, dict) else None
        return name if isinstance(name, str) else None


def load_saved(data_dir, container_id, d=None):
    """The saved file of ``container_id`` (in ``d``, dataDir held open, when
    given); a link or anything but a regular file there is "corrupt", never
    followed."""
    path = saved_path(data_dir, container_id)
    try:
        if d is not None:
            data = d.read(os.path.basename(path))
        else:
            top = _data_dir(data_dir)
            if top is None:
                return Saved(path, "missing")
            with top:
                data = top.read(os.path.basename(path))
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.EINVAL):
            # not followed: DEL rebuilds the config and removes the entry
            return Saved(path, "corrupt", why="not a regular file (%s)" % exc.strerror)
        raise errors.IOFailure("cannot read the saved delegate config %s: %s" % (path, exc.strerror),
                               "expected a file written by the flannel plugin's ADD") from exc
    if data is None:
        return Saved(path, "missing")
    if not data.strip():
        return Saved(path, "empty", data)
    try:
        conf = jsonio.loads(data)
    except ValueError as exc:
        return Saved(path, "corrupt", data, why="not JSON: %s" % exc)
    if not isinstance(conf, dict):
        return Saved(path, "corrupt", data, why="not a JSON object")
    from cnilib.cni import invoke
    try:
        invoke.check_type_name(conf.get("type"))
    except errors.InvalidConfig as exc:
        return Saved(path, "corrupt", data, why=exc.msg)
    return Saved(path, "ok", data, conf)


def saved_entries(data_dir, links=False):
    """Names of the saved files in ``data_dir``: regular files only (temp
    files, directories and links are skipped, never followed); with
    ``links`` symlinks too, for the readers that report them as corrupt."""
    d = _data_dir(data_dir)
    if d is None:
        return []
    with d:
        try:
            names = d.names()
        except OSError as exc:
            raise errors.IOFailure("cannot list %s: %s" % (data_dir, exc.strerror)) from exc
        return sorted(n for n in names if not n.startswith(".") and _entry(d.lstat(n), links))


def _entry(st, links):
    return st is not None and (stat.S_ISREG(st.st_mode) or links and stat.S_ISLNK(st.st_mode))


def sweep(data_dir, valid, network, log):
    """GC: remove the saved files of container IDs not in ``valid`` (and temp
    files of dead writers), keeping those of other networks sharing dataDir.
    Only regular files are removed: a link planted there is left alone and
    logged, nothing is read or removed through it.  The IDs removed."""
    d = _data_dir(data_dir)
    if d is None:
        return []
    gone = []
    with d:
        d.sweep_temps()
        for name in sorted(d.names()):
            if name.startswith(".") or name in valid:
                continue
            st = d.lstat(name)
            if st is None:
                continue
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISLNK(st.st_mode):
                    log.warning("GC: %s is a symbolic link: not followed, left alone", d.join(name))
                continue
            try:
                fsutil.check_component(name, "container ID")
            except errors.InvalidConfig:
                continue
            saved = load_saved(data_dir, name, d)
            if saved.state == "ok" and saved.conf.get("name") != network:
                continue  # another flannel network sharing this dataDir
            if d.remove(name):
                gone.append(name)
    return gone


def read_all_saved(data_dirs, problems):
    """Every saved config under ``data_dirs``, whatever its state.  For whois
    and doctor: never raises; what cannot be listed or read is noted in
    ``problems``."""
    out = []
    for d in data_dirs:
        try:
            names = saved_entries(d, links=True)
        except errors.CniError as exc:
            problems.append(exc.msg)
            continue
        for cid in names:
            try:
                out.append(load_saved(d, cid))
            except errors.CniError as exc:
                problems.append(exc.msg)
    return out


def valid_attachments(conf):
    """Container IDs of the GC list (cnilib.cni.args.valid_attachments); None
    when the runtime sent none: flannel's saved files are per container."""
    from cnilib.cni.args import valid_attachments as pairs
    got = pairs(conf)
    return None if got is None else {cid for cid, _ifname in got}


# ------------------------------------------------------------ links without state


def alias_matches(alias, container_id, ifname, network):
    """True when a host veth's ifalias (cnilib.firewall.naming.veth_alias:
    ``pycni net=<network> cid=<id> if=<ifname>``, or ``pycni att=<hash>
    if=<ifname>`` when that would be too long) names this attachment."""
    from cnilib.firewall import naming
    fields = naming.parse_veth_alias(alias)
    if fields is None or fields.get("if") != ifname:
        return False
    if "att" in fields:
        return fields["att"] == naming.attachment_hash(network, container_id, ifname)
    return fields.get("cid") == container_id and fields.get("net", network) == network


def remove_attachment_links(a, network):
    """Delete the attachment's veth without any saved state: the container
    side by name in its netns (that takes the host peer with it), then any
    host veth whose ifalias names (container ID, ifname).  Returns what it
    removed; missing links are fine."""
    from cnilib.firewall import naming
    from cnilib.kernel import netlink
    from cnilib.kernel.link import link_del, link_get, links, veth_peer
    removed = []
    if a.netns_fd is not None:
        with netlink.Netlink.in_netns(a.netns_fd) as nl:
            link = link_get(nl, a.ifname)
            if link is not None and link.kind == "veth":
                with netlink.Netlink() as hnl:
                    peer = veth_peer(hnl, link, a.netns_fd)
                mine = (network, a.container_id, a.ifname)
                if peer is not None and naming.veth_alias_other(peer.alias, *mine):
                    # the netns path was reused by a new sandbox: its eth0 is another pod's
                    a.log.warning("%s in %s belongs to another attachment (%s): left alone", a.ifname,
                                  a.netns, peer.alias)
                elif link_del(nl, link.index):
                    removed.append("%s in %s" % (a.ifname, a.netns))
    with netlink.Netlink() as nl:
        for link in links(nl):
            if link.kind == "veth" and alias_matches(link.alias, a.container_id, a.ifname, network):
                if link_del(nl, link.index):
                    removed.append(link.name)
    return removed


# ------------------------------------------------------------ delegate versions


def delegate_supports(type_name, a, wanted):
    """True when the delegate's VERSION lists ``wanted`` (GC and STATUS are
    1.1.0 verbs; the Go plugins before v1.5 reject them)."""
    from cnilib.base import proc
    from cnilib.cni import invoke
    exe = invoke.find(type_name, a.path)
    env = dict(a.env)
    env["CNI_COMMAND"] = "VERSION"
    try:
        done = proc.run([exe], stdin=b'{"cniVersion":"%s"}' % wanted.encode(), env=env, timeout=30)
        got = jsonio.loads(done.out).get("supportedVersions") if done.rc == 0 else None
    except (OSError, TimeoutError, ValueError, AttributeError) as exc:
        a.log.warning("cannot ask %s for its versions: %s", exe, exc)
        return False
    return isinstance(got, list) and wanted in got
