"""The bridge plugin's work: its network config and pure rules (netconf), the
host side's links (links: the bridge, veth pairs, ports, gateway addresses)
and the container side's interface (iface)."""
