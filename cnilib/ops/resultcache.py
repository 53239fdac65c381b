"""libcni's result cache: its path, its format, its writer and its readers.

``<cacheDir>/results/<network>-<containerID>-<ifname>`` (directory 0700,
file 0600, written atomically)::

    {"kind":"cniCacheV1","containerId":..,"config":<base64 of the list bytes>,
     "ifName":..,"networkName":..,"netns":..,"cniArgs":[[k,v],..],
     "capabilityArgs":{..},"result":{..}}

Keys come in that order (Go struct order), nested objects with sorted keys
(Go maps), empty ``netns``/``cniArgs``/``capabilityArgs`` left out, so that
an attachment ADDed by containerd or cnitool can be CHECKed or DELeted by
pycni and the other way round.  A file that is not a cniCacheV1 entry is
libcni's legacy form: a bare result, with no key and no netns.

Three readers, one parse (``_decode``):

  Cache.read         one entry, for DEL/CHECK: errors are CNI errors;
  Cache.attachments  the usable entries, for GC (libcni's GetCachedAttachments);
  read_cache         every entry, usable or not, each unusable one saying
                     why, for whois and doctor: it never raises.

The cache dir is resolved as configured; ``results`` below it and every
entry are opened without following a link (cnilib.base.fsutil.Dir).  A link
planted as ``results`` refuses a write, a read and the listing GC works from
(code 5, naming it); removing an entry through it is a no-op.
"""

import base64
import os

from cnilib.base import errors, fsutil, jsonio, paths

CACHE_KIND = "cniCacheV1"


def _go_json(obj):
    return jsonio.dumps(obj, sort_keys=True)


class CacheEntry:
    """One cache file as read: the attachment's key (network, container_id,
    ifname), what DEL needs again (netns, args, cap_args, config) and the
    result.  ``problem`` says why the entry is unusable (None when fine)."""

    __slots__ = ("path", "network", "container_id", "ifname", "netns", "args", "cap_args",
                 "config", "result", "problem")

    def __init__(self, path):
        self.path = path
        self.network = self.container_id = self.ifname = self.result = self.problem = None
        self.netns, self.args, self.cap_args, self.config = "", [], {}, b""

    def host_ifnames(self):
        """Names of the result's host-side interfaces (no sandbox): the bridge and the veth."""
        res = self.result if isinstance(self.result, dict) else {}
        return [i.get("name") for i in res.get("interfaces") or ()
                if isinstance(i, dict) and not i.get("sandbox")]

    def ips(self):
        """Addresses of the cached result (0.3.0+ ``ips``, 0.1/0.2 ``ip4``/``ip6``)."""
        res = self.result if isinstance(self.result, dict) else {}
        out = [i.get("address") for i in res.get("ips") or () if isinstance(i, dict)]
        out += [res[k].get("ip") for k in ("ip4", "ip6") if isinstance(res.get(k), dict)]
        return [a for a in out if isinstance(a, str)]


def _decode(path, data):
    """The CacheEntry of a file's bytes; never raises."""
    e = CacheEntry(path)
    if not data.strip():
        e.problem = "empty file"
        return e
    try:
        entry = jsonio.loads(data)
    except ValueError as exc:
        e.problem = "not JSON (%s)" % str(exc)[:80]
        return e
    if not isinstance(entry, dict) or entry.get("kind") != CACHE_KIND:
        e.problem = "not a %s entry (a legacy bare result: no key, no netns)" % CACHE_KIND
        return e
    e.network, e.container_id = entry.get("networkName"), entry.get("containerId")
    e.ifname = entry.get("ifName")
    if not all(isinstance(v, str) and v for v in (e.network, e.container_id, e.ifname)):
        e.problem = "no networkName, containerId or ifName"
    e.netns = entry.get("netns") if isinstance(entry.get("netns"), str) else ""
    args = entry.get("cniArgs")
    e.args = [tuple(kv) for kv in args if isinstance(kv, list) and len(kv) == 2] \
        if isinstance(args, list) else []
    caps = entry.get("capabilityArgs")
    e.cap_args = caps if isinstance(caps, dict) else {}
    try:
        e.config = base64.b64decode(entry.get("config") or "")
    except (ValueError, TypeError):
        e.config = b""
    e.result = entry.get("result") if isinstance(entry.get("result"), dict) else None
    return e


def read_cache(cache_dir, problems):
    """Every entry of ``<cache_dir>/results``, usable or not, sorted by file
    name; what cannot be listed or read is noted in ``problems``."""
    out = []
    try:
        d = fsutil.open_dirs(cache_dir, ["results"], what="cache dir")
    except errors.CniError as exc:
        problems.append(exc.msg)
        return out
    if d is None:
        return out
    with d:
        for n in d.try_names(problems):
            if n.startswith("."):
                continue
            data = d.try_read(n, problems)
            if data is not None:
                out.append(_decode(d.join(n), data))
    return out


class Cache:
    """libcni's result cache under ``<cache_dir>/results``."""

    def __init__(self, cache_dir=paths.CACHE_DIR):
        self.dir = cache_dir
        self.results = os.path.join(cache_dir, "results")

    def path(self, network, container_id, ifname):
        return os.path.join(self.results, "%s-%s-%s" % (network, container_id, ifname))

    def encode(self, net, att, result):
        fields = [("kind", CACHE_KIND), ("containerId", att.container_id),
                  ("config", base64.b64encode(net.raw).decode()), ("ifName", att.ifname),
                  ("networkName", net.name)]
        if att.netns:
            fields.append(("netns", att.netns))
        if att.args:
            fields.append(("cniArgs", [list(kv) for kv in att.args]))
        if att.cap_args:
            fields.append(("capabilityArgs", att.cap_args))
        if result:
            fields.append(("result", result))
        return ("{%s}" % ",".join("%s:%s" % (_go_json(k), _go_json(v)) for k, v in fields)).encode()

    def _open(self, create=False):
        """``results`` held open, None when missing; NotFollowed for a link."""
        return fsutil.open_dirs(self.dir, ["results"], create, 0o700, "cache dir")

    def _name(self, network, container_id, ifname):
        return fsutil.check_component("%s-%s-%s" % (network, container_id, ifname), "cache entry")

    def write(self, net, att, result):
        try:
            with self._open(create=True) as d:
                d.write_atomic(self._name(net.name, att.container_id, att.ifname),
                               self.encode(net, att, result), 0o600)
        except fsutil.NotFollowed as exc:
            raise errors.IOFailure("failed to set network %r cached result: %s" % (net.name, exc.msg),
                                   exc.details) from exc
        except OSError as exc:
            raise errors.IOFailure("failed to set network %r cached result: %s"
                                   % (net.name, exc.strerror or exc)) from exc

    def remove(self, network, container_id, ifname):
        """Drop the entry (a link there: the link itself); nothing through a
        link planted as ``results``."""
        try:
            d = self._open()
            if d is not None:
                with d:
                    d.remove(self._name(network, container_id, ifname))
        except errors.CniError:
            return      # a link planted as results, or a name no file can have

    def read(self, network, container_id, ifname):
        """The raw cache entry (a dict), or None when there is none.  A file
        that is not a cniCacheV1 entry is libcni's legacy form: a bare result."""
        path = self.path(network, container_id, ifname)
        d = self._open()         # NotFollowed: an I/O error naming the link
        if d is None:
            return None
        try:
            with d:
                data = d.read(self._name(network, container_id, ifname))
        except OSError as exc:      # a symlink (not followed) or a directory
            raise errors.IOFailure("cannot read the cached result %s: %s" % (path, exc.strerror)) from None
        if data is None:
            return None
        try:
            entry = jsonio.loads(data)
        except ValueError as exc:
            raise errors.DecodingFailure("cached result of network %r is not JSON: %s"
                                         % (network, exc)) from None
        if isinstance(entry, dict) and entry.get("kind") == CACHE_KIND:
            return entry
        return {"kind": "legacy", "result": entry}

    def result(self, net, att):
        """The cached ADD result converted to the list's version, or None."""
        entry = self.read(net.name, att.container_id, att.ifname)
        if entry is None or not entry.get("result"):
            return None
        from cnilib.cni import invoke
        what = "cached result of network %r" % net.name
        res = invoke.parse_result(entry["result"], "0.1.0", what)
        try:
            return res.to_dict(net.version)
        except errors.CniError as exc:
            raise errors.from_code(exc.code, "failed to convert the %s to config version %r: %s"
                                   % (what, net.version, exc.msg), exc.details) from None

    def attachments(self, network=None):
        """Cached attachments (of ``network``, or all), sorted by file name;
        what libcni's GetCachedAttachments sees.  Unusable entries are
        skipped; a link planted as ``results`` is refused (code 5)."""
        d = self._open()
        if d is None:
            return []
        out = []
        with d:
            try:
                names = sorted(d.names())
            except OSError as exc:
                raise errors.IOFailure("cannot list %s: %s" % (self.results, exc.strerror)) from exc
            for n in names:
                if n.startswith("."):
                    continue
                try:
                    data = d.read(n)
                except OSError:
                    continue
                e = _decode(d.join(n), data or b"")
                if e.problem is None and (network is None or e.network == network):
                    out.append(e)
        return out
