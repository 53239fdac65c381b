"""host-local IPAM: config, allocation order and the on-disk lease store."""
