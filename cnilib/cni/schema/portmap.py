"""portmap and firewall configs (semantic checks: cnilib.firewall.portmap, cnilib.firewall.forward)."""

from typing import List, Literal, Optional

from pydantic import Field

from cnilib.cni.schema.base import Model, NetConf

# an iptables chain name: at most 28 characters (XT_EXTENSION_MAXNAMELEN - 1)
CHAIN_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,27}$"


class PortMapConf(NetConf):
    """The reference's PortMapConf (plugins/meta/portmap/main.go)."""
    backend: Optional[Literal["iptables", "nftables"]] = None
    snat: Optional[bool] = None
    masqAll: bool = False
    markMasqBit: Optional[int] = Field(None, ge=0, le=31)
    externalSetMarkChain: Optional[str] = Field(None, pattern=CHAIN_PATTERN)
    conditionsV4: Optional[List[str]] = Field(None, max_length=64)
    conditionsV6: Optional[List[str]] = Field(None, max_length=64)


class PortMapEntry(Model):
    """One runtimeConfig.portMappings entry, keys already in canonical case."""
    hostPort: int = Field(ge=1, le=65535)
    containerPort: int = Field(ge=1, le=65535)
    protocol: Optional[str] = Field(None, max_length=16)
    hostIP: Optional[str] = Field(None, max_length=64)


class PortMappings(Model):
    portMappings: Optional[List[PortMapEntry]] = Field(None, max_length=4096)


class FirewallConf(NetConf):
    """The reference's FirewallNetConf (plugins/meta/firewall/firewall.go)."""
    backend: Optional[Literal["iptables", "nftables", "firewalld", ""]] = None
    iptablesAdminChainName: Optional[str] = Field(None, pattern=CHAIN_PATTERN)
    firewalldZone: Optional[str] = None
    ingressPolicy: Optional[Literal["open", "same-bridge", "isolated", ""]] = None


MODELS = {
    "portmap": PortMapConf,
    "portmappings": PortMappings,
    "firewall": FirewallConf,
}
