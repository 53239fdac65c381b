"""macspoofchk: drop frames from a container whose source MAC is not its own.

One nftables table per attachment, ``bridge pycni-spoof-<net hash>-<attachment
hash>``, with one prerouting filter chain (priority -300, as the reference)
holding ``iifname <host veth> ether saddr != <container MAC> drop``.  ADD
writes it in one transaction (``add table; flush table; ...``, as
cnilib.ipmasq does), DEL deletes the table by name: nothing to leak.

The reference keeps its rules in the shared ``bridge nat`` table (a
PREROUTING jump commented ``macspoofchk-<container ID>-<ifname>`` and two
chains ``cni-br-iface-<container ID>-<ifname>[-mac]``); DEL removes those
too, so an attachment made by the Go plugin is cleaned by this one.
"""

from cnilib import errors
from cnilib.firewall import naming, nft


def table_name(network, container_id, ifname):
    return naming.attachment_table("spoof", network, container_id, ifname)


def render_setup(network, container_id, ifname, host_veth, mac):
    t = "bridge " + table_name(network, container_id, ifname)
    comment = naming.attachment_comment("spoof", network, container_id, ifname)[:128]
    return ("add table %s { comment %s ; }\n"
            "flush table %s\n"
            "add chain %s prerouting { type filter hook prerouting priority -300 ; policy accept ; }\n"
            "add rule %s prerouting iifname %s ether saddr != %s drop\n"
            % (t, nft.quote(comment), t, t, t, nft.quote(host_veth), mac))


def setup(network, container_id, ifname, host_veth, mac):
    try:
        nft.apply(render_setup(network, container_id, ifname, host_veth, mac),
                  what="macspoofchk rules for %s" % container_id)
    except errors.CniError as exc:
        raise errors.Internal("failed to setup spoof-check: %s" % exc.msg, exc.details) from exc


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
    t = "bridge " + table_name(network, container_id, ifname)
    script = "add table %s\ndelete table %s\n" % (t, t) + _go_deletes(container_id, ifname)
    try:
        nft.apply(script, what="macspoofchk teardown for %s" % container_id)
    except errors.CniError as exc:
        if nft.available():
            raise errors.Internal("failed to teardown spoof-check: %s" % exc.msg, exc.details) from exc
        log.debug("macspoofchk teardown skipped: nft is not usable")


def gc(network, valid, log):
    keep = {table_name(network, cid, ifn) for cid, ifn in valid}
    stale = [(f, n) for f, n in nft.tables(naming.network_table_prefix("spoof", network))
             if n not in keep]
    if stale:
        nft.apply("".join("add table %s %s\ndelete table %s %s\n" % (f, n, f, n) for f, n in stale),
                  what="macspoofchk gc of network %s" % network)
        for _, n in stale:
            log.info("gc: removed macspoofchk table %s", n)
    return [n for _, n in stale]
