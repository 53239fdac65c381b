"""doctor's check of the other network managers on the node: NetworkManager
and systemd-networkd must leave the plugins' links alone (cni0 and the
other CNI bridges, flannel.1, the pods' host veths), or they strip
addresses and routes behind the plugins' back (containernetworking/cni#77,
podman#11123).

Both are judged from their configuration files, read the way each daemon
reads them, and, when the daemon runs here, from what it reports
(``nmcli``, ``networkctl``).  The links judged are the ones the configs
name (each bridge, flannel.1 for a flannel network) and the veths on the
bridges (a sample name when none exists yet).  The fixes write a drop-in
and reload the daemon: print-only, since they change another daemon's
configuration."""

import fnmatch
import os

from cnilib.ops.doctor.context import flannel_networks, process_running
from cnilib.ops.doctor.report import plain, worst

SAMPLE_VETH = "veth0123abcd"     # the bridge names host veths veth<8 hex>

NM_MAIN = "/etc/NetworkManager/NetworkManager.conf"
NM_SYSTEM_DIRS = ("/usr/lib/NetworkManager/conf.d", "/run/NetworkManager/conf.d")
NM_ETC_DIR = "/etc/NetworkManager/conf.d"
NM_DROPIN = NM_ETC_DIR + "/90-cni-unmanaged.conf"
NM_BINARIES = ("/usr/sbin/NetworkManager", "/usr/bin/NetworkManager")

# highest precedence first: a file shadows one of the same name further down
NETWORKD_DIRS = ("/etc/systemd/network", "/run/systemd/network", "/usr/local/lib/systemd/network",
                 "/usr/lib/systemd/network", "/lib/systemd/network")
NETWORKD_BINARIES = ("/lib/systemd/systemd-networkd", "/usr/lib/systemd/systemd-networkd")
UNIT_WANTS = "/etc/systemd/system/multi-user.target.wants"


class Link:
    """A link to judge: name, kind (bridge/vxlan/veth), MAC when it exists."""

    __slots__ = ("name", "kind", "mac", "exists")

    def __init__(self, name, kind, mac=None, exists=True):
        self.name, self.kind, self.mac, self.exists = name, kind, (mac or "").lower(), exists

    def __repr__(self):
        return "<Link %s %s>" % (self.name, self.kind)


# ====================================================================== NetworkManager

def read_keyfile(text):
    """[(section, key, op, value)] of a NetworkManager keyfile (ini; '#' comments;
    ``key+=`` appends to a list, ``key-=`` removes from it)."""
    out, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None:
            continue
        key, op = key.strip(), "="
        if key.endswith("+") or key.endswith("-"):
            key, op = key[:-1].strip(), key[-1] + "="
        out.append((section, key, op, value.strip()))
    return out


def spec_list(value):
    """NetworkManager device specs of a list value ('a;b', 'a,b'), safe to show."""
    return [plain(s.strip(), 200) for s in value.replace(",", ";").split(";") if s.strip()]


def spec_matches(spec, link):
    """Does one NetworkManager device spec match ``link``?  interface-name:
    (globs; '=' exact, '~' case-insensitive), mac:, driver:, type:, a bare
    MAC, '*'; 'except:SPEC' inverts."""
    if spec == "*":
        return True
    kind, sep, val = spec.partition(":")
    if not sep:
        return link.mac != "" and spec.lower() == link.mac
    kind = kind.strip().lower()
    if kind == "except":
        return not spec_matches(val, link)
    if kind == "interface-name":
        if val.startswith("="):
            return link.name == val[1:]
        if val.startswith("~"):
            return fnmatch.fnmatch(link.name.lower(), val[1:].lower())
        return fnmatch.fnmatchcase(link.name, val)
    if kind == "mac":
        return link.mac != "" and val.lower() == link.mac
    if kind in ("driver", "type"):
        return val.strip().lower() == link.kind
    return False


def nm_files(exists=os.path.isfile, listdir=os.listdir):
    """NetworkManager's config files in the order it reads them: /usr/lib and
    /run conf.d (a same-named file in /etc shadows them), NetworkManager.conf,
    /etc conf.d."""
    def conf(d):
        try:
            return sorted(f for f in listdir(d) if f.endswith(".conf"))
        except OSError:
            return []
    etc = conf(NM_ETC_DIR)
    out, seen = [], set(etc)
    for d in NM_SYSTEM_DIRS:
        for f in conf(d):
            if f not in seen:
                seen.add(f)
                out.append(os.path.join(d, f))
    if exists(NM_MAIN):
        out.append(NM_MAIN)
    return out + [os.path.join(NM_ETC_DIR, f) for f in etc]


def nm_config(files):
    """(unmanaged specs with the file that last set them, device sections):
    keyfile.unmanaged-devices after every file (later files override,
    ``+=``/``-=`` edit the list); device sections as [(file, section,
    match specs, managed value)] in the order NetworkManager prefers them
    (later files first, in a file the order of appearance, [device] last)."""
    unmanaged, devices = [], []
    for path, text in files:
        entries = read_keyfile(text)
        for section, key, op, value in entries:
            if section == "keyfile" and key == "unmanaged-devices":
                specs = [(s, path) for s in spec_list(value)]
                if op == "=":
                    unmanaged = specs
                elif op == "+=":
                    unmanaged += [x for x in specs if x[0] not in [u for u, _p in unmanaged]]
                else:
                    drop = {s for s, _p in specs}
                    unmanaged = [x for x in unmanaged if x[0] not in drop]
        secs = {}
        order = []
        for section, key, _op, value in entries:
            if section == "device" or section.startswith("device-"):
                if section not in secs:
                    secs[section] = {}
                    order.append(section)
                secs[section][key] = value
        order = [s for s in order if s != "device"] + (["device"] if "device" in secs else [])
        devices = [(path, s, spec_list(secs[s].get("match-device", "*")), secs[s].get("managed"))
                   for s in order] + devices
    return unmanaged, devices


def nm_verdict(link, unmanaged, devices):
    """(managed?, why) of ``link`` under NetworkManager's config; it manages
    every device but loopback unless told otherwise."""
    for spec, path in unmanaged:
        if spec_matches(spec, link):
            return False, "unmanaged-devices %s (%s)" % (spec, path)
    for path, section, specs, managed in devices:
        if managed is None or not any(spec_matches(s, link) for s in specs):
            continue
        if managed.lower() in ("0", "false", "no", "off"):
            return False, "[%s] managed=%s (%s)" % (section, managed, path)
        return True, "[%s] managed=%s (%s)" % (section, managed, path)
    return True, "no unmanaged-devices or [device] managed=0 matches it"


def parse_nmcli(text):
    """{device: state} of ``nmcli -t -f DEVICE,STATE device status``."""
    out = {}
    for line in text.splitlines():
        dev, sep, state = line.rpartition(":")
        if sep and dev:
            out[dev.replace("\\:", ":")] = plain(state, 80)
    return out


# ====================================================================== systemd-networkd

def networkd_files(listdir=os.listdir):
    """[path] of .network files networkd reads, in its order (by file name;
    a name in a higher-precedence dir shadows the same name further down)."""
    chosen = {}
    for d in NETWORKD_DIRS:
        try:
            names = listdir(d)
        except OSError:
            continue
        for f in names:
            if f.endswith(".network") and f not in chosen:
                chosen[f] = os.path.join(d, f)
    return [chosen[f] for f in sorted(chosen)]


def read_network(text):
    """{section: {key: [values]}} of a systemd .network file."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1].strip(), {})
            continue
        key, sep, value = line.partition("=")
        if sep and section is not None:
            section.setdefault(key.strip(), []).append(value.strip())
    return out


def _glob_list(values, value):
    """systemd's match lists: space-separated globs, '!' in front of the
    list negates it; an empty assignment resets the list."""
    pats = []
    for v in values:
        pats = [] if not v else pats + v.split()
    if not pats:
        return None
    neg = pats[0].startswith("!")
    if neg:
        pats = [pats[0][1:]] + pats[1:]
    hit = any(fnmatch.fnmatchcase(value or "", p) for p in pats if p)
    return not hit if neg else hit


def network_matches(conf, link):
    """Does a .network file's [Match] select ``link``?  Name=, Driver=,
    Type=, Kind=, MACAddress=; an empty [Match] selects every link."""
    m = conf.get("Match", {})
    for key, value in (("Name", link.name), ("OriginalName", link.name), ("Driver", link.kind),
                       ("Type", "ether" if link.kind == "veth" else link.kind), ("Kind", link.kind),
                       ("MACAddress", link.mac), ("PermanentMACAddress", link.mac)):
        if key in m:
            got = _glob_list(m[key], value)
            if got is False:
                return False
    return True


def networkd_verdict(link, files):
    """(path of the .network file that applies or None, unmanaged?)."""
    for path, conf in files:
        if network_matches(conf, link):
            unmanaged = any(v.lower() in ("yes", "true", "1", "on")
                            for v in conf.get("Link", {}).get("Unmanaged", []))
            return path, unmanaged
    return None, False


def dropin_name(first_matching):
    """A name for the unmanaged drop-in that sorts before ``first_matching``
    (networkd applies the first matching file in name order)."""
    for name in ("00-cni-unmanaged.network", "0-cni-unmanaged.network", "+cni-unmanaged.network"):
        if not first_matching or name < os.path.basename(first_matching):
            return name
    return None


# ====================================================================== the check

def our_links(ctx):
    """The links the plugins own here or will make: each CNI bridge, the
    flannel vxlan devices, the veths on the bridges (a sample when none)."""
    out, seen = [], set()

    def add(name, kind):
        if name in seen:
            return
        seen.add(name)
        link = ctx.by_name.get(name)
        out.append(Link(name, link.kind if link is not None and link.kind else kind,
                        link.mac if link is not None else None, link is not None))
    for _n, br, _s, _gw in ctx.bridge_networks():
        add(br, "bridge")
    if flannel_networks(ctx.loc) or ctx.vxlan_devs():
        add("flannel.1", "vxlan")
    for dev, _info in ctx.vxlan_devs():
        add(dev.name, "vxlan")
    bridges = [ctx.by_name[n] for n in list(seen) if n in ctx.by_name and ctx.by_name[n].kind == "bridge"]
    veths = [p for b in bridges for p in ctx.ports_of(b) if p.kind == "veth"]
    for v in veths:
        add(v.name, "veth")
    if not veths and out:
        out.append(Link(SAMPLE_VETH, "veth", exists=False))
    return out


def _patterns(links):
    pats = []
    for link in links:
        p = "veth*" if link.kind == "veth" else "flannel*" if link.name.startswith("flannel") else link.name
        if p not in pats:
            pats.append(p)
    return pats


def _read(path):
    with open(path, "rb") as f:
        return f.read(1 << 20).decode("utf-8", "replace")


def _enabled(unit):
    return os.path.lexists(os.path.join(UNIT_WANTS, unit))


def _run(argv):
    from cnilib.base import proc
    try:
        r = proc.run(argv, timeout=15)
    except (OSError, TimeoutError):
        return None
    return r.out.decode("utf-8", "replace") if r.rc == 0 else None


def _judge_nm(ctx, c, links):
    files = nm_files()
    running = process_running("NetworkManager")
    present = running or files or any(os.path.exists(b) for b in NM_BINARIES)
    if not present:
        c.evidence.append("NetworkManager: not installed, no config")
        return "PASS", None
    texts = []
    for p in files:
        try:
            texts.append((p, _read(p)))
        except OSError as exc:
            c.evidence.append("NetworkManager: cannot read %s: %s" % (p, exc.strerror))
    unmanaged, devices = nm_config(texts)
    state = parse_nmcli(_run(["nmcli", "-t", "-f", "DEVICE,STATE", "device", "status"]) or "") \
        if running else {}
    how = "running" if running else "enabled, not running" if _enabled("NetworkManager.service") \
        else "installed, not running"
    c.evidence.append("NetworkManager (%s): config %s" % (how, ", ".join(files) or "(none)"))
    managed = []
    for link in links:
        is_managed, why = nm_verdict(link, unmanaged, devices)
        live = state.get(link.name)
        if live is not None:
            c.evidence.append("  %s: nmcli says %s; config: %s" % (link.name, live, why))
            is_managed = live != "unmanaged"
        else:
            c.evidence.append("  %s%s: %s by the config (%s)" % (
                link.name, "" if link.exists else " (a name it will have)",
                "managed" if is_managed else "unmanaged", why))
        if is_managed:
            managed.append(link)
    if not managed:
        return "PASS", None
    specs = ";".join("interface-name:%s" % p for p in _patterns(links))
    c.add_fix("printf '[keyfile]\\nunmanaged-devices+=%s\\n' > %s" % (specs, NM_DROPIN))
    c.add_fix("systemctl reload NetworkManager   # or: nmcli general reload conf")
    return ("FAIL" if running else "WARN"), "NetworkManager %s %s" % (
        "manages" if running else "would manage", ", ".join(link.name for link in managed))


def _judge_networkd(ctx, c, links):
    paths = networkd_files()
    running = process_running("systemd-network")
    if not paths and not running:
        c.evidence.append("systemd-networkd: no .network file")
        return "PASS", None
    texts = []
    for p in paths:
        try:
            texts.append((p, read_network(_read(p))))
        except OSError as exc:
            c.evidence.append("systemd-networkd: cannot read %s: %s" % (p, exc.strerror))
    live = {}
    if running:
        for line in (_run(["networkctl", "list", "--no-legend", "--no-pager"]) or "").splitlines():
            parts = line.split()
            if len(parts) >= 5:
                live[parts[1]] = plain(parts[4], 40)
    how = "running" if running else "enabled, not running" if _enabled("systemd-networkd.service") \
        else "not running"
    c.evidence.append("systemd-networkd (%s): %d .network file(s)" % (how, len(paths)))
    managed, first = [], None
    for link in links:
        path, unmanaged = networkd_verdict(link, texts)
        setup = live.get(link.name)
        if path is None or unmanaged:
            c.evidence.append("  %s: %s%s" % (link.name, "no .network file matches it" if path is None else
                                              "%s says Unmanaged=yes" % path,
                                              "; networkctl: %s" % setup if setup else ""))
            continue
        if setup == "unmanaged":
            continue
        c.evidence.append("  %s: %s matches it and configures it%s" % (
            link.name, path, "; networkctl: %s" % setup if setup else ""))
        managed.append((link, path))
        first = path if first is None or os.path.basename(path) < os.path.basename(first) else first
    if not managed:
        return "PASS", None
    name = dropin_name(first)
    pats = " ".join(_patterns([link for link, _p in managed] + list(links)))
    if name is None:
        c.add_fix("exclude %s from %s ([Match] Name=!%s), or rename it so a file with [Link] "
                  "Unmanaged=yes for them sorts first" % (pats, first, pats.replace(" ", " !")))
    else:
        c.add_fix("printf '[Match]\\nName=%s\\n\\n[Link]\\nUnmanaged=yes\\n' > %s"
                  % (pats, os.path.join(NETWORKD_DIRS[0], name)))
    c.add_fix("networkctl reload   # systemd >= 244; older: systemctl restart systemd-networkd")
    return ("FAIL" if running else "WARN"), "systemd-networkd %s %s (%s)" % (
        "manages" if running else "would manage", ", ".join(link.name for link, _p in managed),
        ", ".join(sorted({os.path.basename(p) for _l, p in managed})))


def check_link_managers(ctx, c):
    links = our_links(ctx)
    if not links:
        return c.set("SKIP", "no bridge or flannel network configured: no link of ours to guard")
    c.evidence.append("links of the plugins: %s" % ", ".join(
        link.name + ("" if link.exists else " (sample)") for link in links))
    statuses, what = [], []
    for judge in (_judge_nm, _judge_networkd):
        st, text = judge(ctx, c, links)
        statuses.append(st)
        if text:
            what.append(text)
    st = worst(statuses)
    if st == "PASS":
        names = ", ".join(link.name for link in links if link.exists) or "the plugins' links"
        return c.set("PASS", "neither NetworkManager nor systemd-networkd manages %s" % names)
    c.set(st, "; ".join(what) + ": %s addresses and routes the plugins set"
          % ("they strip" if len(what) > 1 else "it strips"))

