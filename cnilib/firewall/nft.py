"""nftables through the ``nft`` binary: the rules with expressions.

A script passed to ``nft -f -`` is applied atomically: all of it or none.
The idempotent idiom used by callers (cnilib.firewall.shared skeletons,
portmap's per-attachment chain):
  add chain X; flush chain X; add rule X ...   -> X holds exactly what follows
Set elements and lookups go over netlink instead (cnilib.kernel.nftables.NfTables):
the nft binary reads the tables into its cache first, which grows with
what the node holds.
"""

from cnilib.base import errors, proc

# Cached for the process: one plugin exec, or one agent worker, forked per
# request from an agent that never asks (cnilib.agent.server), so the answer
# never outlives the request that probed it.
_available = None


def available():
    """True when the ``nft`` binary is installed and the kernel answers
    nf_tables over netlink (a probe, not an exec of nft)."""
    global _available
    if _available is None:
        from cnilib.kernel import nftables
        _available = proc.which("nft") is not None and nftables.nftables_available()
    return _available


def apply(script, what="nftables transaction"):
    """Run ``script`` as one transaction; raise CniError naming the failure."""
    try:
        r = proc.run(["nft", "-f", "-"], stdin=script.encode(), timeout=30)
    except FileNotFoundError as exc:
        raise errors.Internal("%s failed: the nft binary is not installed" % what,
                              "install nftables or choose the iptables backend") from exc
    except (OSError, TimeoutError) as exc:
        raise errors.Internal("%s failed: %s" % (what, exc)) from exc
    if r.rc != 0:
        raise errors.Internal("%s failed: nft exit status %d: %s" % (what, r.rc, r.err_text(600)),
                              "script:\n" + script[:4000])
    return r


def list_json(*what):
    """``nft -j list <what...>`` parsed; [] when the object does not exist."""
    from cnilib.base import jsonio
    try:
        r = proc.run(["nft", "-j", "list"] + list(what), timeout=30)
    except (OSError, TimeoutError):
        return []
    if r.rc != 0:
        return []
    try:
        return jsonio.loads(r.out).get("nftables", [])
    except (ValueError, AttributeError):
        return []


def tables(prefix=""):
    """[(family, name)] of tables whose name starts with ``prefix`` (one
    netlink dump; [] when nf_tables does not answer)."""
    from cnilib.kernel import nftables
    try:
        with nftables.NfTables() as nf:
            return [(f, n) for f, n in nf.tables() if n.startswith(prefix)]
    except OSError:
        return []

