"""flannel: turn the node's flannel lease into a bridge + host-local attachment.

ADD waits (bounded) for subnet.env, builds the delegate config, saves it to
``<dataDir>/<container id>`` and runs the delegate.  DEL replays the saved
config; without a usable one it rebuilds it, or releases the lease and the
veth directly; it succeeds whatever the config, as upstream's does.  CHECK
runs the delegate's CHECK with the saved config.  GC and STATUS are
forwarded to delegates that speak 1.1.0.  The work lives in cnilib.flannel.
"""

from cnilib import flannel
from cnilib.base import errors, failpoint, fsutil
from cnilib.cni import invoke, skel, validate


def _conf(a):
    """(validated conf, raw conf): defaults come from the first, the delegate
    is built from the second so that absent keys stay absent, as in Go.  The
    ``delegate`` block is checked where a delegate is built from it, so a DEL
    replaying a saved config never fails on it."""
    conf = validate.validate("flannel", a.conf)
    fsutil.check_path(conf["dataDir"], "dataDir")
    fsutil.check_path(conf["subnetFile"], "subnetFile")
    return conf, a.conf


def cmd_add(a):
    conf, raw = _conf(a)
    flannel.check_delegate_block(raw)
    env = flannel.wait_subnet_env(conf["subnetFile"], conf["subnetFileWait"], a.log)
    delegate = flannel.build_delegate(raw, env)
    data = flannel.encode(delegate)
    a.log.debug("delegate netconf: %s", data.decode())
    data_dir = conf["dataDir"]
    existed = flannel.saved_exists(data_dir, a.container_id)
    failpoint.hit("flannel-before-save")
    path = flannel.save(data_dir, a.container_id, data)
    failpoint.hit("flannel-after-save")
    try:
        result = invoke.delegate("ADD", delegate["type"], data, a)
    except BaseException:
        # the delegate undid its own partial work; drop the file unless it
        # belongs to an earlier attachment of this container ID
        if not existed:
            _remove(a, data_dir, path)
        raise
    try:
        failpoint.hit("flannel-after-delegate-add")
    except BaseException:
        _undo(a, delegate["type"], data, data_dir, path)
        raise
    return result


def _undo(a, type_name, data, data_dir, path):
    """ADD failed after the delegate succeeded: DEL it, then drop the file."""
    try:
        invoke.delegate("DEL", type_name, data, a)
    except errors.CniError as exc:
        a.log.warning("undoing ADD: %s DEL failed, keeping %s for the runtime's DEL: %s",
                      type_name, path, exc.msg)
        return
    _remove(a, data_dir, path)


def _remove(a, data_dir, path):
    try:
        flannel.remove_saved(data_dir, a.container_id)
    except (OSError, errors.CniError) as exc:
        a.log.warning("cannot remove %s: %s", path, getattr(exc, "strerror", None) or exc)


def _del_conf(a):
    """(conf, raw) as DEL reads them: DEL of nothing succeeds whatever the
    config (upstream flannel's does too), so keys that do not validate are
    left out (conf has their defaults), and an unusable dataDir or
    subnetFile is None: nothing was saved in the first, the second cannot
    be read."""
    conf, raw = validate.validate_for_del("flannel", a.conf, a.log)
    for key in ("dataDir", "subnetFile"):
        try:
            fsutil.check_path(conf[key], key)
        except errors.InvalidConfig as exc:
            a.log.warning("DEL: %s", exc.msg)
            conf[key] = None
    return conf, raw


def cmd_del(a):
    conf, raw = _del_conf(a)
    if conf["dataDir"] is None:
        saved = flannel.Saved(None, "missing")
    else:
        saved = flannel.load_saved(conf["dataDir"], a.container_id)
    if saved.state == "ok":
        invoke.delegate("DEL", saved.conf["type"], saved.data, a)
    else:
        if saved.state != "missing":
            a.log.warning("saved delegate config %s is %s%s: rebuilding it", saved.path, saved.state,
                          " (%s)" % saved.why if saved.why else "")
        _del_unsaved(a, conf, raw)
    failpoint.hit("flannel-del-before-remove")
    if saved.state != "missing":
        _remove(a, conf["dataDir"], saved.path)
    return None


def _del_unsaved(a, conf, raw):
    """DEL without a usable saved config: the delegate config rebuilt from
    subnet.env; without subnet.env, or with a config ADD would refuse (a
    ``delegate`` holding ``ipam``), the lease released through the IPAM
    plugin and the veth removed by its alias; with an IPAM block no plugin
    can take, the veth alone."""
    try:
        if conf["subnetFile"] is None:
            raise flannel.SubnetEnvError("unusable", "subnetFile is not a usable path")
        env = flannel.load_subnet_env(conf["subnetFile"])
    except flannel.SubnetEnvError as exc:
        problem = exc.msg
    else:
        try:
            delegate = flannel.build_delegate(raw, env)
        except errors.InvalidConfig as exc:
            problem = "a config ADD refuses (%s)" % exc.msg
        else:
            invoke.delegate("DEL", delegate["type"], flannel.encode(delegate), a)
            return
    try:
        _release_without_subnet_env(a, conf, raw, problem)
    except errors.InvalidConfig as exc:
        a.log.warning("no lease released: %s", exc.msg)
        removed = flannel.remove_attachment_links(a, conf["name"])
        if removed:
            a.log.info("removed %s", ", ".join(removed))


def _release_without_subnet_env(a, conf, raw, problem):
    """No saved config and no subnet.env: release the lease through the IPAM
    plugin (host-local releases by container ID + ifname) and delete the veth."""
    release = flannel.release_config(raw)
    a.log.info("no saved config and %s: releasing through %s and removing the veth",
               problem, release["ipam"]["type"])
    invoke.delegate("DEL", release["ipam"]["type"], flannel.encode(release), a)
    removed = flannel.remove_attachment_links(a, conf["name"])
    if removed:
        a.log.info("removed %s", ", ".join(removed))


def cmd_check(a):
    conf, raw = _conf(a)
    saved = flannel.load_saved(conf["dataDir"], a.container_id)
    if saved.state != "ok":
        raise errors.UnknownContainer(
            "no usable saved delegate config for container %s: %s is %s"
            % (a.container_id, saved.path, saved.state),
            "ADD saves it before running the delegate; without it the attachment was never "
            "made or its state was lost (DEL still cleans up)")
    try:
        env = flannel.load_subnet_env(conf["subnetFile"])
    except flannel.SubnetEnvError as exc:
        a.log.info("not comparing with subnet.env: %s", exc.msg)
    else:
        was, now = flannel.subnets_of(saved.conf), env.subnets()
        if sorted(was) != sorted(now):
            raise errors.Internal(
                "the node's flannel subnet changed since ADD: the attachment uses %s, %s now says %s"
                % (", ".join(was) or "none", conf["subnetFile"], ", ".join(now)),
                "the pod keeps an address outside this node's lease; recreate the pod")
    delegate = dict(saved.conf)
    delegate["cniVersion"] = a.version
    if raw.get("prevResult") is not None:
        delegate["prevResult"] = raw["prevResult"]
    invoke.delegate("CHECK", delegate["type"], flannel.encode(delegate), a)
    return None


def _current_delegate(a, raw, conf):
    """The delegate config for GC: from subnet.env, else a stand-in."""
    try:
        env = flannel.load_subnet_env(conf["subnetFile"])
    except flannel.SubnetEnvError:
        release = flannel.release_config(raw)
        delegate = dict(raw.get("delegate") or {})
        delegate.update(name=release["name"], ipam=release["ipam"], cniVersion=a.version)
        delegate.setdefault("type", "bridge")
        return delegate
    return flannel.build_delegate(raw, env)


def cmd_gc(a):
    conf, raw = _conf(a)
    valid = flannel.valid_attachments(raw)
    delegate = _current_delegate(a, raw, conf)
    if flannel.delegate_supports(delegate["type"], a, a.version):
        for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
            if key in raw:
                delegate[key] = raw[key]
        invoke.delegate("GC", delegate["type"], flannel.encode(delegate), a)
    else:
        a.log.info("%s does not speak %s: GC not forwarded", delegate["type"], a.version)
    if valid is None:
        a.log.warning("GC without cni.dev/valid-attachments: keeping every saved file")
        return None
    gone = flannel.sweep(conf["dataDir"], valid, conf["name"], a.log)
    if gone:
        a.log.info("GC removed saved configs of %d stale attachments: %s", len(gone), " ".join(gone[:20]))
    return None


def cmd_status(a):
    conf, raw = _conf(a)
    try:
        env = flannel.load_subnet_env(conf["subnetFile"])
    except flannel.SubnetEnvError as exc:
        raise flannel.subnet_env_error(exc, errors.NotAvailable) from None
    delegate = flannel.build_delegate(raw, env)
    if flannel.delegate_supports(delegate["type"], a, a.version):
        invoke.delegate("STATUS", delegate["type"], flannel.encode(delegate), a)
    return None


PLUGIN = skel.Plugin("flannel", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     status=cmd_status, makes_ifname=True)
