"""``pycni doctor``: the check table (``CHECKS``, the single list of ids,
titles and functions), running it, and the command line.  What each check
looks at is described in the package docstring (cnilib.ops.doctor)."""

import os
import sys

from cnilib.base import errors, paths
from cnilib.ops import nodestate
from cnilib.ops.doctor import (
    config_checks,
    fabric_checks,
    iptables_checks,
    netmgr_checks,
    node_checks,
    runtime_checks,
    state_checks,
)
from cnilib.ops.doctor.bundle import write_bundle
from cnilib.ops.doctor.context import Context
from cnilib.ops.doctor.report import Check, render, report

CHECKS = (
    ("conflists", "network configs in load order", config_checks.check_conflists),
    ("plugins", "plugin binaries", config_checks.check_plugins),
    ("flannel-binary", "the flannel the runtime runs", runtime_checks.check_flannel_binary),
    ("plugin-start", "every plugin starts and speaks the configs' CNI version",
     runtime_checks.check_plugin_start),
    ("subnet-env", "flannel subnet.env", config_checks.check_subnet_env),
    ("bridge-address", "bridge gateway address", node_checks.check_bridge_address),
    ("ip-forward", "IP forwarding", node_checks.check_ip_forward),
    ("rp-filter", "reverse-path filter", node_checks.check_rp_filter),
    ("br-netfilter", "bridge netfilter", node_checks.check_br_netfilter),
    ("link-managers", "NetworkManager / systemd-networkd leave our links alone",
     netmgr_checks.check_link_managers),
    ("table-sizes", "neighbour and conntrack tables vs the node's size", node_checks.check_table_sizes),
    ("forward-policy", "pod traffic through FORWARD", fabric_checks.check_forward_policy),
    ("iptables-backends", "iptables-legacy vs iptables-nft", iptables_checks.check_iptables_backends),
    ("vxlan-port", "VXLAN udp port through the firewall", fabric_checks.check_vxlan_port),
    ("vxlan-local", "flannel.1 local address vs the route to the peers", fabric_checks.check_vxlan_local),
    ("vxlan-csum", "VXLAN checksum offload vs the kernel", node_checks.check_vxlan_csum),
    ("vtep-mac", "duplicate VTEP MACs", fabric_checks.check_vtep_mac),
    ("public-ip", "public IPs of the nodes", fabric_checks.check_public_ip),
    ("node-spec", "the node as the cluster sees it (--node-spec)", fabric_checks.check_node_spec),
    ("mtu", "MTU chain", node_checks.check_mtu),
    ("ipam-leaks", "leaked IPAM reservations", state_checks.check_ipam_leaks),
    ("orphan-veths", "orphan host veths", state_checks.check_orphan_veths),
    ("leftover-rules", "leftover portmap/masquerade/firewall rules", state_checks.check_leftover_rules),
    ("stale-records", "records of gone attachments", state_checks.check_stale_records),
    ("state-files", "empty or corrupt state files", state_checks.check_state_files),
)
CHECK_IDS = tuple(c[0] for c in CHECKS)

# checks that judge the firewall rules: without them they cannot pass
RULE_CHECKS = ("forward-policy", "iptables-backends", "vxlan-port", "leftover-rules")


def run_checks(ctx, only=None):
    out = []
    unread = "; ".join(v for k, v in ctx.node.raw_rules.get("unread", {}).items() if k in ("nft", 4))
    for cid, title, fn in CHECKS:
        if only and cid not in only:
            continue
        c = Check(cid, title)
        try:
            fn(ctx, c)
            if unread and cid in RULE_CHECKS and c.status in ("PASS", "WARN"):
                c.status, c.summary = "SKIP", "could not read the firewall rules (run as root)"
                c.error = unread
        except Exception as exc:  # a check that breaks must not hide the others
            c.status, c.summary = "SKIP", "could not run: %s" % exc
            c.error = "%s: %s" % (type(exc).__name__, exc)
        if c.error and c.status == "SKIP" and not c.summary:
            c.summary = "could not run: %s" % c.error
        out.append(c)
    return out


def _parser():
    import argparse
    p = argparse.ArgumentParser(
        prog="pycni doctor",
        description="Check this node's CNI setup (the current network namespace): each check "
                    "PASS / WARN / FAIL / SKIP with its evidence and the command that fixes it. "
                    "Reads only, unless --fix.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="checks: %s\n\nExit status: 0 healthy, 1 a check failed, 2 could not run."
               % ", ".join(CHECK_IDS))
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema pycni-doctor/1)")
    p.add_argument("--bundle", metavar="DIR", help="also write a bug-report bundle into DIR")
    p.add_argument("--only", metavar="ID[,ID]", help="run only these checks")
    p.add_argument("--fix", action="store_true",
                   help="apply the fix lines the checks mark safe (one command, local, idempotent, "
                        "touching only what the check named), each shown and asked for first; then "
                        "check again")
    p.add_argument("--yes", action="store_true", help="with --fix: apply without asking")
    p.add_argument("--nodes", metavar="FILE", help="the fabric's node list (pycni fabric --nodes)")
    p.add_argument("--annotations", metavar="FILE",
                   help="node annotations as JSON (kubectl get nodes -o json, "
                        "or {node: {annotation: value}})")
    p.add_argument("--node", metavar="NAME", help="this node's name in --nodes / --annotations / --node-spec")
    p.add_argument("--node-spec", metavar="FILE",
                   help="this node as the cluster sees it (kubectl get node NAME -o json): podCIDR and "
                        "flannel's annotations against subnet.env, flannel.1 and the addresses here")
    p.add_argument("--kernel-version", metavar="VERSION",
                   help="judge the kernel-dependent checks (vxlan-csum) for this kernel release "
                        "instead of the running one")
    p.add_argument("--neigh-gc-thresh3", metavar="N", type=int,
                   help="net.ipv4.neigh.default.gc_thresh3 to judge (machine-wide: absent in a "
                        "container's netns)")
    p.add_argument("--conntrack-max", metavar="N", type=int,
                   help="net.netfilter.nf_conntrack_max to judge (machine-wide: read-only in a "
                        "container's netns)")
    p.add_argument("--log", metavar="FILE", help="the suite's log for the bundle (default $PYCNI_LOG, "
                                                 "%s)" % paths.LOG_FILE)
    nodestate.add_location_options(p, bin_dirs=True)
    return p


def main(argv):
    args = _parser().parse_args(argv)
    only = None
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in only if x not in CHECK_IDS]
        if unknown:
            sys.stderr.write("pycni doctor: unknown check %s; known: %s\n" % (", ".join(unknown),
                                                                            ", ".join(CHECK_IDS)))
            return 2
    if args.fix or args.yes:
        return _fix(args, only)
    try:
        loc = nodestate.locations_from_args(args)
        ctx = Context(args, loc)
    except OSError as exc:
        sys.stderr.write("pycni doctor: cannot read this node: %s (run it as root, in the node's "
                         "network namespace)\n" % exc)
        return 2
    try:
        checks = run_checks(ctx, only)
        rep = report(checks, loc, ctx.problems)
        if args.bundle:
            try:
                where, written = write_bundle(args.bundle, ctx, checks, rep)
            except (OSError, errors.CniError) as exc:
                sys.stderr.write("pycni doctor: cannot write the bundle to %s: %s\n" % (args.bundle, exc))
                return 2
    finally:
        ctx.close()
    if args.json:
        import json
        sys.stdout.write(json.dumps(rep, indent=2) + "\n")
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        sys.stdout.write(render(rep, color))
    if args.bundle:     # stdout holds only the report with --json
        (sys.stderr if args.json else sys.stdout).write("bundle: %d files in %s\n" % (len(written), where))
    return rep["exit"]



def _fix(args, only):
    """--fix: cnilib.ops.doctor.fix, with a fresh look at the node for each round."""
    if not args.fix or args.json or args.bundle:
        sys.stderr.write("pycni doctor: %s\n" % ("--yes goes with --fix" if not args.fix else
                                                 "--fix shows and asks; it takes no --json or --bundle"))
        return 2

    def check_node():
        loc = nodestate.locations_from_args(args)
        ctx = Context(args, loc)
        try:
            checks = run_checks(ctx, only)
            return checks, report(checks, loc, ctx.problems)
        finally:
            ctx.close()
    from cnilib.ops.doctor import fix
    try:
        return fix.main(args, check_node)
    except OSError as exc:
        sys.stderr.write("pycni doctor: cannot read this node: %s (run it as root, in the node's "
                         "network namespace)\n" % exc)
        return 2
