"""The runtime side of CNI: what libcni does for containerd, done for ``pycni``.

It loads network configuration lists, derives each plugin's stdin as
libcni's ``buildOneConfig`` does, execs the plugins with the environment
libcni sets, chains results, and keeps libcni's result cache in libcni's
path and format, so that an attachment ADDed by containerd or cnitool can
be CHECKed or DELeted by pycni and the other way round.

The libcni behaviour followed is v1.2+ (spec 1.1.0): ``cniVersions``, GC
and STATUS, ``disableGC``, the ``netns`` cache field, plugin objects from
``<confdir>/<network>/*.conf``, and a corrupt cache dropped on DEL instead
of blocking it.  Where pycni parts from libcni it says so here:

- ``find_network`` skips unreadable or malformed files and reports them
  (libcni stops at the first one, so one broken file hides every network
  after it); a ``.conf`` holding a conflist is reported, not loaded, since
  runtimes refuse it too.
- container ID, network name and ifname are checked on every verb, not only
  ADD: they make the cache file name, so they must not escape its directory.
- plugin failures keep the plugin's CNI code, wrapped as libcni wraps ADD
  and DEL errors: ``plugin type="bridge" failed (add): ...``.

The result cache, its path and format are cnilib.ops.resultcache's.
"""

import errno
import os
import sys
import time

from cnilib.base import errors, failpoint, fsutil, jsonio, paths
from cnilib.cni import skel, version
from cnilib.ops import resultcache

PLUGIN_TIMEOUT = 300.0     # libcni has none; a wedged plugin should not hang an operator forever
EXEC_RETRIES = 5           # "text file busy" retries, one second apart, as libcni


class NetworkNotFound(errors.InvalidConfig):
    pass


class PluginFailed(errors.CniError):
    """A plugin's error, wrapped with its type and the verb; its code is kept."""

    def __init__(self, plugin, verb, err):
        what = 'plugin type="%s"' % plugin.get("type")
        if isinstance(plugin.get("name"), str) and plugin["name"]:
            what += ' name="%s"' % plugin["name"]
        super().__init__("%s failed (%s): %s" % (what, verb, err.msg), err.details, code=err.code)
        self.plugin_type = plugin.get("type")
        self.verb = verb


class GcFailed(errors.CniError):
    """Every error of a GC run (libcni joins them); the code is the first one's."""

    def __init__(self, errs):
        super().__init__("\n".join(e.msg for e in errs), code=errs[0].code)
        self.errors = errs


# ---- versions ----------------------------------------------------------------

def pick_version(conf_version, conf_versions):
    """The list's working version: the highest of cniVersion and cniVersions
    that is not above version.CURRENT (entries above it are ignored, as libcni does).
    Without cniVersions, cniVersion is taken as it is."""
    if conf_versions is None:
        return conf_version
    top = version.libcni_vtuple(version.CURRENT)
    cands = []
    for i, v in enumerate(conf_versions):
        if not isinstance(v, str):
            raise errors.InvalidConfig("cniVersions[%d] is a JSON %s, expected a string"
                                       % (i, type(v).__name__))
        if version.libcni_vtuple(v, "cniVersions[%d]" % i) <= top:
            cands.append(v)
    if conf_version and version.libcni_vtuple(conf_version) <= top:
        cands.append(conf_version)
    if not cands:
        return conf_version
    return max(cands, key=version.libcni_vtuple)


# ---- configuration -------------------------------------------------------------

class NetworkList:
    """A network configuration list as libcni holds it.

    ``raw`` is the bytes the cache records (the file, or the up-converted
    list of a single-plugin .conf); ``plugins`` the plugin objects (dicts).
    """

    __slots__ = ("name", "version", "disable_check", "disable_gc", "plugins", "raw", "source")

    def __init__(self, name, version, plugins, raw, source="", disable_check=False,
                 disable_gc=False):
        self.name, self.version, self.plugins, self.raw = name, version, plugins, raw
        self.source = source
        self.disable_check, self.disable_gc = disable_check, disable_gc

    def types(self):
        return [p.get("type") for p in self.plugins]


def _load_json(data, source):
    try:
        conf = jsonio.loads(data)
    except jsonio.JSONError as exc:
        raise errors.DecodingFailure("%s: cannot decode the network config: %s" % (source, exc)) from None
    if not isinstance(conf, dict):
        raise errors.DecodingFailure("%s: the network config is a JSON %s, expected an object"
                                     % (source, type(conf).__name__))
    return conf


def _read_bool(conf, key, source):
    """disableCheck and friends: a bool, or "true"/"false" in any case."""
    v = conf.get(key, False)
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise errors.InvalidConfig("%s: %s is %r, expected true or false" % (source, key, v))


def check_plugin(p, source, where):
    """A plugin object must name a plain plugin type; capabilities are booleans."""
    if not isinstance(p, dict):
        raise errors.InvalidConfig("%s: %s is a JSON %s, expected an object"
                                   % (source, where, type(p).__name__))
    t = p.get("type")
    if not isinstance(t, str) or not t:
        raise errors.InvalidConfig("%s: %s has no \"type\"" % (source, where),
                                   "expected the plugin's binary name, e.g. \"bridge\"")
    from cnilib.cni import invoke
    invoke.check_type_name(t, "%s: %s type" % (source, where))
    caps = p.get("capabilities")
    if caps is not None and (not isinstance(caps, dict)
                             or not all(isinstance(v, bool) for v in caps.values())):
        raise errors.InvalidConfig("%s: %s capabilities is %s" % (source, where, jsonio.dumps(caps)[:200]),
                                   "expected an object of booleans, e.g. {\"portMappings\": true}")
    return p


def list_from_bytes(data, source="<conflist>", extra_plugins=None):
    """A .conflist's bytes -> NetworkList (libcni's NetworkConfFromBytes)."""
    conf = _load_json(data, source)
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise errors.InvalidConfig("%s: the network config list has no \"name\"" % source)
    cv = conf.get("cniVersion", "")
    if not isinstance(cv, str):
        raise errors.InvalidConfig("%s: cniVersion is a JSON %s, expected a string"
                                   % (source, type(cv).__name__))
    cvs = conf.get("cniVersions")
    if cvs is not None and not isinstance(cvs, list):
        raise errors.InvalidConfig("%s: cniVersions is a JSON %s, expected a list of versions"
                                   % (source, type(cvs).__name__))
    try:
        version = pick_version(cv, cvs)
    except errors.CniError as exc:
        raise errors.from_code(exc.code, "%s: %s" % (source, exc.msg), exc.details) from None
    inline_only = _read_bool(conf, "loadOnlyInlinedPlugins", source)
    plugins = conf.get("plugins")
    if plugins is None:
        if inline_only:
            raise errors.InvalidConfig("%s: loadOnlyInlinedPlugins is true and there is no \"plugins\""
                                       % source)
        plugins = []
    elif not isinstance(plugins, list):
        raise errors.InvalidConfig("%s: \"plugins\" is a JSON %s, expected a list"
                                   % (source, type(plugins).__name__))
    elif not plugins:
        raise errors.InvalidConfig("%s: no plugins in list" % source,
                                   "expected at least one plugin object in \"plugins\"")
    plugins = [check_plugin(p, source, "plugins[%d]" % i) for i, p in enumerate(plugins)]
    if extra_plugins and not inline_only:
        plugins += extra_plugins
    if not plugins:
        raise errors.InvalidConfig("%s: network %r has no plugins" % (source, name),
                                   "expected a \"plugins\" list")
    return NetworkList(name, version, plugins, bytes(data), source,
                       _read_bool(conf, "disableCheck", source), _read_bool(conf, "disableGC", source))


def list_from_conf_bytes(data, source="<conf>"):
    """A legacy single-plugin .conf -> NetworkList, up-converted as libcni's
    ConfListFromConf does (the cached config is the up-converted list)."""
    conf = _load_json(data, source)
    if "plugins" in conf:
        raise errors.InvalidConfig(
            "%s holds a network config list but is named like a single-plugin config" % source,
            "runtimes load lists only from *.conflist files: rename it")
    check_plugin(conf, source, "the plugin config")
    up = {"name": conf.get("name", ""), "cniVersion": conf.get("cniVersion", ""), "plugins": [conf]}
    return list_from_bytes(jsonio.dumps(up, sort_keys=True).encode(), source)


def conf_files(d, exts):
    """Regular files in ``d`` with one of ``exts``, sorted; [] if ``d`` is missing."""
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise errors.IOFailure("cannot list network configs in %s: %s" % (d, exc.strerror)) from exc
    out = []
    for n in names:
        p = os.path.join(d, n)
        if os.path.splitext(n)[1] in exts and os.path.isfile(p):
            out.append(p)
    return out


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as exc:
        raise errors.IOFailure("cannot read %s: %s" % (path, exc.strerror)) from exc


def load_file(path):
    """One config file -> NetworkList, by extension (.conflist or .conf/.json)."""
    data = _read(path)
    if not path.endswith(".conflist"):
        return list_from_conf_bytes(data, path)
    extra = None
    conf_name = None
    try:
        conf_name = jsonio.loads(data).get("name")
    except (ValueError, AttributeError):
        pass
    if isinstance(conf_name, str) and conf_name:
        fsutil.check_component(conf_name, "network name")
        extra = []
        for p in conf_files(os.path.join(os.path.dirname(path), conf_name), (".conf",)):
            extra.append(check_plugin(_load_json(_read(p), p), p, "the plugin config"))
    return list_from_bytes(data, path, extra)


def load_all(conf_dir):
    """Every config in ``conf_dir`` in lexical order (*.conf, *.conflist,
    *.json), the order containerd uses to pick its default network.
    Returns [(path, NetworkList or CniError)]."""
    out = []
    for p in conf_files(conf_dir, (".conf", ".conflist", ".json")):
        try:
            out.append((p, load_file(p)))
        except errors.CniError as exc:
            out.append((p, exc))
    return out


def find_network(conf_dir, name):
    """The network named ``name``, looked up as libcni's LoadConfList does
    (*.conflist first, then *.conf and *.json, each sorted).

    Returns (NetworkList, skipped) where skipped is [(path, CniError)] for
    the files that could not be loaded on the way.
    """
    skipped = []
    for exts in ((".conflist",), (".conf", ".json")):
        for p in conf_files(conf_dir, exts):
            try:
                net = load_file(p)
            except errors.CniError as exc:
                skipped.append((p, exc))
                continue
            if net.name == name:
                return net, skipped
    details = ""
    if skipped:
        details = "could not load: " + "; ".join(str(e) for _, e in skipped)
    raise NetworkNotFound("no network config named %r in %s" % (name, conf_dir),
                          details or "expected a *.conflist (or *.conf) with \"name\": %r there" % name)


# ---- per-plugin stdin ------------------------------------------------------------

class Attachment:
    """libcni's RuntimeConf: one container's attachment to one network."""

    __slots__ = ("container_id", "netns", "ifname", "args", "cap_args")

    def __init__(self, container_id="", netns="", ifname="", args=(), cap_args=None):
        self.container_id, self.netns, self.ifname = container_id, netns, ifname
        self.args = [tuple(kv) for kv in args]          # [(key, value)], order kept
        self.cap_args = cap_args or {}

    def args_str(self):
        return ";".join("%s=%s" % kv for kv in self.args)


def parse_cni_args(raw):
    """CNI_ARGS ``K=V;K2=V2`` -> [(K, V)] in order, as cnitool passes it on."""
    out = []
    for pair in (raw or "").split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidEnvironment("CNI_ARGS has an invalid pair %r" % pair[:80],
                                            "expected K=V pairs separated by ';'")
        out.append((key, value))
    return out


def runtime_config(plugin, cap_args):
    """runtimeConfig for ``plugin``: the capability args it enabled, or None."""
    rc = {}
    for cap, on in (plugin.get("capabilities") or {}).items():
        if on is True and cap in cap_args:
            rc[cap] = cap_args[cap]
    return rc or None


def build_config(net, plugin, prev_result=None, att=None):
    """A plugin's stdin object for ADD/DEL/CHECK (libcni's buildOneConfig):
    name and cniVersion forced to the list's, prevResult when given, and
    runtimeConfig replaced by the enabled capability args when there are any
    (a static one in the file survives otherwise).  ``capabilities`` stays."""
    conf = dict(plugin)
    conf["name"] = net.name
    conf["cniVersion"] = net.version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    if att is not None:
        rc = runtime_config(plugin, att.cap_args)
        if rc is not None:
            conf["runtimeConfig"] = rc
    return conf


def gc_config(net, plugin, valid):
    """A plugin's stdin for GC: the valid attachments under both spellings
    libcni sends (the spec once named the key cni.dev/attachments)."""
    conf = dict(plugin)
    conf["name"] = net.name
    conf["cniVersion"] = net.version
    va = [{"containerID": cid, "ifname": ifn} for cid, ifn in valid]
    conf["cni.dev/valid-attachments"] = va
    conf["cni.dev/attachments"] = va
    return conf


def status_config(net, plugin):
    conf = dict(plugin)
    conf["name"] = net.name
    conf["cniVersion"] = net.version
    return conf


def encode_config(conf):
    """Serialized as libcni does after InjectConf: a Go map, so sorted keys."""
    return jsonio.dumps(conf, sort_keys=True).encode()


def plugin_env(command, att, path, base=None):
    """The process env plus all six CNI_* variables, empty when unused."""
    env = dict(os.environ if base is None else base)
    att = att or Attachment()
    env.update({
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": att.container_id,
        "CNI_NETNS": att.netns,
        "CNI_ARGS": att.args_str(),
        "CNI_IFNAME": att.ifname,
        "CNI_PATH": ":".join(path),
    })
    return env


def check_attachment(net_name, att):
    """The cache file name is made of these: check them before any use."""
    skel.check_network_name(net_name)
    if not att.container_id:
        raise errors.InvalidEnvironment("no container ID", "pass --container-id or a netns path")
    skel.check_container_id(att.container_id)
    if not att.ifname:
        raise errors.InvalidEnvironment("no interface name", "set CNI_IFNAME or --ifname")
    skel.check_ifname(att.ifname)


# ---- result cache -----------------------------------------------------------------

def cached_attachment(entry):
    """The Attachment a result cache entry (resultcache.CacheEntry) records."""
    return Attachment(entry.container_id, entry.netns, entry.ifname, entry.args, entry.cap_args)


# ---- running plugins -------------------------------------------------------------

def _plugin_error(rc, out, err):
    """A failed exec -> CniError, read as libcni's pluginErr does."""
    if not out.strip():
        text = err.decode("utf-8", "replace").strip()
        if text:
            return errors.Internal("plugin failed with exit status %d: %s" % (rc, text[:2000]))
        return errors.Internal("plugin failed with exit status %d and no error message" % rc)
    try:
        e = jsonio.loads(out)
    except ValueError:
        e = None
    if not isinstance(e, dict):
        return errors.Internal("plugin failed with exit status %d and printed no CNI error: %s"
                               % (rc, out.decode("utf-8", "replace").strip()[:2000]))
    code = e.get("code")
    msg = e.get("msg") if isinstance(e.get("msg"), str) else ""
    details = e.get("details") if isinstance(e.get("details"), str) else ""
    if not isinstance(code, int) or isinstance(code, bool):
        return errors.Internal(msg or "plugin failed with exit status %d" % rc,
                               details or "its error JSON has no code")
    return errors.from_code(code, msg, details)


class Runner:
    """libcni's CNIConfig: plugin dirs, cache dir, and the list verbs.

    ``notes`` collects what an operator should know but that is no error
    (a corrupt cache dropped on DEL, a verb skipped by the config).
    """

    def __init__(self, path, cache_dir=paths.CACHE_DIR, env=None, timeout=PLUGIN_TIMEOUT,
                 stderr=None):
        self.path = [d for d in path if d]
        self.cache = resultcache.Cache(cache_dir)
        self.env = env
        self.timeout = timeout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.notes = []

    # -- one exec ------------------------------------------------------------
    def exec_plugin(self, command, plugin, conf, att=None):
        """Run ``plugin`` for ``command`` with stdin ``conf``; stdout bytes.
        A failure is a CniError carrying the plugin's own code (not wrapped)."""
        from cnilib.base import proc
        from cnilib.cni import invoke
        exe = invoke.find(plugin["type"], self.path)
        if not os.access(exe, os.X_OK):
            raise errors.Internal("plugin %s is not executable" % exe, "chmod +x it or fix CNI_PATH")
        env = plugin_env(command, att, self.path, self.env)
        for attempt in range(EXEC_RETRIES + 1):
            try:
                done = proc.run([exe], stdin=encode_config(conf), env=env, timeout=self.timeout)
                break
            except TimeoutError as exc:
                raise errors.Internal(str(exc)) from None
            except OSError as exc:
                if exc.errno == errno.ETXTBSY and attempt < EXEC_RETRIES:
                    time.sleep(1)
                    continue
                raise errors.Internal("cannot run plugin %s: %s" % (exe, exc.strerror or exc)) from exc
        if done.rc != 0:
            raise _plugin_error(done.rc, done.out, done.err)
        if done.err:
            self.stderr.write(done.err.decode("utf-8", "replace"))
        return done.out

    def _add_one(self, net, plugin, prev, att):
        conf = build_config(net, plugin, prev, att)
        out = self.exec_plugin("ADD", plugin, conf, att)
        if not out.strip():
            raise errors.DecodingFailure("it printed no result", "ADD must print a result on stdout")
        try:
            data = jsonio.loads(out)
        except ValueError as exc:
            raise errors.DecodingFailure("its result is not JSON: %s" % exc) from None
        if isinstance(data, dict) and not data.get("cniVersion"):
            data["cniVersion"] = net.version    # libcni's fixupResultVersion
        from cnilib.cni import invoke
        invoke.parse_result(data, net.version, "its result")
        return data

    # -- list verbs ----------------------------------------------------------
    def add(self, net, att):
        """ADD every plugin in order, each getting the previous result; cache
        and return the last result.  The first failure stops the chain with
        no cache written (the runtime is expected to DEL)."""
        check_attachment(net.name, att)
        result = None
        for plugin in net.plugins:
            try:
                result = self._add_one(net, plugin, result, att)
            except errors.CniError as exc:
                raise PluginFailed(plugin, "add", exc) from exc
        failpoint.hit("runner-before-cache-write")
        self.cache.write(net, att, result)
        failpoint.hit("runner-after-cache-write")
        return result

    def cached_result(self, net, att):
        try:
            return self.cache.result(net, att)
        except errors.CniError as exc:
            raise errors.from_code(exc.code, "failed to get network %r cached result: %s"
                                   % (net.name, exc.msg), exc.details) from None

    def delete(self, net, att):
        """DEL in reverse order, with the cached result as prevResult from
        0.4.0 on.  The first failure stops the chain and keeps the cache, so
        a retry still has prevResult; success removes it."""
        check_attachment(net.name, att)
        prev = None
        if version.libcni_ge(net.version, "0.4.0"):
            try:
                prev = self.cache.result(net, att)
            except errors.CniError as exc:
                # libcni >= 1.2: a cache nobody can read must not block DEL forever
                self.notes.append("dropped the unreadable cached result of %s %s: %s"
                                  % (att.container_id, att.ifname, exc.msg))
                self.cache.remove(net.name, att.container_id, att.ifname)
        for plugin in reversed(net.plugins):
            try:
                self.exec_plugin("DEL", plugin, build_config(net, plugin, prev, att), att)
            except errors.CniError as exc:
                raise PluginFailed(plugin, "delete", exc) from exc
        self.cache.remove(net.name, att.container_id, att.ifname)

    def check(self, net, att):
        """CHECK in order with the cached result; refused below 0.4.0.
        Returns False when disableCheck kept it from running."""
        if not version.libcni_ge(net.version, "0.4.0"):
            raise errors.IncompatibleVersion(
                "configuration version %r does not support the CHECK command" % net.version,
                "CHECK needs cniVersion 0.4.0 or later")
        if net.disable_check:
            return False
        check_attachment(net.name, att)
        prev = self.cached_result(net, att)
        for plugin in net.plugins:
            try:
                self.exec_plugin("CHECK", plugin, build_config(net, plugin, prev, att), att)
            except errors.CniError as exc:
                raise PluginFailed(plugin, "check", exc) from exc
        return True

    def status(self, net):
        """STATUS of every plugin in order (1.1.0+), stopping at the first
        error with its code (50/51 tell the runtime what is wrong).  Returns
        False when the version has no STATUS (libcni then does nothing)."""
        if not version.libcni_ge(net.version, "1.1.0"):
            return False
        for plugin in net.plugins:
            try:
                self.exec_plugin("STATUS", plugin, status_config(net, plugin))
            except errors.CniError as exc:
                raise PluginFailed(plugin, "status", exc) from exc
        return True

    # -- GC ------------------------------------------------------------------
    def plan_gc(self, net, valid):
        """What GC of ``net`` with the valid set ``valid`` [(cid, ifname)] does."""
        return GcPlan(net, valid, self.cache.attachments(net.name))

    def gc(self, plan):
        """Carry out ``plan`` as libcni's GCNetworkList: DEL every cached
        attachment outside the valid set (with its cached netns, args and
        capability args), then, from 1.1.0, GC on every plugin.  Everything
        is attempted; the errors are raised together at the end."""
        net, errs = plan.net, []
        if plan.disabled:
            return plan
        for c in plan.stale:
            try:
                self.delete(net, cached_attachment(c))
                plan.deleted.append(c)
            except errors.CniError as exc:
                errs.append(errors.from_code(exc.code, "failed to delete stale attachment %s %s: %s"
                                             % (c.container_id, c.ifname, exc.msg), exc.details))
        for plugin in plan.gc_plugins:
            try:
                self.exec_plugin("GC", plugin, gc_config(net, plugin, plan.valid))
            except errors.CniError as exc:
                errs.append(errors.from_code(exc.code, "failed to GC plugin %s: %s"
                                             % (plugin["type"], exc.msg), exc.details))
        if errs:
            raise GcFailed(errs)
        return plan


class GcPlan:
    """The attachments a GC would DEL and the plugins it would send GC to."""

    def __init__(self, net, valid, cached):
        self.net = net
        self.valid = list(dict.fromkeys((c, i) for c, i in valid))
        keep = set(self.valid)
        self.disabled = net.disable_gc
        self.cached = cached
        self.stale = [] if self.disabled else \
            [c for c in cached if (c.container_id, c.ifname) not in keep]
        self.gc_plugins = [] if self.disabled or not version.libcni_ge(net.version, "1.1.0") \
            else list(net.plugins)
        self.deleted = []
