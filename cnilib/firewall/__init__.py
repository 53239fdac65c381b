"""Packet-filter plumbing shared by bridge (masquerade), portmap and firewall.

naming    -- every chain, table and comment name, derived from hashes of
             validated keys, never from raw input
nft       -- one ``nft -f -`` transaction per operation
iptables  -- one ``iptables-restore --noflush`` batch per operation
"""
