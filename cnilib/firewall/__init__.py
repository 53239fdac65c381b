"""Packet-filter plumbing shared by bridge (masquerade), portmap and firewall.

naming    -- every chain, table and comment name, derived from hashes of
             validated keys, never from raw input
shared    -- one nftables table per plugin kind; an attachment is set
             elements (and portmap's chain), owned by comment
records   -- per-attachment records of those, in the state dir
nft       -- one ``nft -f -`` transaction for rules with expressions
iptables  -- one ``iptables-restore --noflush`` batch per operation
             (``edit``: save, compute, restore under the lock)

The rule sets, named after what they serve: masquerade, macspoof, portmap
(+ portmap_rules, the pure rule text), forward (the firewall plugin).  Each
of masquerade, portmap and forward has two backends behind one interface
(``Nftables``, ``Iptables``: add, check, teardown, gc), as the reference's
PortMapper: ADD and CHECK use the one chosen from the config, DEL and GC
run both.
"""
