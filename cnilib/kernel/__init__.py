"""The only doors to the kernel: rtnetlink (links, addresses, routes,
neighbours), nf_tables and conntrack over netlink, network namespaces and
sysctls.  The one place pyroute2 is imported (cnilib.kernel.netlink)."""
