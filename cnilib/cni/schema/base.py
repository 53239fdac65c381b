"""The config and result schemas, as pydantic models: the one source of truth.

Importing pydantic costs 25-45 ms and building these models ~70 ms more, far
over a plugin's start-up budget.  So the models are compiled once, at build
time, into plain pydantic-core schemas (``python -m cnilib.cni.schema`` writes
cnilib/cni/_schemas.py, and a unit test fails when that file is stale).  At run
time cnilib.cni.validate feeds them to pydantic_core.SchemaValidator, which
validates with the same rules and messages for ~2 ms.

Rules for the models here, so that they compile to plain data:
  * declarative constraints only (Field(ge=..., max_length=..., pattern=...),
    Literal, Optional, list, dict); no validators holding Python callables;
  * extra keys are allowed everywhere: runtimes inject keys, and a plugin
    must ignore what it does not use (spec conformance note E1);
  * validation is strict, like Go's encoding/json: "true" is not a bool,
    "1450" is not an int.
Semantic checks (CIDRs, ranges, cross-field rules) live with the code that
uses the values (cnilib.ipam.config, cnilib.firewall.portmap, ...).
"""

from typing import Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

OPEN = ConfigDict(extra="allow", strict=True)

# Names the runtime hands us end up in paths, chains and comments: skel's
# check_network_name enforces ^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$ before any handler
# runs.  Not repeated here as a ``pattern``: any pattern makes pydantic-core
# import Python's ``re`` (3.5 ms, a quarter of a plugin's start-up budget).


class Model(BaseModel):
    model_config = OPEN


# --------------------------------------------------------------- results
class Interface(Model):
    name: str = Field(min_length=1)
    mac: Optional[str] = None
    mtu: Optional[int] = Field(None, ge=0)
    sandbox: Optional[str] = None
    socketPath: Optional[str] = None
    pciID: Optional[str] = None


class IPConfig(Model):
    address: str = Field(min_length=1)
    gateway: Optional[str] = None
    interface: Optional[int] = None
    version: Optional[Literal["4", "6"]] = None


class Route(Model):
    dst: str = Field(min_length=1)
    gw: Optional[str] = None
    mtu: Optional[int] = Field(None, ge=0)
    advmss: Optional[int] = Field(None, ge=0)
    priority: Optional[int] = Field(None, ge=0)
    table: Optional[int] = Field(None, ge=0)
    scope: Optional[int] = Field(None, ge=0, le=255)


class DNS(Model):
    nameservers: Optional[List[str]] = None
    domain: Optional[str] = None
    search: Optional[List[str]] = None
    options: Optional[List[str]] = None


class Result(Model):
    """A result of spec 0.3.0 and later."""
    cniVersion: Optional[str] = None
    interfaces: Optional[List[Interface]] = None
    ips: Optional[List[IPConfig]] = None
    routes: Optional[List[Route]] = None
    dns: Optional[DNS] = None


class Route02(Model):
    dst: str = Field(min_length=1)
    gw: Optional[str] = None


class IP02(Model):
    ip: str = Field(min_length=1)
    gateway: Optional[str] = None
    routes: Optional[List[Route02]] = None


class Result02(Model):
    """A result of spec 0.1.0 / 0.2.0."""
    cniVersion: Optional[str] = None
    ip4: Optional[IP02] = None
    ip6: Optional[IP02] = None
    dns: Optional[DNS] = None


# --------------------------------------------------------------- netconf
class IPAMRef(Model):
    type: str = ""


class NetConf(Model):
    """Keys every plugin reads (spec section 1, plus the suite's log keys)."""
    cniVersion: str = "0.1.0"
    name: str = Field(min_length=1, max_length=128)
    type: str = ""
    capabilities: Optional[Dict[str, bool]] = None
    runtimeConfig: Optional[Dict[str, object]] = None
    args: Optional[Dict[str, object]] = None
    prevResult: Optional[Dict[str, object]] = None
    ipam: Optional[IPAMRef] = None
    dns: Optional[DNS] = None
    logFile: Optional[str] = None
    logLevel: Optional[Literal["debug", "info", "warning", "error"]] = None


class LoopbackConf(NetConf):
    pass


MODELS = {
    "result": Result,
    "result02": Result02,
    "netconf": NetConf,
    "loopback": LoopbackConf,
}
