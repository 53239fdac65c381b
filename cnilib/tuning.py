"""tuning: sysctls and link attributes of the container interface.

What the reference meta/tuning plugin does, keyed and crash-safe:

* ``sysctl``: written inside the container netns, where /proc/sys/net is
  the container's.  Keys use '.' (or '/') separators; the word IFNAME
  stands for CNI_IFNAME.  Only keys under net. are allowed, never a '..'
  or an empty component, so no key reaches another part of /proc/sys.
  With /etc/cni/tuning/allowlist.conf present, each key must match one of
  its regular expressions (the reference's file and semantics).
* ``mac``, ``mtu``, ``promisc``, ``allmulti``, ``txQLen`` of CNI_IFNAME:
  the values they replace are saved first, and DEL puts them back.
  Sysctls are not restored (nor are they by the reference: the container
  netns goes away with the pod).

Where each setting comes from, later wins: the config, CNI_ARGS ``MAC``,
``runtimeConfig.mac`` (capability "mac"), ``args.cni``.

Saved values live in ``<dataDir>/<network>/<containerID>:<ifname>.json``
(dataDir defaults to the reference's /run/cni/tuning: interface settings
do not outlive a reboot), written atomically under a per-network lock.
':' cannot occur in a network name, a container ID or an ifname, so two
attachments never share a file.  A second ADD keeps the values the first
one saved, which are the originals.  The reference keeps
``<dataDir>/<containerID>_<ifname>.json`` with the same keys; DEL reads
that file too, so pods started under the Go plugin are restored after an
upgrade.  ``backup_name``/``parse_backup_name`` are both layouts' names;
``read_backups`` is the reader whois and doctor use.
"""

import os

from cnilib.base import errors, fsutil, jsonio, paths

# the link attributes that are saved and restored, in the reference's restore order
LINK_KEYS = ("mtu", "mac", "promisc", "allmulti", "txQLen")


# ------------------------------------------------------------ settings


class Settings:
    """What one ADD/CHECK/DEL asks of the interface, merged from every source."""

    __slots__ = ("sysctl", "mac", "promisc", "mtu", "allmulti", "txqlen", "data_dir")

    def __init__(self, sysctl=None, mac=None, promisc=False, mtu=0, allmulti=None, txqlen=None,
                 data_dir=paths.TUNING_DIR):
        self.sysctl = sysctl or {}
        self.mac, self.promisc, self.mtu = mac, promisc, mtu
        self.allmulti, self.txqlen, self.data_dir = allmulti, txqlen, data_dir

    def link_changes(self):
        """True when a link attribute is to be changed (and so saved first)."""
        return bool(self.mac or self.mtu or self.promisc or self.allmulti is not None
                    or self.txqlen is not None)


def settings(a):
    """Validate the config and merge the overrides into a Settings."""
    from cnilib.cni import args, validate
    conf = validate.validate("tuning", a.conf)
    s = Settings(dict(conf.get("sysctl") or {}), conf.get("mac"), conf["promisc"], conf["mtu"],
                 conf.get("allmulti"), conf.get("txQLen"), conf.get("dataDir") or paths.TUNING_DIR)
    env_mac = a.cni_args.get("MAC")
    if env_mac:
        s.mac = env_mac
    rc_mac = args.runtime_config(conf, "mac")
    if rc_mac is not None and rc_mac != "":
        if not isinstance(rc_mac, str):
            raise errors.InvalidConfig("runtimeConfig.mac is a %s, expected a MAC address string"
                                       % type(rc_mac).__name__)
        s.mac = rc_mac
    block = args.cni_args_block(conf)
    if block:
        over = validate.validate("tuning_args", block, what="args.cni of the tuning config")
        if over.get("sysctl"):
            s.sysctl.update(over["sysctl"])
        if over.get("mac") is not None:
            s.mac = over["mac"]
        for key, attr in (("promisc", "promisc"), ("mtu", "mtu"), ("allmulti", "allmulti"),
                          ("txQLen", "txqlen")):
            if over.get(key) is not None:
                setattr(s, attr, over[key])
    if s.mac:
        s.mac = parse_mac(s.mac)
    backup_dir(s.data_dir, a.name)      # dataDir and name usable before anything is changed
    return s


def parse_mac(text):
    """A 6-byte MAC in any of Go's notations -> 'aa:bb:cc:dd:ee:ff'."""
    t = text.strip().lower()
    if len(t) == 17 and t[2] in ":-" and all(t[i] == t[2] for i in range(2, 17, 3)):
        parts = t.split(t[2])
    elif len(t) == 14 and t[4] == "." and t[9] == ".":
        raw = t.replace(".", "")
        parts = [raw[i:i + 2] for i in range(0, 12, 2)]
    else:
        parts = []
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p)
                                  for p in parts):
        raise errors.InvalidConfig(
            "tuning mac %r is not a MAC address" % text[:64],
            "expected six hex bytes such as 0a:58:0a:f4:00:05 (':' or '-' separated, "
            "or 0a58.0af4.0005)")
    if int(parts[0], 16) & 1:
        raise errors.InvalidConfig(
            "tuning mac %s is a multicast address" % ":".join(parts),
            "an interface needs a unicast MAC: the lowest bit of the first byte must be 0")
    return ":".join(parts)


# ------------------------------------------------------------ sysctl names


def sysctl_name(key, ifname):
    """A sysctl key of the config -> its path below /proc/sys ('net/ipv4/...').

    Keys are '.'-separated as in the reference, or '/'-separated as
    sysctl(8) allows, which keeps dots inside an interface name
    (net/ipv4/conf/eth0.100/forwarding).  The first IFNAME becomes CNI_IFNAME.
    """
    if not isinstance(key, str) or not key or "\x00" in key or len(key) > 512:
        raise errors.InvalidConfig("sysctl key %r is not valid" % str(key)[:80],
                                   "expected a key such as net.ipv4.conf.IFNAME.arp_notify")
    sep = "/" if "/" in key else "."
    parts = key.split(sep)
    if "IFNAME" in parts:
        parts[parts.index("IFNAME")] = ifname
    if (len(parts) < 2 or parts[0] != "net"
            or any(p in ("", ".", "..") or "/" in p for p in parts)):
        raise errors.InvalidConfig(
            "sysctl key %r is not allowed" % key[:200],
            "only keys under net. (the container's network namespace) are allowed, "
            "without empty, '.' or '..' components")
    return "/".join(parts)


def check_allowlist(keys, path=None):
    """Refuse keys that match no line of the allowlist file, when it exists."""
    path = path or os.environ.get("PYCNI_TUNING_ALLOWLIST") or paths.TUNING_ALLOWLIST
    data = fsutil.read_file(path)
    if data is None or not keys:
        return
    import re
    patterns = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    for key in keys:
        for pat in patterns:
            try:
                if re.search(pat, key):
                    break
            except re.error as exc:
                raise errors.InvalidConfig(
                    "sysctl allowlist %s has an invalid pattern %r: %s" % (path, pat, exc)) from exc
        else:
            raise errors.InvalidConfig(
                "sysctl %s is not allowed by %s" % (key, path),
                "allowed patterns: %s" % ", ".join(patterns))


class _Marked(dict):
    """A JSON object that remembers the keys it saw twice."""
    dups = ()


def _pairs(pairs):
    d = _Marked(pairs)
    if len(d) != len(pairs):
        seen, dups = set(), []
        for k, _ in pairs:
            if k in seen:
                dups.append(k)
            seen.add(k)
        d.dups = dups
    return d


def check_duplicate_sysctls(stdin):
    """Refuse a ``sysctl`` object that names a key twice (the reference does):
    plain JSON decoding would keep the last value without a word."""
    if b'"sysctl"' not in stdin:
        return
    import _json

    class Ctx:
        strict = True
        object_hook = None
        object_pairs_hook = staticmethod(_pairs)
        parse_float = float
        parse_int = int
        parse_constant = staticmethod(float)
        memo = None

    try:
        top, _ = _json.make_scanner(Ctx())(stdin.decode("utf-8").strip(), 0)
    except (ValueError, StopIteration):
        return  # skel already decoded it; nothing more to learn here
    sysctl = top.get("sysctl") if isinstance(top, dict) else None
    if isinstance(sysctl, _Marked) and sysctl.dups:
        raise errors.InvalidConfig("tuning sysctl names %s more than once" % ", ".join(sysctl.dups),
                                   "each sysctl key may appear once")


# ------------------------------------------------------------ saved values


def backup_dir(data_dir, network):
    return os.path.join(fsutil.check_path(data_dir, "dataDir"),
                        fsutil.check_component(network, "network name"))


def backup_name(cid, ifname, legacy=False):
    """``<cid>:<ifname>.json``; the Go reference plugin's ``<cid>_<ifname>.json``."""
    return "%s%s%s.json" % (cid, "_" if legacy else ":", ifname)


def parse_backup_name(name, legacy=False):
    """(cid, ifname) of a name backup_name made (ifname None without the
    separator), or None for a name that is no backup."""
    if not name.endswith(".json") or name.startswith("."):
        return None
    cid, sep, ifname = name[:-5].rpartition("_" if legacy else ":")
    return (cid, ifname) if sep else (name[:-5], None)


def backup_path(data_dir, network, cid, ifname):
    return os.path.join(backup_dir(data_dir, network), backup_name(cid, ifname))


def legacy_backup_path(data_dir, cid, ifname):
    """Where the Go reference plugin saves them."""
    return os.path.join(data_dir, backup_name(cid, ifname, legacy=True))


def _net_dir(data_dir, network, create=False, log=None):
    """The network's backup dir held open, relative to dataDir (resolved as
    configured) and never through a link: None when it does not exist.  A
    link planted there refuses a writer (``create``: NotFollowed, code 5);
    for the readers and removers of DEL and GC it is left alone, counts as
    no dir, and is logged to ``log`` when given."""
    try:
        return fsutil.open_dirs(fsutil.check_path(data_dir, "dataDir"),
                                [fsutil.check_component(network, "network name")],
                                create, 0o700, "tuning dataDir")
    except fsutil.NotFollowed as exc:
        if create:
            raise
        if log is not None:
            log.warning("tuning: %s", exc.msg)
        return None


class BackupFile:
    """A backup as read_backups found it: ``network`` None for the Go
    plugin's (not kept per network), ``ok`` when it parses."""

    __slots__ = ("path", "network", "cid", "ifname", "ok")

    def __init__(self, path, network, cid, ifname, ok):
        self.path, self.network, self.cid, self.ifname, self.ok = path, network, cid, ifname, ok


def read_backups(data_dirs, problems):
    """Every backup under ``data_dirs``, ours (``<dir>/<network>/<cid>:<if>.json``)
    and the Go plugin's (``<dir>/<cid>_<if>.json``).  For whois and doctor:
    takes no lock, never raises; what it cannot list or read (a link is
    never followed) is noted in ``problems``."""
    out = []

    def one(d, network, name, legacy):
        data = d.try_read(name, problems)
        try:
            ok = data is not None and isinstance(jsonio.loads(data), dict)
        except ValueError:
            ok = False
        cid, ifname = parse_backup_name(name, legacy)
        out.append(BackupFile(d.join(name), network, cid, ifname, ok))

    for _top, root in fsutil.try_roots(data_dirs, problems):
        for n in root.try_names(problems):
            if n.startswith("."):
                continue
            if root.is_dir(n):
                sub = root.try_sub(n, problems)
                if sub is None:
                    continue
                with sub:
                    for f in sub.try_names(problems):
                        if parse_backup_name(f):
                            one(sub, n, f, False)
            elif parse_backup_name(n, legacy=True):
                one(root, None, n, True)
    return out


def _parse_backup(data):
    if data is None:
        return None
    try:
        saved = jsonio.loads(data)
    except ValueError:
        return None
    return saved if isinstance(saved, dict) else None


def read_backup(path):
    """The saved values at ``path`` (its last component not followed), or
    None when missing or unreadable."""
    try:
        return _parse_backup(fsutil.read_file(path))
    except OSError:
        return None


def _read_in(d, name):
    try:
        return _parse_backup(d.read(name))
    except OSError:
        return None


def load_backup(data_dir, network, cid, ifname, log=None):
    """(saved values, "ours" or "legacy") of the attachment: the record this
    plugin keeps, else the Go plugin's; (None, None) when neither can be
    read.  Nothing is read through a link (see ``_net_dir``)."""
    d = _net_dir(data_dir, network, log=log)
    if d is not None:
        with d:
            saved = _read_in(d, backup_name(cid, ifname))
        if saved is not None:
            return saved, "ours"
    root = fsutil.open_root(fsutil.check_path(data_dir, "dataDir"))
    if root is not None:
        with root:
            saved = _read_in(root, backup_name(cid, ifname, legacy=True))
        if saved is not None:
            return saved, "legacy"
    return None, None


def backup_files(data_dir, network, cid, ifname, log=None):
    """Which of the attachment's records exist (readable or not): a subset
    of ("ours", "legacy")."""
    out = []
    d = _net_dir(data_dir, network, log=log)
    if d is not None:
        with d:
            if d.lstat(backup_name(cid, ifname)) is not None:
                out.append("ours")
    root = fsutil.open_root(fsutil.check_path(data_dir, "dataDir"))
    if root is not None:
        with root:
            if root.lstat(backup_name(cid, ifname, legacy=True)) is not None:
                out.append("legacy")
    return out


def current_values(link, s):
    """The attributes ``s`` is about to change, as they are now."""
    from cnilib.kernel.link import link_allmulti, link_txqlen
    out = {}
    if s.mtu:
        out["mtu"] = link.mtu
    if s.mac:
        out["mac"] = link.mac
    if s.promisc:
        out["promisc"] = link.promisc
    if s.allmulti is not None:
        out["allmulti"] = link_allmulti(link)
    if s.txqlen is not None:
        out["txQLen"] = link_txqlen(link)
    return out


def save_backup(a, s, values):
    """Record the original values, merged under those an earlier ADD saved.
    A link planted as the network's dir refuses it (NotFollowed, code 5)."""
    name = backup_name(a.container_id, a.ifname)
    with _net_dir(s.data_dir, a.name, create=True) as d:
        with d.lock(".lock", what="tuning state lock"):
            old = _read_in(d, name) or {}
            merged = {k: v for k, v in values.items() if k not in old}
            merged.update({k: old[k] for k in LINK_KEYS if k in old})
            record = {"network": a.name, "containerID": a.container_id, "ifname": a.ifname}
            record.update(merged)
            d.write_atomic(name, jsonio.dumps(record) + "\n")
    return backup_path(s.data_dir, a.name, a.container_id, a.ifname)


def remove_backup(data_dir, network, cid, ifname, legacy=False, log=None):
    """Remove the attachment's record (the Go plugin's with ``legacy``);
    True if there was one.  Never through a link (see ``_net_dir``)."""
    if legacy:
        root = fsutil.open_root(fsutil.check_path(data_dir, "dataDir"))
        if root is None:
            return False
        with root:
            return root.remove(backup_name(cid, ifname, legacy=True))
    d = _net_dir(data_dir, network, log=log)
    if d is None:
        return False
    with d:
        with d.lock(".lock", what="tuning state lock"):
            return d.remove(backup_name(cid, ifname))


# ------------------------------------------------------------ kernel


def set_link(nl, link, values, ifname):
    """Apply ``values`` (LINK_KEYS) to ``link``, in the reference's order."""
    from cnilib.kernel.link import link_set, link_set_allmulti, link_set_txqlen
    from cnilib.kernel.netlink import NetlinkError
    idx = link.index
    try:
        if values.get("mac"):
            link_set(nl, idx, mac=values["mac"], what="set MAC %s on %s" % (values["mac"], ifname))
        if values.get("promisc") is not None:
            link_set(nl, idx, promisc=bool(values["promisc"]),
                     what="set promiscuous mode on %s" % ifname)
        if values.get("mtu"):
            link_set(nl, idx, mtu=int(values["mtu"]), what="set MTU %s on %s" % (values["mtu"], ifname))
        if values.get("allmulti") is not None:
            link_set_allmulti(nl, idx, bool(values["allmulti"]),
                              what="set allmulticast mode on %s" % ifname)
        if values.get("txQLen") is not None:
            link_set_txqlen(nl, idx, int(values["txQLen"]),
                            what="set txQLen %s on %s" % (values["txQLen"], ifname))
    except NetlinkError as exc:
        raise errors.InvalidConfig("tuning cannot change %s in the container: %s" % (ifname, exc),
                                   "the kernel refused the value; check the tuning config") from exc


def restore_order(saved):
    """The saved values in the order DEL restores them (MTU first, as the reference)."""
    return {k: saved[k] for k in LINK_KEYS if k in saved and saved[k] is not None}


def restore_link(nl, link, saved, ifname, log):
    """Put saved values back one by one; return the ones that failed."""
    failed = []
    for key, value in restore_order(saved).items():
        try:
            set_link(nl, link, {key: value}, ifname)
        except errors.CniError as exc:
            failed.append("%s=%s (%s)" % (key, value, exc.msg))
    if failed:
        log.warning("tuning could not restore %s on %s: %s", ", ".join(f.split("=")[0] for f in failed),
                    ifname, "; ".join(failed))
    return failed


def check_link(link, s, ifname):
    """CHECK: the interface still has what ADD set (the reference's rules)."""
    from cnilib.kernel.link import link_allmulti, link_txqlen
    problems = []
    if s.mac and (link.mac or "").lower() != s.mac:
        problems.append("MAC is %s, configured %s" % (link.mac, s.mac))
    if s.promisc != link.promisc:
        problems.append("promiscuous mode is %s, configured %s"
                        % ("on" if link.promisc else "off", "on" if s.promisc else "off"))
    if s.mtu and link.mtu != s.mtu:
        problems.append("MTU is %d, configured %d" % (link.mtu, s.mtu))
    if s.allmulti is not None and link_allmulti(link) != s.allmulti:
        problems.append("allmulticast mode is %s, configured %s"
                        % ("on" if link_allmulti(link) else "off", "on" if s.allmulti else "off"))
    if s.txqlen is not None and link_txqlen(link) != s.txqlen:
        problems.append("txQLen is %s, configured %d" % (link_txqlen(link), s.txqlen))
    if problems:
        raise errors.Internal("tuning CHECK of %s failed: %s" % (ifname, "; ".join(problems)),
                              "something changed the interface after ADD")


# ------------------------------------------------------------ GC


def gc(data_dir, network, valid, log):
    """Forget saved values of attachments that are not in ``valid``.  Only
    regular files are removed; a link planted as the network's dir (or as a
    record) is left alone and logged."""
    d = _net_dir(data_dir, network, log=log)
    if d is None:
        return 0
    keep = {backup_name(cid, ifname) for cid, ifname in valid}
    n = 0
    with d:
        names = d.names()
        with d.lock(".lock", what="tuning state lock"):
            for name in names:
                got = parse_backup_name(name)
                if got is None or got[1] is None or name in keep:
                    continue
                if not d.is_file(name):
                    log.warning("tuning GC: %s is no regular file: left alone", d.join(name))
                    continue
                if d.remove(name):
                    n += 1
            d.sweep_temps()
    if n:
        log.info("tuning GC removed %d stale record(s) of network %s", n, network)
    return n
