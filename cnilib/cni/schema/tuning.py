"""tuning: sysctls and link attributes of the container interface (meta/tuning)."""

from typing import Dict, Optional

from pydantic import Field

from cnilib.cni.schema.base import Model, NetConf

U32 = 2**32 - 1


class TuningArgs(Model):
    """``args.cni``: per-attachment overrides; each key wins over the config's."""
    sysctl: Optional[Dict[str, str]] = None
    mac: Optional[str] = None
    promisc: Optional[bool] = None
    mtu: Optional[int] = Field(None, ge=0, le=U32)
    allmulti: Optional[bool] = None
    txQLen: Optional[int] = Field(None, ge=0, le=U32)


class TuningConf(NetConf):
    sysctl: Optional[Dict[str, str]] = None
    mac: Optional[str] = None
    promisc: bool = False
    mtu: int = Field(0, ge=0, le=U32)          # 0: leave the MTU alone
    allmulti: Optional[bool] = None
    txQLen: Optional[int] = Field(None, ge=0, le=U32)
    dataDir: Optional[str] = Field(None, min_length=1)


MODELS = {"tuning": TuningConf, "tuning_args": TuningArgs}
