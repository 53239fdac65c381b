"""doctor's checks of what the runtime will really exec: the first ``flannel``
on its plugin path is this suite's (kube-flannel copies its Go binary over
it on every start), and every plugin the configs name or imply starts on
this node and speaks the configs' CNI version.

The runtime's plugin path is read where the runtime reads it: containerd's
``bin_dir`` / ``bin_dirs`` (its config.toml; k3s keeps its own), CRI-O's
``plugin_dirs`` (crio.conf and its drop-ins), podman's ``cni_plugin_dirs``
when it uses CNI.  ``--bin-dir`` overrides them all.  Like libcni, the
first regular file of the plugin's name on that path is the one that runs.

The VERSION probe runs each plugin once, as libcni would (CNI_COMMAND=VERSION,
the config's cniVersion on stdin), with the suite's log and agent off so
doctor still writes nothing.  Every fix here is print-only: it replaces a
binary, edits a runtime's config or a cluster manifest."""

import os

from cnilib.base import paths
from cnilib.cni.registry import PLUGINS
from cnilib.cni.version import SUPPORTED as SUITE_VERSIONS
from cnilib.ops.doctor.context import flannel_networks, plugin_types, process_running
from cnilib.ops.doctor.report import plain

CONTAINERD_CONFIGS = ("/etc/containerd/config.toml",
                      "/var/lib/rancher/k3s/agent/etc/containerd/config.toml")
CRIO_CONFIG = "/etc/crio/crio.conf"
CRIO_DROPINS = "/etc/crio/crio.conf.d"
PODMAN_CONFIGS = ("/usr/share/containers/containers.conf", "/etc/containers/containers.conf")
PODMAN_CNI_DIRS = ("/usr/local/libexec/cni", paths.BIN_DIRS[1], "/usr/local/lib/cni", "/usr/lib/cni",
                   paths.BIN_DIRS[0])
PROBE_TIMEOUT = 10
GO_MAGIC = b"\xff Go buildinf:"
# Go module paths and who ships binaries built from them
GO_ORIGINS = (
    (b"github.com/flannel-io/cni-plugin", "kube-flannel's flannel plugin (flannel-io/cni-plugin): its "
     "install-cni-plugin init container copies it here on every start"),
    (b"github.com/coreos/flannel", "flannel's own plugin (coreos/flannel)"),
    (b"github.com/containernetworking/plugins", "the Go reference plugins (containernetworking/plugins)"),
)
SHOWN = 300


# ====================================================================== runtime config

def load_toml(text):
    """A TOML document as dicts: tomllib (3.11+), else a reader of the subset
    runtime configs use (tables, strings, string arrays, booleans, integers)."""
    try:
        import tomllib
    except ImportError:
        return _mini_toml(text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(str(exc)) from exc


def _toml_key(text):
    """'plugins."io.containerd.grpc.v1.cri".cni' -> ['plugins', 'io.containerd.grpc.v1.cri', 'cni']."""
    out, cur, quote = [], "", None
    for ch in text.strip():
        if quote:
            if ch == quote:
                quote = None
            else:
                cur += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + [cur.strip()]


def _toml_value(text):
    import ast
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text.replace("\n", " "))
    except (ValueError, SyntaxError):
        return None


def _mini_toml(text):
    root, cur, pending = {}, None, None
    cur = root
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if '"' not in raw and "'" not in raw else raw.strip()
        if pending is not None:
            pending[1] += " " + line
            if pending[1].count("[") <= pending[1].count("]"):
                cur[pending[0]] = _toml_value(pending[1])
                pending = None
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = root
            for k in _toml_key(line.strip("[]")):
                cur = cur.setdefault(k, {})
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = _toml_key(key)[-1]
        value = value.strip()
        if value.startswith("[") and value.count("[") > value.count("]"):
            pending = [key, value]
            continue
        cur[key] = _toml_value(value)
    return root


class PluginPath:
    """Where one runtime looks for plugins: ``label`` (containerd, CRI-O...),
    ``dirs`` in order, ``source`` (the file and key it came from), and what
    the fix edits: ``config`` and ``key`` (None when nothing says it)."""

    __slots__ = ("label", "dirs", "source", "config", "key", "restart")

    def __init__(self, label, dirs, source, config=None, key=None, restart=None):
        self.label, self.dirs, self.source = label, [d for d in dirs if d], source
        self.config, self.key, self.restart = config, key, restart


def containerd_path(doc, config):
    """PluginPath of a containerd config (a dict), or None when its CRI
    plugin is disabled (Docker's containerd)."""
    disabled = doc.get("disabled_plugins") or []
    if any(str(d) in ("cri", "io.containerd.grpc.v1.cri") for d in disabled):
        return None
    plugins = doc.get("plugins") if isinstance(doc.get("plugins"), dict) else {}
    for name in ("io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri", "cri"):
        cni = (plugins.get(name) or {}).get("cni") if isinstance(plugins.get(name), dict) else None
        if not isinstance(cni, dict):
            continue
        dirs = cni.get("bin_dirs")
        if isinstance(dirs, list) and dirs:
            return PluginPath("containerd", [str(d) for d in dirs], "%s bin_dirs" % config, config,
                              "bin_dirs", "systemctl restart containerd")
        if isinstance(cni.get("bin_dir"), str) and cni["bin_dir"]:
            return PluginPath("containerd", [cni["bin_dir"]], "%s bin_dir" % config, config, "bin_dir",
                              "systemctl restart containerd")
    return PluginPath("containerd", [paths.BIN_DIRS[0]], "%s sets no bin_dir: containerd's default" % config,
                      config, None, "systemctl restart containerd")


def crio_path(docs):
    """PluginPath of CRI-O from [(path, dict)] in the order it reads them
    (crio.conf, then its drop-ins by name: later ones override)."""
    dirs, source, config = [paths.BIN_DIRS[0]], "CRI-O's default", None
    for path, doc in docs:
        net = (doc.get("crio") or {}).get("network") if isinstance(doc.get("crio"), dict) else None
        if not isinstance(net, dict):
            continue
        if isinstance(net.get("plugin_dirs"), list):
            dirs, source, config = [str(d) for d in net["plugin_dirs"]], "%s plugin_dirs" % path, path
        elif isinstance(net.get("plugin_dir"), str):
            dirs, source, config = [net["plugin_dir"]], "%s plugin_dir" % path, path
    return PluginPath("CRI-O", dirs, source, config, "plugin_dirs", "systemctl restart crio")


def _read_doc(path, problems):
    try:
        with open(path, "rb") as f:
            return load_toml(f.read(1 << 20).decode("utf-8", "replace"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problems.append("cannot read %s: %s" % (path, exc))
        return None


def runtime_paths(ctx):
    """[PluginPath] of the runtimes on this node; ``--bin-dir`` alone when
    given; the suite's default dirs when no runtime config is found."""
    if ctx.opt("bin_dir"):
        return [PluginPath("the runtime", ctx.loc.bin_dirs, "--bin-dir")]
    out, problems = [], []
    for config in CONTAINERD_CONFIGS:
        doc = _read_doc(config, problems)
        if doc is not None:
            p = containerd_path(doc, config)
            if p is not None:
                out.append(p)
    if not any(p.label == "containerd" for p in out) and process_running("containerd"):
        out.append(PluginPath("containerd", [paths.BIN_DIRS[0]], "no config.toml: containerd's default",
                              CONTAINERD_CONFIGS[0], None, "systemctl restart containerd"))
    crio = [(CRIO_CONFIG, _read_doc(CRIO_CONFIG, problems))]
    try:
        crio += [(os.path.join(CRIO_DROPINS, f), _read_doc(os.path.join(CRIO_DROPINS, f), problems))
                 for f in sorted(os.listdir(CRIO_DROPINS)) if f.endswith(".conf")]
    except OSError:
        pass
    crio = [(p, d) for p, d in crio if d is not None]
    if crio or process_running("crio"):
        out.append(crio_path(crio))
    for config in PODMAN_CONFIGS[::-1]:
        doc = _read_doc(config, problems)
        net = (doc or {}).get("network") if isinstance((doc or {}).get("network"), dict) else {}
        if isinstance(net.get("cni_plugin_dirs"), list) or net.get("network_backend") == "cni":
            dirs = net.get("cni_plugin_dirs") if isinstance(net.get("cni_plugin_dirs"), list) \
                else list(PODMAN_CNI_DIRS)
            out.append(PluginPath("podman", [str(d) for d in dirs], "%s cni_plugin_dirs" % config, config,
                                  "cni_plugin_dirs"))
            break
    ctx.problems += [p for p in problems if p not in ctx.problems]
    if not out:
        out.append(PluginPath("the runtime", ctx.loc.bin_dirs,
                              "no containerd, CRI-O or podman config found: the default dirs"))
    return out


def find_in_path(name, dirs):
    """The file libcni would run for plugin ``name``: the first regular file
    (symlinks followed) of that name in ``dirs``, or None."""
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    return None


# ====================================================================== what a binary is

def _uvarint(data, pos):
    val = shift = 0
    while pos < len(data):
        b = data[pos]
        pos += 1
        val |= (b & 0x7f) << shift
        if not b & 0x80:
            return val, pos
        shift += 7
    raise ValueError("truncated varint")


def go_buildinfo(data):
    """(go version, main package path, {module: version}) from a Go binary's
    build info (Go 1.18+ stores it inline after the magic), or None."""
    i = data.find(GO_MAGIC)
    if i < 0 or len(data) < i + 32:
        return None
    flags = data[i + 15]
    if not flags & 2:
        import re
        m = re.search(rb"go1\.\d+(?:\.\d+)?", data)
        return (m.group().decode() if m else "go (before 1.18)", None, {})
    try:
        n, pos = _uvarint(data, i + 32)
        ver = data[pos:pos + n].decode("utf-8", "replace")
        n, pos = _uvarint(data, pos + n)
        mod = data[pos:pos + n]
    except ValueError:
        return None
    if len(mod) >= 33:
        mod = mod[16:-16]
    main, mods = None, {}
    for line in mod.decode("utf-8", "replace").splitlines():
        f = line.split("\t")
        if f[0] == "path" and len(f) > 1:
            main = f[1]
        elif f[0] in ("mod", "dep") and len(f) > 2:
            mods[f[1]] = f[2]
    return ver, main, mods


def package_owner(path):
    """The distribution package a file belongs to (dpkg or rpm), or None."""
    from cnilib.base import proc
    for argv in (["dpkg-query", "-S", path], ["rpm", "-qf", path]):
        try:
            r = proc.run(argv, timeout=15)
        except (OSError, TimeoutError):
            continue
        if r.rc == 0 and r.out.strip():
            text = r.out.decode("utf-8", "replace").strip().splitlines()[0]
            return text.split(":")[0] if argv[0] == "dpkg-query" else text
        return None
    return None


def is_pycni_bundle(real):
    """A PyInstaller onedir executable of this suite: named pycni, .pycni beside it."""
    return os.path.basename(real) == "pycni" and os.path.isdir(os.path.join(os.path.dirname(real), ".pycni"))


def origin(path, owner=package_owner):
    """(ours, what): is ``path`` this suite's, and what it is (for the
    evidence): pycni's launcher or bundle, a Go binary (its module and version,
    and who ships such binaries), another ELF or script; with the package
    owning it when a package does."""
    real = os.path.realpath(path)
    try:
        with open(real, "rb") as f:
            data = f.read(64 << 20)
    except OSError as exc:
        return False, "unreadable: %s" % exc.strerror
    via = "" if real == os.path.abspath(path) else " (-> %s)" % real
    if data.startswith(b"#!"):
        first = data.split(b"\n", 1)[0][2:].strip().decode("utf-8", "replace")
        if b"pycni-launcher" in data[:512]:
            return True, "pycni's launcher%s (py form, runs %s)" % (via, plain(first, 120))
        what = "a script%s (#!%s)" % (via, plain(first, 120))
    elif data[:4] == b"\x7fELF":
        if is_pycni_bundle(real):
            return True, "pycni's bundle%s (PyInstaller)" % via
        go = go_buildinfo(data)
        if go is None:
            what = "an ELF binary%s (not Go, not pycni)" % via
        else:
            ver, main, mods = go
            who = next((text for marker, text in GO_ORIGINS if marker in data), None)
            mod = next(((m, v) for m, v in mods.items() if main and main.startswith(m)), None)
            what = "a Go binary%s: %s%s, built with %s%s" % (
                via, plain(main, 200) if main else "main package unknown",
                " %s" % plain(mod[1], 100) if mod else "", plain(ver, 40), "; %s" % who if who else "")
    else:
        what = "neither a script nor an ELF binary%s" % via
    pkg = owner(real)
    if pkg:
        what += "; installed by the package %s" % pkg
    return False, what


# ====================================================================== item 6: the flannel that runs

def own_dirs(ctx):
    """Dirs holding this suite's flannel: where this pycni runs from, the
    suite's default dirs, --bin-dir."""
    import sys
    cands = [os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else None,
             os.path.dirname(sys.executable) if getattr(sys, "frozen", False) else None]
    cands += list(paths.BIN_DIRS) + list(ctx.loc.bin_dirs)
    out = []
    for d in cands:
        if d and d not in out:
            p = os.path.join(d, "flannel")
            if os.path.isfile(p) and origin(p, owner=lambda _p: None)[0]:
                out.append(d)
    return out


def _point_fix(rt, ours):
    """The command pointing ``rt`` at ``ours`` (the README's first option), or a sentence."""
    if rt.label == "containerd" and rt.key in ("bin_dir", "bin_dirs"):
        value = '"%s"' % ours if rt.key == "bin_dir" else '["%s"]' % ours
        return "sed -i 's|^\\(\\s*%s\\s*=\\s*\\).*|\\1%s|' %s && %s" % (
            rt.key, value, rt.config, rt.restart)
    if rt.label == "containerd":
        return ("add bin_dir = \"%s\" under [plugins.\"io.containerd.grpc.v1.cri\".cni] in %s, then %s"
                % (ours, rt.config or CONTAINERD_CONFIGS[0], rt.restart))
    if rt.label == "CRI-O":
        return ("mkdir -p %s && printf '[crio.network]\\nplugin_dirs = [\"%s\"]\\n' > "
                "%s/90-pycni-plugins.conf && %s" % (CRIO_DROPINS, ours, CRIO_DROPINS, rt.restart))
    if rt.label == "podman":
        return "set cni_plugin_dirs = [\"%s\"] under [network] in %s" % (ours, rt.config)
    return "point the runtime's plugin path at %s (containerd bin_dir, CRI-O plugin_dirs)" % ours


def check_flannel_binary(ctx, c):
    if not flannel_networks(ctx.loc):
        return c.set("SKIP", "no flannel network configured")
    ours = own_dirs(ctx)
    bad = []
    for rt in runtime_paths(ctx):
        path = find_in_path("flannel", rt.dirs)
        c.evidence.append("%s looks in %s (%s)" % (rt.label, ":".join(rt.dirs) or "(nothing)", rt.source))
        if path is None:
            bad.append("%s finds no flannel in %s" % (rt.label, ":".join(rt.dirs)))
            c.add_fix(_point_fix(rt, ours[0]) if ours else
                      install_fix(rt.dirs[0] if rt.dirs else paths.BIN_DIRS[1]))
            continue
        is_ours, what = origin(path)
        c.evidence.append("%s runs %s: %s" % (rt.label, path, what))
        if is_ours:
            continue
        bad.append("%s runs %s, %s, not pycni's" % (rt.label, path, what.split(";")[0]))
        target = ours[0] if ours else paths.BIN_DIRS[1]
        if not ours:
            c.add_fix(install_fix(target) + "   # pycni where kube-flannel does not copy to")
        c.add_fix(_point_fix(rt, target) + "   # 1. point %s at pycni's dir: kube-flannel keeps copying "
                  "into %s, which no one reads any more" % (rt.label, os.path.dirname(path)))
        c.add_fix("kubectl -n kube-flannel edit ds kube-flannel-ds   # 2. or delete the install-cni-plugin "
                  "init container (redo after each kube-flannel upgrade)")
        c.add_fix(install_fix(os.path.dirname(path)) + "   # 3. or re-install over it after each flannel "
                  "start (racy: pods started in between get the other one)")
    if bad:
        return c.set("FAIL", "; ".join(bad))
    c.set("PASS", "the flannel the runtime runs is pycni's")


# ====================================================================== item 7: every plugin starts

def _elf_interp(data):
    """PT_INTERP of an ELF image (the dynamic loader it needs), or None."""
    import struct
    if data[:4] != b"\x7fELF" or len(data) < 64:
        return None
    is64, end = data[4] == 2, "<" if data[5] == 1 else ">"
    try:
        if is64:
            phoff, = struct.unpack_from(end + "Q", data, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
        else:
            phoff, = struct.unpack_from(end + "I", data, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
        for i in range(phnum):
            off = phoff + i * phentsize
            ptype, = struct.unpack_from(end + "I", data, off)
            if ptype == 3:
                if is64:
                    poff, = struct.unpack_from(end + "Q", data, off + 8)
                    size, = struct.unpack_from(end + "Q", data, off + 32)
                else:
                    poff, = struct.unpack_from(end + "I", data, off + 4)
                    size, = struct.unpack_from(end + "I", data, off + 16)
                return data[poff:poff + size].rstrip(b"\0").decode("utf-8", "replace")
    except struct.error:
        return None
    return None


def _exec_failure(path, exc):
    """Why the kernel refused to start ``path``, in its words plus what they mean."""
    import errno
    words = "%s" % (exc.strerror or exc)
    try:
        with open(os.path.realpath(path), "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        head = b""
    if exc.errno == errno.ENOENT:
        if head.startswith(b"#!"):
            interp = head.split(b"\n", 1)[0][2:].strip().split()[0].decode("utf-8", "replace") \
                if head[2:].strip() else "?"
            return "%s: its interpreter %s does not exist (exec: %s)" % (path, plain(interp, 120), words)
        interp = _elf_interp(head)
        if interp:
            return "%s: its loader %s does not exist (exec: %s)" % (path, plain(interp, 120), words)
    if exc.errno == errno.ENOEXEC:
        return "%s: not a program for this machine (exec: %s)" % (path, words)
    if exc.errno == errno.EACCES:
        return "%s: not allowed to run (exec: %s; a noexec mount, or no x bit)" % (path, words)
    return "%s: exec: %s" % (path, words)


def probe(path, dirs, version):
    """Run ``path`` as libcni's VERSION call; returns (supported versions,
    None) or (None, why it did not answer: the loader's or plugin's words)."""
    from cnilib.base import jsonio, proc
    if not os.access(path, os.X_OK):
        return None, "%s is not executable (mode %o)" % (path, os.stat(path).st_mode & 0o7777)
    env = {"CNI_COMMAND": "VERSION", "CNI_PATH": ":".join(dirs),
           "PATH": os.environ.get("PATH") or proc.SYSTEM_PATH,
           "PYCNI_LOG": "off", "PYCNI_AGENT_SOCKET": "off"}
    stdin = ('{"cniVersion": "%s"}' % version).encode() if version else b"{}"
    try:
        r = proc.run([path], stdin, env, timeout=PROBE_TIMEOUT)
    except TimeoutError:
        return None, "%s did not answer VERSION within %d s" % (path, PROBE_TIMEOUT)
    except OSError as exc:
        return None, _exec_failure(path, exc)
    if r.rc != 0:
        said = plain(r.err, SHOWN) or plain(r.out, SHOWN) or "no output"
        return None, "%s exits %d: %s" % (path, r.rc, said)
    try:
        got = jsonio.loads(r.out)
        vers = got.get("supportedVersions") if isinstance(got, dict) else None
        if not isinstance(vers, list):
            raise ValueError("no supportedVersions")
    except ValueError:
        return None, "%s answers VERSION with something else: %s" % (path, plain(r.out, SHOWN) or "nothing")
    return [str(v) for v in vers], None


def needed_plugins(nets, containerd):
    """[(plugin type, [(network, cniVersion)])] the configs name or imply;
    containerd also runs loopback itself for every pod (cniVersion 0.3.1)."""
    out = {}
    for n in nets:
        for t in plugin_types(n):
            out.setdefault(t, []).append((n.name, n.version))
    if containerd:
        out.setdefault("loopback", []).append(("containerd's pod loopback", "0.3.1"))
    return sorted(out.items())


def install_fix(d):
    """``pycni install`` into ``d`` by this pycni: it copies the tree doctor
    runs from, and checks every plugin answers VERSION there before any
    name switches (cnilib.ops.install)."""
    import sys
    exe = sys.argv[0] if sys.argv and os.path.basename(sys.argv[0]) == "pycni" else "pycni"
    return "%s install --bin-dir %s" % (os.path.abspath(exe) if "/" in exe else exe, d)


def glibc_note(path):
    """'; it needs glibc >= X (GLIBC_X, in F), this node has Y' when an ELF
    plugin (or the bundle's libraries) needs a newer glibc than this node's."""
    from cnilib.ops import elf
    real = os.path.realpath(path)
    if not elf.is_elf(real):
        return ""
    need, who = elf.glibc_needed(real), os.path.basename(real)
    if is_pycni_bundle(real):
        t, w = elf.tree_glibc_needed(os.path.join(os.path.dirname(real), ".pycni"))
        if t and (need is None or t > need):
            need, who = t, ".pycni/" + w
    have = elf.glibc_provided("/")
    if need and have and need > have:
        return "; it needs glibc >= %s (GLIBC_%s, in %s), this node has %s" % (
            elf.vtext(need), elf.vtext(need), plain(who, 120), elf.vtext(have))
    return ""


def check_plugin_start(ctx, c):
    nets = ctx.loc.networks()
    if not nets:
        return c.set("SKIP", "no network config loads, so no plugin is needed")
    bad, ok = [], 0
    for rt in runtime_paths(ctx):
        c.evidence.append("%s looks in %s (%s)" % (rt.label, ":".join(rt.dirs) or "(nothing)", rt.source))
        for t, users in needed_plugins(nets, rt.label == "containerd"):
            path = find_in_path(t, rt.dirs)
            who = ", ".join(sorted({n for n, _v in users}))
            ours = t in PLUGINS
            if path is None:
                d = rt.dirs[0] if rt.dirs else paths.BIN_DIRS[1]
                bad.append("%s: %s (for %s) is not in %s" % (rt.label, t, who, ":".join(rt.dirs)))
                c.add_fix(install_fix(d) if ours else
                          "install the %s plugin into %s (pycni has none: containernetworking/plugins "
                          "has most)" % (t, d))
                continue
            want = sorted({v for _n, v in users}, key=lambda v: [int(x) for x in v.split(".") if x.isdigit()])
            vers, why = probe(path, rt.dirs, want[-1] if want else None)
            if why is not None:
                bad.append("%s cannot start %s (for %s): %s%s" % (rt.label, t, who, why, glibc_note(path)))
                c.add_fix(install_fix(os.path.dirname(path)) + "   # pycni's plugins, checked to start here "
                          "before they replace anything" if ours else
                          "replace %s with a build for this node" % path)
                continue
            missing = [v for v in want if v not in vers]
            c.evidence.append("%s: %s answers VERSION: %s" % (t, path, ", ".join(vers)))
            if missing:
                bad.append("%s: %s (for %s) speaks %s, the config asks %s (incompatible CNI versions)"
                           % (rt.label, path, who, ", ".join(vers), ", ".join(missing)))
                if ours:
                    c.add_fix(install_fix(os.path.dirname(path)) + "   # pycni's %s speaks %s"
                              % (t, ", ".join(SUITE_VERSIONS)))
                c.add_fix("or lower cniVersion to one %s speaks in the config of %s" % (path, who))
                continue
            ok += 1
    if bad:
        return c.set("FAIL", "; ".join(bad))
    c.set("PASS", "every plugin the configs need starts here and speaks their CNI version (%d probed)" % ok)
