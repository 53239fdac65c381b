"""macspoofchk: drop frames from a container whose source MAC is not its own.

One table for every attachment, ``bridge pycni-spoof``, written once:

    set ports    { ifname }               the host veths under the check
    set allowed  { ifname . ether_addr }  each veth with its container's MAC
    chain prerouting  filter, priority -300 (as the reference):
        iifname @ports iifname . ether saddr != @allowed drop

An attachment is one element in each set, added and removed over netlink
with its record (cnilib.firewall.shared), so nothing is listed and nothing
leaks.  The previous design's table per attachment (``bridge
pycni-spoof-<net hash>-<attachment hash>``) is removed by DEL and GC.

The reference keeps its rules in the shared ``bridge nat`` table (a
PREROUTING jump commented ``macspoofchk-<container ID>-<ifname>`` and two
chains ``cni-br-iface-<container ID>-<ifname>[-mac]``); DEL removes those
too, after a netlink lookup says they exist, so an attachment made by the
Go plugin is cleaned by this one.
"""

from cnilib.base import errors
from cnilib.firewall import nft, shared

TABLE_NAME = "pycni-spoof"
T = "bridge " + TABLE_NAME


def render_skeleton():
    return ('add table %s { comment "pycni macspoofchk: frames from a port must carry its '
            'container\'s MAC" ; }\n'
            "add set %s ports { type ifname ; }\n"
            "add set %s allowed { type ifname . ether_addr ; }\n"
            "add chain %s prerouting { type filter hook prerouting priority -300 ; policy accept ; }\n"
            "flush chain %s prerouting\n"
            "add rule %s prerouting iifname @ports iifname . ether saddr != @allowed drop\n"
            % ((T,) * 6))


TABLE = shared.Table("spoof", "bridge", TABLE_NAME, "macspoofchk", {"prerouting": 1}, render_skeleton,
                     legacy="spoof")


def elements(host_veth, mac):
    mac = mac.lower()
    return [shared.Elem("ports", shared.ifname_key(host_veth), None, host_veth),
            shared.Elem("allowed", shared.ifname_mac_key(host_veth, mac), None,
                        "%s . %s" % (host_veth, mac))]


def setup(network, container_id, ifname, host_veth, mac, log, netns=None):
    try:
        shared.attach(TABLE, (network, container_id, ifname), elements(host_veth, mac), log,
                      data={"veth": host_veth, "mac": mac}, netns=netns)
    except errors.CniError as exc:
        # the cause's code (a refused state path is 5), with the reference's words
        raise errors.from_code(exc.code, "failed to setup spoof-check: %s" % exc.msg, exc.details) from exc


def _go_deletes(container_id, ifname):
    """Script lines removing the reference's rules for (container ID, ifname)."""
    ref = "%s-%s" % (container_id, ifname)
    chains = {}
    out = []
    for item in nft.list_json("table", "bridge", "nat"):
        r = item.get("rule")
        if r and r.get("chain") == "PREROUTING" and r.get("comment") == "macspoofchk-" + ref:
            out.append("delete rule bridge nat PREROUTING handle %d\n" % r["handle"])
        c = item.get("chain")
        if c:
            chains[c.get("name")] = True
    for name in ("cni-br-iface-" + ref, "cni-br-iface-%s-mac" % ref):
        if name in chains:
            out.append("flush chain bridge nat %s\ndelete chain bridge nat %s\n" % (name, name))
    return "".join(out)


def teardown(network, container_id, ifname, log):
    from cnilib.kernel import nftables
    try:
        with nftables.NfTables() as nf:
            shared.detach(TABLE, (network, container_id, ifname), log, nf=nf)
            go = nf.chain_exists("bridge", "nat", "cni-br-iface-%s-%s" % (container_id, ifname))
    except OSError as exc:
        log.debug("macspoofchk teardown skipped: nf_tables is not usable (%s)", exc)
        return
    except errors.CniError as exc:
        raise errors.Internal("failed to teardown spoof-check: %s" % exc.msg, exc.details) from exc
    script = _go_deletes(container_id, ifname) if go else ""
    if script:
        try:
            nft.apply(script, what="macspoofchk teardown for %s" % container_id)
        except errors.CniError as exc:
            raise errors.Internal("failed to teardown spoof-check: %s" % exc.msg, exc.details) from exc


def gc(network, valid, log):
    if not nft.available():
        return []
    return shared.gc(TABLE, network, valid, log)
