"""tuning: chained after the main plugin, it adjusts the container interface.

ADD writes the sysctls and link attributes in the container netns (saving
the attributes it replaces) and passes prevResult on, with the new MAC in
it; DEL puts the saved attributes back; CHECK compares; GC forgets saved
values of attachments that are gone.  The work is in cnilib.tuning.
"""

from cnilib import tuning
from cnilib.base import errors, failpoint, paths
from cnilib.cni import skel


def _prev_result(a):
    prev = a.conf.get("prevResult")
    if not prev:
        raise errors.InvalidConfig(
            "Required prevResult missing",
            "tuning must be chained after a plugin that creates the interface (e.g. bridge)")
    from cnilib.cni import invoke
    return invoke.parse_result(prev, a.version, "prevResult")


def _link_values(s):
    return {"mac": s.mac, "promisc": True if s.promisc else None, "mtu": s.mtu,
            "allmulti": s.allmulti, "txQLen": s.txqlen}


def cmd_add(a):
    tuning.check_duplicate_sysctls(a.stdin)
    s = tuning.settings(a)
    names = {k: tuning.sysctl_name(k, a.ifname) for k in s.sysctl}
    tuning.check_allowlist(list(s.sysctl))
    result = _prev_result(a)
    from cnilib.kernel import netns, sysctl
    written, before, created = [], None, None
    try:
        with netns.Enter(a.netns_fd):
            for key, value in s.sysctl.items():
                old = sysctl.read(names[key])
                _write_sysctl(names[key], key, value)
                written.append((names[key], old))
            failpoint.hit("tuning-after-sysctls")
            if s.link_changes():
                from cnilib.kernel import netlink
                with netlink.Netlink() as nl:
                    link = _container_link(nl, a)
                    before = tuning.current_values(link, s)
                    existed = tuning.load_backup(s.data_dir, a.name, a.container_id, a.ifname,
                                                 a.log)[1] == "ours"
                    failpoint.hit("tuning-before-state-write")
                    tuning.save_backup(a, s, before)
                    created = not existed
                    failpoint.hit("tuning-after-state-write")
                    tuning.set_link(nl, link, _link_values(s), a.ifname)
                    failpoint.hit("tuning-after-link")
    except BaseException:
        _undo(a, s, written, before, created)
        raise
    if s.mac:
        _update_mac(result, a, s.mac)
    return result


def _write_sysctl(name, key, value):
    from cnilib.kernel import sysctl
    try:
        sysctl.write(name, value)
    except errors.CniError as exc:
        raise errors.InvalidConfig("tuning cannot set sysctl %s=%s in the container: %s"
                                   % (key, value, exc.msg), exc.details) from exc


def _container_link(nl, a):
    from cnilib.kernel.link import link_get
    link = link_get(nl, a.ifname)
    if link is None:
        raise errors.Internal("tuning: interface %s not found in the container netns %s"
                              % (a.ifname, a.netns),
                              "tuning adjusts the interface a previous plugin created; "
                              "chain it after bridge (or another interface plugin)")
    return link


def _undo(a, s, written, before, created):
    """A failed ADD leaves the container as it found it."""
    from cnilib.kernel import netns, sysctl
    try:
        with netns.Enter(a.netns_fd):
            for name, old in reversed(written):
                if old is not None:
                    try:
                        sysctl.write(name, old)
                    except errors.CniError as exc:
                        a.log.warning("tuning could not reset sysctl %s: %s", name, exc.msg)
            if before:
                from cnilib.kernel import netlink
                from cnilib.kernel.link import link_get
                with netlink.Netlink() as nl:
                    link = link_get(nl, a.ifname)
                    if link is not None:
                        tuning.restore_link(nl, link, before, a.ifname, a.log)
        if created:
            tuning.remove_backup(s.data_dir, a.name, a.container_id, a.ifname, log=a.log)
    except Exception as exc:  # the original error matters more
        a.log.warning("tuning could not undo a failed ADD: %s", exc)


def _update_mac(result, a, mac):
    """The result names the new MAC of CNI_IFNAME (podman reads it from there)."""
    for iface in result.interfaces:
        if iface.get("name") == a.ifname and iface.get("sandbox", a.netns) == a.netns:
            iface["mac"] = mac


def cmd_del(a):
    # DEL of nothing succeeds whatever the config: only dataDir is read, a
    # key that does not validate is left at its default, and a dataDir no
    # system call can take holds nothing of ours
    from cnilib.cni import validate
    conf, _ = validate.validate_for_del("tuning", a.conf, a.log)
    data_dir = conf.get("dataDir") or paths.TUNING_DIR
    try:
        saved, found = tuning.load_backup(data_dir, a.name, a.container_id, a.ifname, a.log)
    except errors.InvalidConfig as exc:
        a.log.warning("DEL: nothing saved under an unusable dataDir: %s", exc.msg)
        return None
    if saved is None:
        _drop_unreadable(a, data_dir)
        return None
    if a.netns_fd is not None:
        from cnilib.kernel import netlink, netns
        from cnilib.kernel.link import link_get
        with netns.Enter(a.netns_fd):
            with netlink.Netlink() as nl:
                link = link_get(nl, a.ifname)
        if link is not None and not _another_s(a, link):
            with netlink.Netlink.in_netns(a.netns_fd) as nl:
                tuning.restore_link(nl, link, saved, a.ifname, a.log)
    failpoint.hit("tuning-before-state-remove")
    tuning.remove_backup(data_dir, a.name, a.container_id, a.ifname, legacy=found == "legacy", log=a.log)
    return None


def _another_s(a, link):
    """True when ``link`` is a veth whose host end the suite's bridge tagged
    for another attachment: the netns path was reused by a new sandbox, and
    the old attachment's values must not go onto the new pod's interface."""
    from cnilib.firewall import naming
    from cnilib.kernel import netlink
    from cnilib.kernel.link import veth_peer
    with netlink.Netlink() as hnl:
        peer = veth_peer(hnl, link, a.netns_fd)
    if peer is None or not naming.veth_alias_other(peer.alias, a.name, a.container_id, a.ifname):
        return False
    a.log.warning("%s in %s belongs to another attachment (%s): its saved values are not restored",
                  a.ifname, a.netns, peer.alias)
    return True


def _drop_unreadable(a, data_dir):
    """A record that exists but cannot be read (empty, torn, not JSON, a
    link: not followed) has nothing to restore; left in place it would
    outlive the container.  Removing a link removes the link itself."""
    for which in tuning.backup_files(data_dir, a.name, a.container_id, a.ifname):
        legacy = which == "legacy"
        a.log.warning("dropping the unreadable tuning record %s: nothing to restore",
                      tuning.legacy_backup_path(data_dir, a.container_id, a.ifname) if legacy
                      else tuning.backup_path(data_dir, a.name, a.container_id, a.ifname))
        tuning.remove_backup(data_dir, a.name, a.container_id, a.ifname, legacy=legacy, log=a.log)


def cmd_check(a):
    tuning.check_duplicate_sysctls(a.stdin)
    s = tuning.settings(a)
    names = {k: tuning.sysctl_name(k, a.ifname) for k in s.sysctl}
    _prev_result(a)
    from cnilib.kernel import netlink, netns, sysctl
    from cnilib.kernel.link import link_get
    with netns.Enter(a.netns_fd):
        for key, want in s.sysctl.items():
            have = sysctl.read(names[key])
            if have != want.strip():
                raise errors.Internal("tuning CHECK: sysctl %s is %r, configured %r" % (key, have, want),
                                      "something changed it after ADD")
        with netlink.Netlink() as nl:
            link = link_get(nl, a.ifname)
            if link is None:
                raise errors.Internal("tuning CHECK: cannot find container link %s" % a.ifname)
            tuning.check_link(link, s, a.ifname)
    return None


def cmd_gc(a):
    data_dir = a.conf.get("dataDir")
    data_dir = data_dir if isinstance(data_dir, str) and data_dir else paths.TUNING_DIR
    from cnilib.cni.args import valid_attachments
    keep = valid_attachments(a.conf)    # either spelling of the key, entries checked
    if keep is None:
        # no list is not an empty list: forgetting every record would lose
        # the attributes DEL must put back on live attachments
        a.log.warning("GC without cni.dev/valid-attachments: every saved record kept")
        return None
    tuning.gc(data_dir, a.name, keep, a.log)
    return None


PLUGIN = skel.Plugin("tuning", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     cni_args=("MAC",))
