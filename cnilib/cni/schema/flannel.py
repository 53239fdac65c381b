"""flannel meta-plugin config (flannel-io/cni-plugin NetConf, plus the wait bound)."""

from typing import Dict, List, Optional

from pydantic import Field

from cnilib.base import paths
from cnilib.cni.schema.base import Model, NetConf, Route


class FlannelIPAM(Model):
    """The base of the delegate's ipam: extra keys pass through, ``ranges`` is
    replaced by the node's subnets, ``routes`` is kept and extended."""
    type: Optional[str] = None
    routes: Optional[List[Route]] = None


class FlannelConf(NetConf):
    subnetFile: str = Field(paths.FLANNEL_SUBNET_FILE, min_length=1, max_length=4096)
    dataDir: str = Field(paths.FLANNEL_DIR, min_length=1, max_length=4096)
    delegate: Optional[Dict[str, object]] = None
    ipam: Optional[FlannelIPAM] = None
    # seconds ADD waits for a missing or incomplete subnet.env (0: do not wait)
    subnetFileWait: float = Field(10.0, ge=0, le=300)


MODELS = {"flannel": FlannelConf}
