"""host-local's network config: the shapes; cnilib.ipam.config checks the meaning.

Addresses and CIDRs are strings here: whether "10.1.17.1/24" is a usable
subnet (host bits, size, overlaps) is decided with the reference's messages
in cnilib.ipam.config.
"""

from typing import List, Optional

from pydantic import Field

from cnilib.cni.schema.base import IPAMRef, Model, NetConf, Route


class IPRange(Model):
    """One range: a subnet and the part of it to allocate from."""
    subnet: str
    rangeStart: Optional[str] = None
    rangeEnd: Optional[str] = None
    gateway: Optional[str] = None


class HostLocalIPAM(IPAMRef):
    type: str = "host-local"
    # the legacy single range, placed as its own range set before ``ranges``
    subnet: Optional[str] = None
    rangeStart: Optional[str] = None
    rangeEnd: Optional[str] = None
    gateway: Optional[str] = None
    ranges: Optional[List[List[IPRange]]] = None
    routes: Optional[List[Route]] = None
    dataDir: Optional[str] = Field(None, max_length=4096)
    resolvConf: Optional[str] = Field(None, max_length=4096)


class HostLocalRuntime(Model):
    """Capability arguments host-local consumes (``ips``, ``ipRanges``)."""
    ips: Optional[List[str]] = None
    ipRanges: Optional[List[List[IPRange]]] = None


class HostLocalArgsCNI(Model):
    ips: Optional[List[str]] = None


class HostLocalArgs(Model):
    cni: Optional[HostLocalArgsCNI] = None


class HostLocalConf(NetConf):
    ipam: Optional[HostLocalIPAM] = None
    runtimeConfig: Optional[HostLocalRuntime] = None
    args: Optional[HostLocalArgs] = None


MODELS = {
    "host-local": HostLocalConf,
}
