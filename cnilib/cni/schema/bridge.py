"""The bridge plugin's network config (reference: plugins/main/bridge NetConf).

Types are checked here, strictly ("mtu": "1500" is refused, as Go refuses
it); the rules that relate keys to each other (hairpin vs promisc, IPAM vs
disableContainerInterface, trunk ranges, the vlan gateway name length) are
checked in cnilib.bridge.links.load_conf, where the messages can name both keys.
"""

from typing import List, Literal, Optional

from pydantic import Field

from cnilib.cni.schema.base import Model, NetConf


class VlanTrunk(Model):
    """One trunk entry: a single ``id`` or a ``minID``..``maxID`` range."""
    id: Optional[int] = Field(None, ge=1, le=4094)
    minID: Optional[int] = Field(None, ge=1, le=4094)
    maxID: Optional[int] = Field(None, ge=1, le=4094)


class BridgeConf(NetConf):
    # an interface name: 1-15 characters, which cnilib.bridge.links limits to
    # [A-Za-z0-9_.-] (safe in sysctl paths and nft strings); no ``pattern``
    # here, as a pattern makes validation import ``re``
    bridge: str = Field("cni0", min_length=1, max_length=15)
    isGateway: bool = False
    isDefaultGateway: bool = False
    forceAddress: bool = False
    ipMasq: bool = False
    ipMasqBackend: Optional[Literal["iptables", "nftables"]] = None
    mtu: int = Field(0, ge=0, le=65535)
    hairpinMode: bool = False
    promiscMode: bool = False
    vlan: int = Field(0, ge=0, le=4094)
    vlanTrunk: Optional[List[VlanTrunk]] = None
    preserveDefaultVlan: bool = False
    enabledad: bool = False
    macspoofchk: bool = False
    disableContainerInterface: bool = False
    portIsolation: bool = False


MODELS = {
    "bridge": BridgeConf,
}
