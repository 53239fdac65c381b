"""The only doors to the kernel: one netlink transport (netlink) and a
module per kernel object over it (link; route: addresses, routes,
neighbours; brport: bridges, veths, ports, fdb; vxlan; nftables;
conntrack), network namespaces and sysctls.  The one place pyroute2 is
imported (cnilib.kernel.netlink)."""
