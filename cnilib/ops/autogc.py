"""``pycni gc --auto``: free what pods that died without a DEL left behind.

containerd 1.6/1.7 and podman 4 never send CNI GC, so what a crash leaks
(a node that lost power, a runtime killed mid-teardown, a pod's netns
deleted under it) stays until someone cleans up.  This is that someone,
run by a systemd timer (conf/pycni-gc.timer): for every network of the
conf dir it frees the attachments whose network namespace is gone, each
through a DEL of the network's own plugins (with CNI_NETNS empty: the
netns is gone, and a path that now names another pod's netns must not be
entered), so every layer is released under its plugin's lock: the lease,
a veth left on the host, the rule elements, the flannel and tuning
records, the result cache entry.

Which attachments are dead is never guessed.  Each attachment (network,
container ID, ifname, as every layer keys it) is judged by ``judge``:

  live     a host veth of it has its peer in another netns (the kernel
           keeps a veth pair exactly as long as both ends' netns live);
           or a record of it names a netns path that still resolves to
           the device/inode recorded at ADD (the suite's rule records keep
           them); or its result cache entry's netns path still opens and
           nothing says it is another attachment's now.
  dead     no evidence of life, and a record says its netns is gone: the
           path is missing from a directory that is there, or is no
           namespace any more, or resolves to another device/inode than
           the one recorded at ADD, or holds the same interface name as
           the veth peer of another attachment (the path was reused).
  unknown  nothing says either (a lease and nothing else): kept, and named
           in the output, since no record says where its netns was.

It refuses to act on a view of the node that is empty or unreadable, and
says what it saw: no conf dir or no network config that loads; a result
cache that cannot be read (an entry it cannot read could be a live pod's
claim); a state layer that cannot be listed, or rules that cannot be
read (a lease, flannel or tuning file it cannot read is only noted: none
of them is evidence of life, and its plugin's DEL deals with it); no
network namespace mount visible at all (a mount namespace that does not
see the runtimes' /run/netns would make every pod look dead:
``--allow-no-netns`` is for a node that really has no pod netns, as after
a reboot).  ``--dry-run`` prints the plan and changes nothing.

Each thing freed is one line in the suite's log, under the run's summary
line; after the DELs the node is read again, and what is still there is
named (exit 1).  Exit status: 0 done (nothing to do included), 1 a DEL
failed or something was left, 2 refused or bad options.
"""

import errno
import os
import sys
import time

from cnilib.base import errors, paths

LIVE, DEAD, UNKNOWN = "live", "dead", "unknown"


class Refused(Exception):
    """The node's view is empty or unreadable: nothing is done."""


def clean(text):
    """One line, control characters escaped (names come from files and pods)."""
    return errors.one_line(str(text))


# ====================================================================== netns evidence

def nsfs_dev():
    """st_dev of the namespace filesystem (every netns file has it), or None."""
    try:
        return os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return None


def netns_mounts(mountinfo="/proc/self/mountinfo"):
    """How many network namespace mounts this mount namespace sees (nsfs
    mounts whose root is net:[...]); raises OSError when it cannot tell."""
    n = 0
    with open(mountinfo, "rb") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            left, sep, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if sep and len(fields) > 3 and rfields and rfields[0] == "nsfs" \
                    and fields[3].startswith("net:["):
                n += 1
    return n


class NetnsState:
    """Where a recorded netns path leads now: ``kind`` is "gone", "same"
    (the recorded device/inode), "other" (another one), "netns" (a netns,
    nothing recorded to compare with) or "unknown"; ``ino`` (dev, ino)."""

    __slots__ = ("kind", "ino", "why")

    def __init__(self, kind, why, ino=None):
        self.kind, self.why, self.ino = kind, why, ino


def netns_state(path, recorded=None, nsdev=None):
    """The NetnsState of ``path``; ``recorded`` is (dev or None, ino) from ADD."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        return NetnsState(UNKNOWN, "no usable netns path recorded")
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return NetnsState(UNKNOWN, "netns %s cannot be looked at: %s" % (path, exc.strerror))
        return _missing(path)
    if nsdev is not None and st.st_dev != nsdev:
        return NetnsState("gone", "netns %s is a plain file now (the namespace was unmounted)" % path)
    ino = (st.st_dev, st.st_ino)
    if recorded is None:
        return NetnsState("netns", "netns %s still opens" % path, ino)
    dev, rino = recorded
    if st.st_ino == rino and (dev is None or st.st_dev == dev):
        return NetnsState("same", "netns %s is the one recorded at ADD (inode %d)" % (path, rino), ino)
    return NetnsState("other", "netns %s names another namespace now (inode %d, %d at ADD)"
                      % (path, st.st_ino, rino), ino)


def _missing(path):
    parent = os.path.dirname(path)
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "proc" and parts[2].isdigit():
        # /proc/<pid>/ns/net: the process that held the netns is gone
        if os.path.isdir("/proc/self"):
            return NetnsState("gone", "netns %s is gone (process %s has exited)" % (path, parts[2]))
        return NetnsState(UNKNOWN, "netns %s: /proc is not mounted here" % path)
    try:
        os.listdir(parent)
    except OSError as exc:
        return NetnsState(UNKNOWN, "netns %s is missing, and so is its directory %s (%s): this view "
                          "may not see the runtime's netns mounts" % (path, parent, exc.strerror))
    return NetnsState("gone", "netns %s is gone" % path)


# ====================================================================== the judgement

class Verdict:
    __slots__ = ("state", "why", "evidence")

    def __init__(self, state, why, evidence=()):
        self.state, self.why, self.evidence = state, why, list(evidence)


def _identity(rec):
    ino, dev = rec.get("netns_ino"), rec.get("netns_dev")
    if not isinstance(rec.get("netns"), str) or not isinstance(ino, int) or isinstance(ino, bool):
        return None
    return (dev if isinstance(dev, int) and not isinstance(dev, bool) else None, ino)


def peers_by_netns(rows):
    """{(dev, ino) of a netns: [(ifname inside, row)]} of the rows whose host
    veth has its peer there (whois found the peer)."""
    out = {}
    for r in rows:
        ref = r.netns
        ino = getattr(ref, "ino", None)
        if r.veth is not None and r.peer is not None and ino is not None:
            out.setdefault(ino, []).append((r.peer.name, r))
    return out


def judge(r, recs, by_netns, nsdev=None):
    """The Verdict on row ``r`` (a whois.Row with its full key); ``recs`` are
    the suite's rule records of its key (they keep the netns device/inode)."""
    if r.veth is not None and r.veth.link_netnsid is not None:
        return Verdict(LIVE, "host veth %s has its peer in another netns" % r.veth.name)
    live, dead = [], []
    recorded = {}
    for rec in recs:
        ident = _identity(rec)
        if ident is None:
            continue
        recorded.setdefault(rec["netns"], ident)
        st = netns_state(rec["netns"], ident, nsdev)
        (live if st.kind == "same" else dead if st.kind in ("gone", "other") else []).append(
            "%s record: %s" % (rec.get("_kind", "rule"), st.why))
    c = r.cache
    if c is not None and c.netns:
        st = netns_state(c.netns, recorded.get(c.netns), nsdev)
        if st.kind in ("same", "other", "gone"):
            (live if st.kind == "same" else dead).append("cache: " + st.why)
        elif st.kind == "netns":
            other = [o for name, o in by_netns.get(st.ino, ()) if name == r.ifname and o is not r]
            if other:
                o = other[0]
                dead.append("cache: netns %s was reused: its %s is the peer of %s, which belongs to "
                            "%s/%s/%s" % (c.netns, r.ifname, o.veth.name, o.network, o.cid, o.ifname))
            else:
                live.append("cache: " + st.why)
        else:
            return Verdict(UNKNOWN, "cache: " + st.why, live + dead)
    if live:
        return Verdict(LIVE, live[0], live + dead)
    if dead:
        return Verdict(DEAD, dead[0], dead)
    return Verdict(UNKNOWN, "no record says where its netns was (no result cache entry with a netns, "
                   "no rule record)")


def things(r, recs):
    """[(layer, text)] of what row ``r`` holds on the node."""
    out = [("lease", "%s (%s)" % (lease.ip, lease.path)) for lease in r.leases]
    if r.veth is not None:
        out.append(("veth", r.veth.name))
    out += [("rules", "%s (%s)" % (g.where, g.what)) for g in r.rules]
    for layer, obj in (("cache", r.cache), ("flannel", r.saved), ("tuning", r.tuning)):
        if obj is not None:
            out.append((layer, obj.path))
    out += [("record", rec["_path"]) for rec in recs]
    return out


def layers(items):
    """'lease x2, cache' of [(layer, text)]."""
    counts = {}
    for k, _t in items:
        counts[k] = counts.get(k, 0) + 1
    return ", ".join(k if n == 1 else "%s x%d" % (k, n) for k, n in counts.items())


# ====================================================================== reading the node

class View:
    """What gc --auto reads, once: the configs, the node (whois), the rule
    records by key, and the verdicts."""

    def __init__(self, conf_dir, cache_dir):
        self.conf_dir, self.cache_dir = conf_dir, cache_dir
        self.loc = self.node = None
        self.records = {}
        self.problems, self.notes = [], []
        self.rows = []          # [(row, Verdict)] of the rows with a full key
        self.keyless = []       # rows no DEL can name

    def read(self, check=True):
        from cnilib.ops import nodestate, resultcache, whois
        if check:
            self._check_conf_dir()
        loc = nodestate.Locations(self.conf_dir, [], [], self.cache_dir, [], [], [])
        loc.load_configs()
        if check:
            self._check_configs(loc)
            self._check_cache()
        # the dirs the cached configs name too: a DEL with a cached config frees there
        for e in resultcache.read_cache(self.cache_dir, []):
            net = self.cached_network(e)
            if net is not None:
                for p in net.plugins:
                    loc._add_plugin_dirs(p)
        self.loc = loc
        try:
            self.node = whois.build(loc)
        except OSError as exc:
            raise Refused("cannot read this node's links and rules: %s" % exc) from None
        self.records = read_records(self.problems)
        self.problems += self.node.problems
        # a file of a layer that cannot be read is a thing gc cannot free, noted; a layer
        # that cannot be listed, or rules that cannot be read, is a view it cannot trust
        self.notes = [p for p in self.problems if p.startswith("cannot read ")]
        bad = [p for p in self.problems if p not in self.notes and "is not installed" not in p]
        if check and bad:
            raise Refused("part of the node cannot be read: %s" % "; ".join(bad))
        self._judge()
        return self

    def _check_conf_dir(self):
        if not os.path.isdir(self.conf_dir):
            raise Refused("no network config dir %s: without the configs nothing here can be "
                          "attributed to a network" % self.conf_dir)
        try:
            os.listdir(self.conf_dir)
        except OSError as exc:
            raise Refused("cannot list the network config dir %s: %s" % (self.conf_dir, exc.strerror)) \
                from None

    def _check_configs(self, loc):
        if not loc.networks():
            seen = ", ".join("%s (%s)" % (os.path.basename(p), clean(getattr(e, "msg", e)))
                             for p, e in loc.configs) or "no *.conflist, *.conf or *.json file"
            raise Refused("no network config loads in %s: %s" % (self.conf_dir, seen))

    def _check_cache(self):
        d = os.path.join(self.cache_dir, "results")
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            return      # no runtime cached anything here: only rule records can judge
        except OSError as exc:
            raise Refused("cannot look at the result cache %s: %s" % (d, exc.strerror)) from None
        import stat
        if not stat.S_ISDIR(st.st_mode):
            raise Refused("the result cache %s is not a directory (%s): the runtimes' view of their "
                          "pods cannot be read" % (d, "a symlink" if stat.S_ISLNK(st.st_mode) else
                                                   "a file"))
        problems = []
        from cnilib.ops import resultcache
        resultcache.read_cache(self.cache_dir, problems)
        if problems:
            raise Refused("the result cache cannot be read: %s" % "; ".join(problems))

    def cached_network(self, entry):
        """The NetworkList a cache entry recorded, or None."""
        from cnilib.ops import runner
        if entry.problem is not None or not entry.config:
            return None
        try:
            net = runner.list_from_bytes(entry.config, "the cached config of %s" % entry.path)
        except errors.CniError:
            return None
        return net if net.name == entry.network else None

    def _judge(self):
        from cnilib.ops.whois import Row
        by_netns = peers_by_netns(self.node.rows)
        nsdev = nsfs_dev()
        self.rows, self.keyless = [], []
        for r in self.node.rows:
            if not (r.network and r.cid and r.ifname):
                if r.leases or r.rules or r.cache or r.saved or r.tuning or r.veth:
                    self.keyless.append(r)
                continue
            recs = self.records.get(r.key, [])
            self.rows.append((r, judge(r, recs, by_netns, nsdev)))
        # records of keys no other layer names
        seen = {r.key for r, _v in self.rows}
        for key, recs in sorted(self.records.items()):
            if key in seen:
                continue
            r = Row(*key)
            self.rows.append((r, judge(r, recs, by_netns, nsdev)))

    def dead(self):
        return [(r, v) for r, v in self.rows if v.state == DEAD]

    def unknown(self):
        return [(r, v) for r, v in self.rows if v.state == UNKNOWN]

    def network(self, r):
        """(NetworkList, where it came from) to DEL row ``r`` with, or (None, why)."""
        for net in self.loc.networks():
            if net.name == r.network:
                return net, net.source
        if r.cache is not None:
            net = self.cached_network(r.cache)
            if net is not None:
                return net, "its cached config"
        return None, "network %s has no config in %s and no cached config" % (r.network, self.conf_dir)


def read_records(problems):
    """{(network, cid, ifname): [record]} of the suite's rule records (each
    with ``_kind`` and ``_path`` added), from the state dir."""
    from cnilib.base import fsutil
    from cnilib.firewall import naming, records
    top = os.path.join(paths.state_dir(), "nft")
    out = {}
    for kind in fsutil.try_listdir(top, problems):
        if kind.startswith(".") or not os.path.isdir(os.path.join(top, kind)):
            continue
        for rec in records.scan(kind):
            key = (rec["net"], rec["cid"], rec["if"])
            rec = dict(rec, _kind=kind, _path=os.path.join(top, kind, naming.attachment_hash(*key)))
            out.setdefault(key, []).append(rec)
    return out


# ====================================================================== acting

def default_bin_dirs():
    """$CNI_PATH, else the dirs of the running pycni, then the usual plugin dirs."""
    env = os.environ.get("CNI_PATH")
    if env:
        return [d for d in env.split(":") if d]
    out = []
    exe = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if os.path.basename(exe) == "pycni":
        out += [os.path.dirname(os.path.abspath(exe)), os.path.dirname(os.path.realpath(exe))]
    out += list(paths.BIN_DIRS)
    return list(dict.fromkeys(out))


def still_dead(view, r):
    """Look again just before the DEL (files only: a new ADD of the same key
    rewrites them): the verdict on ``r`` from a fresh read of its cache
    entry and records."""
    from cnilib.ops import resultcache
    fresh = r
    if r.cache is not None:
        now = [e for e in resultcache.read_cache(view.cache_dir, []) if e.path == r.cache.path]
        if not now or now[0].netns != r.cache.netns or now[0].container_id != r.cache.container_id:
            return Verdict(UNKNOWN, "its result cache entry changed since it was read")
    recs = read_records([]).get(r.key, [])
    v = judge(fresh, recs, peers_by_netns(view.node.rows), nsfs_dev())
    return v


def free(view, bin_dirs, log, out):
    """DEL every dead attachment; returns (freed [(row, items)], failed [(row, why)])."""
    from cnilib.ops import runner
    rn = runner.Runner(bin_dirs, view.cache_dir, stderr=sys.stderr)
    freed, failed = [], []
    for r, v in view.dead():
        net, where = view.network(r)
        name = "%s/%s/%s" % (clean(r.network), clean(r.cid), clean(r.ifname))
        if net is None:
            failed.append((r, where))
            out("  left  %s: %s" % (name, clean(where)))
            log.warning("%s", clean("gc --auto: left %s: %s" % (name, where)))
            continue
        again = still_dead(view, r)
        if again.state != DEAD:
            out("  kept  %s: it no longer looks dead (%s)" % (name, clean(again.why)))
            log.info("%s", clean("gc --auto: kept %s: %s" % (name, again.why)))
            continue
        att = runner.Attachment(r.cid, "", r.ifname,
                                r.cache.args if r.cache is not None else (),
                                r.cache.cap_args if r.cache is not None else None)
        items = things(r, view.records.get(r.key, []))
        try:
            rn.delete(net, att)
        except errors.CniError as exc:
            why = "DEL with %s failed: %s" % (where, exc.msg)
            failed.append((r, why))
            out("  FAILED %s: %s" % (name, clean(why)))
            log.warning("%s", clean("gc --auto: %s: %s" % (name, why)))
            continue
        freed.append((r, v, items))
        out("  freed %s: %s" % (name, clean(v.why)))
        log.info("%s", clean("gc --auto: DEL %s with %s: %s" % (name, where, v.why)))
        for layer, text in items:
            out("          %-7s %s" % (layer, clean(text)))
    for n in rn.notes:
        log.info("%s", clean("gc --auto: %s" % n))
    return freed, failed


def leftovers(view, freed):
    """[(row key, [(layer, text)])] of what a fresh read still finds of the
    attachments that were freed."""
    again = View(view.conf_dir, view.cache_dir)
    try:
        again.read(check=False)
    except Refused as exc:
        return [(r.key, [("node", "cannot be read again to check: %s" % exc)]) for r, _v, _i in freed]
    left = {}
    keys = {r.key for r, _v, _i in freed}
    for r, _v in again.rows:
        if r.key in keys:
            items = things(r, again.records.get(r.key, []))
            if items:
                left[r.key] = items
    return sorted(left.items())


# ====================================================================== command line

def _parser():
    import argparse
    p = argparse.ArgumentParser(
        prog="pycni gc --auto",
        description="Free the leases, veths, rule elements and records of attachments whose "
                    "network namespace is gone, for every network in the conf dir, each through a "
                    "DEL of its network's plugins.  Never guesses: an attachment with no record "
                    "of where its netns was is kept.")
    p.add_argument("--auto", action="store_true", required=True,
                   help="every network of the conf dir; judge each attachment by its netns")
    p.add_argument("--dry-run", action="store_true", help="show what would be freed, change nothing")
    p.add_argument("--conf-dir", default=None,
                   help="network configs ($NETCONFPATH, default %s)" % paths.CONF_DIR)
    p.add_argument("--cache-dir", default=None,
                   help="libcni result cache dir ($PYCNI_CACHE_DIR, default %s)" % paths.CACHE_DIR)
    p.add_argument("--bin-dir", default=None, metavar="DIR[:DIR]",
                   help="plugin dirs for the DELs ($CNI_PATH, default: pycni's own dir, %s)"
                        % ", ".join(paths.BIN_DIRS))
    p.add_argument("--allow-no-netns", action="store_true",
                   help="act even when no network namespace mount is visible (a node with no pod "
                        "at all, as after a reboot)")
    return p


def main(argv):
    from cnilib.base import log as logmod
    args = _parser().parse_args(argv)
    t0 = time.monotonic()
    conf_dir = args.conf_dir or os.environ.get("NETCONFPATH") or paths.CONF_DIR
    cache_dir = args.cache_dir or os.environ.get("PYCNI_CACHE_DIR") or paths.CACHE_DIR
    bins = [d for d in args.bin_dir.split(":") if d] if args.bin_dir else default_bin_dirs()
    log = logmod.Log("pycni")
    lines = []

    def out(line):
        lines.append(line)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    outcome, freed, failed, left = "ok", [], [], []
    trace = None
    view = View(conf_dir, cache_dir)
    try:
        view.read()
        dead, unknown = view.dead(), view.unknown()
        out("pycni gc --auto%s: %d network(s) in %s, cache %s: %d attachment(s), %d dead, %d kept "
            "as unknown" % (" (dry run: nothing changed)" if args.dry_run else "",
                            len(view.loc.networks()), clean(conf_dir), clean(cache_dir),
                            len(view.rows), len(dead), len(unknown)))
        if dead and not args.allow_no_netns:
            try:
                seen = netns_mounts()
            except OSError as exc:
                raise Refused("cannot read /proc/self/mountinfo: %s" % exc.strerror) from None
            if seen == 0:
                raise Refused(
                    "no network namespace mount is visible here (no nsfs net:[...] mount in "
                    "/proc/self/mountinfo), yet %d attachment(s) would be judged dead: either no "
                    "pod runs on this node or this mount namespace does not see the runtimes' "
                    "netns mounts; run it where /run/netns is the node's, or pass --allow-no-netns "
                    "if the node really has no pod" % len(dead))
        for r, v in unknown:
            items = things(r, view.records.get(r.key, []))
            if items:
                out("  keep  %s/%s/%s: %s (%s)" % (clean(r.network), clean(r.cid), clean(r.ifname),
                                                   clean(v.why), layers(items)))
        for n in view.notes:
            out("  note: %s" % clean(n))
        for r in view.keyless:
            out("  keep  %s/%s/%s: no layer names its whole key, so no DEL can name it (%s)" % (
                clean(r.network or "?"), clean(r.cid or "?"), clean(r.ifname or "?"),
                layers(things(r, []))))
        if args.dry_run:
            for r, v in dead:
                net, where = view.network(r)
                out("  would free %s/%s/%s: %s%s" % (clean(r.network), clean(r.cid), clean(r.ifname),
                                                     clean(v.why), "" if net is not None else
                                                     " (but %s)" % clean(where)))
                for layer, text in things(r, view.records.get(r.key, [])):
                    out("          %-7s %s" % (layer, clean(text)))
            outcome = "dry-run"
        elif dead:
            freed, failed = free(view, bins, log, out)
            left = leftovers(view, freed) if freed else []
            still = {(key, item) for key, items in left for item in items}
            for r, _v, items in freed:
                name = "/".join(clean(k) for k in r.key)
                for layer, text in items:
                    if (r.key, (layer, text)) not in still:
                        log.info("%s", clean("gc --auto: freed %s %s of %s" % (layer, text, name)))
            for key, items in left:
                name = "/".join(clean(k) for k in key)
                for layer, text in items:
                    out("  LEFT  %s %s of %s" % (layer, clean(text), name))
                    log.warning("%s", clean("gc --auto: still there after the DEL: %s %s of %s"
                                            % (layer, text, name)))
            if failed or left:
                outcome = "failed"
        n_items = sum(len(i) for _r, _v, i in freed)
        if not args.dry_run:
            out("pycni gc --auto: freed %d attachment(s) (%d item(s))%s%s" % (
                len(freed), n_items, ", %d failed" % len(failed) if failed else "",
                ", %d item(s) left" % sum(len(i) for _k, i in left) if left else ""))
        rc = 1 if outcome == "failed" else 0
    except Refused as exc:
        outcome = "refused"
        log.warning("%s", clean("gc --auto: refused: %s" % exc))
        sys.stderr.write("pycni gc --auto: REFUSED: %s\n" % clean(exc))
        rc = 2
    except Exception as exc:  # noqa: BLE001 - logged with its traceback, then reported
        import traceback
        trace = traceback.format_exc()
        outcome = "error"
        sys.stderr.write("pycni gc --auto: %s: %s (the traceback is in the suite's log)\n"
                         % (type(exc).__name__, clean(exc)))
        rc = 1
    log.flush("%s pycni[%d] GC-AUTO conf=%s freed=%d failed=%d %s %.1fms" % (
        logmod.stamp(), os.getpid(), clean(conf_dir)[:200], len(freed), len(failed), outcome,
        (time.monotonic() - t0) * 1000), trace=trace)
    return rc
