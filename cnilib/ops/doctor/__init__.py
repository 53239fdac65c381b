"""``pycni doctor``: check this node's CNI setup, with the fix for each failure.

The seed article's operator works through the ways a flannel network
breaks, one tool at a time: ``iptables -P FORWARD ACCEPT`` after Docker set
DROP, a firewall answering VXLAN with "admin prohibited filter", cni0 keeping
an address from an older lease, a multi-homed host whose flannel.1 sends
from its default-route address, every node announcing 10.0.2.15.  doctor
runs those checks (user-pain.md section (b)) against the current network
namespace and prints, for each, PASS / WARN / FAIL / SKIP, the evidence, and
the command that fixes it.  It reads only: it never writes, creates, loads
or deletes anything (``--bundle`` writes only into a fresh private directory;
the plugins it runs for VERSION run with their log and agent off).

Checks (ids are stable; ``--only id,id`` runs some):

  conflists        the conf dir in load order: the network a runtime loads
                   (the first file), duplicate names, overlapping subnets,
                   files that do not parse, a flannel network shadowed
  plugins          every plugin type the configs name (flannel's delegate
                   and IPAM included) is an executable in the bin dirs
  flannel-binary   the first flannel on the runtime's plugin path (containerd's
                   bin_dir, CRI-O's plugin_dirs, podman's, or --bin-dir) is
                   pycni's, not a Go binary kube-flannel copied over it
  plugin-start     every plugin the configs name or imply (containerd's own
                   loopback too) answers VERSION on this node and speaks the
                   configs' cniVersion; the loader's words when it cannot start
  subnet-env       flannel's subnet.env present, complete, SUBNET inside NETWORK
  bridge-address   cni0 (each CNI bridge) holds the gateway of its subnet and
                   no address from another subnet
  ip-forward       net.ipv4.ip_forward (and IPv6 forwarding for v6 networks)
  rp-filter        strict reverse-path filtering where the pod path is asymmetric
  br-netfilter     net.bridge.bridge-nf-call-ip{,6}tables (SKIP where the kernel lacks them)
  link-managers    NetworkManager and systemd-networkd leave cni0, flannel.1 and
                   the veths alone (their config files; nmcli/networkctl when running)
  table-sizes      gc_thresh3 of the neighbour table >= pods + nodes; conntrack
                   entries well below nf_conntrack_max (--neigh-gc-thresh3,
                   --conntrack-max where the limits are not visible)
  forward-policy   a pod-to-pod packet through FORWARD (iptables and nftables):
                   policy DROP or a DROP/REJECT rule with no accept for the pod network
  iptables-backends rules in both iptables-legacy and iptables-nft (WARN), and
                   pod or VXLAN packets the two judge differently (FAIL)
  vxlan-port       a VXLAN datagram from each peer (UDP 8472) through INPUT and OUTPUT
  vxlan-local      flannel.1's local address is on the interface that reaches the peers
  vxlan-csum       tx checksum offload on flannel.1 on a kernel that then sends bad
                   VXLAN checksums (node_checks.VXLAN_CSUM_KERNELS; --kernel-version)
  vtep-mac         a peer VTEP with flannel.1's own MAC, or two peers sharing one
  public-ip        no two nodes announce the same public IP (--nodes, --annotations,
                   and flannel.1's fdb), and this node's is one of its addresses
  node-spec        --node-spec (kubectl get node NAME -o json): podCIDR vs
                   FLANNEL_SUBNET, flannel's annotations vs flannel.1 and the addresses
  mtu              underlay >= flannel.1 + 50; FLANNEL_MTU = flannel.1 = cni0 = every veth
  ipam-leaks       host-local leases with no live attachment (FAIL when the range is full)
  orphan-veths     host veths no lease or record explains
  leftover-rules   portmap/masquerade/firewall rules of attachments that are gone
                   (FAIL when a hostPort is DNATed to a dead pod and a live one)
  stale-records    result cache entries, flannel saved files and tuning
                   originals of attachments that are gone
  state-files      empty or corrupt state files (flannel saved files, cache
                   entries, leases, tuning originals)

Exit status: 0 no check failed (WARN and SKIP included), 1 a check failed,
2 doctor could not run (bad options, or a check could not read what it needs
and nothing failed).

``--fix`` is the one way doctor changes the node: it applies the fix lines
the checks mark safe (``safeFix`` below), each shown and asked for unless
``--yes``, then runs the checks again (cnilib.ops.doctor.fix).  Marked safe
today: a stale address on a CNI bridge no pod uses, IP forwarding, the DEL
of an attachment ``pycni gc --auto`` would judge dead (its lease, rule
elements and records go through its plugins), flanneld's FLANNEL-FWD
accept rules where only the FORWARD policy drops pod traffic.

``--json`` prints one object, described by report.JSON_SCHEMA (the README
shows it too, and tests/unit/test_doctor_lib.py keeps the two equal).
``summary`` counts the statuses; ``evidence`` lines are what was observed;
``fix`` lines are commands (or one-line instructions) that cure a WARN or
FAIL; ``safeFix`` the ones among them a check marks safe to apply without a
person (one command, local, idempotent, attributable: report.Check); ``error``
is set when the check itself could not run (it then shows as SKIP);
``problems`` lists state layers that could not be read.

The package:

  main            the CHECKS table (id, title, function: the one list), running
                  the checks, the command line
  context         Context: what the checks read (whois's view of the node,
                  addresses, subnet.env, vxlan devices, fdb, routes, sysctls)
  report          Check, the JSON report and its schema, the human rendering
  bundle          --bundle: what a bug report needs
  config_checks   conflists, plugins, subnet-env
  runtime_checks  flannel-binary, plugin-start (what the runtime really execs)
  node_checks     bridge-address, ip-forward, rp-filter, br-netfilter, mtu,
                  vxlan-csum, table-sizes
  netmgr_checks   link-managers
  fabric_checks   forward-policy, vxlan-port, vxlan-local, vtep-mac,
                  public-ip, node-spec
  iptables_checks iptables-backends (rules in both iptables backends)
  state_checks    ipam-leaks, orphan-veths, leftover-rules, stale-records, state-files
  trace           the packet tracer the fabric checks walk the rules with,
                  and the packets they walk (pod traffic, VXLAN per peer)
  fix             --fix: the safe lines shown, asked for, re-checked, applied

A check module imports context, report and trace, never another check
module (tests/unit/test_layers.py): what two groups share goes to context
or report.
"""
