"""pydantic models for every config and result the suite reads (build/test time only).

Each module here defines its models and a ``MODELS`` dict (schema name ->
model).  ``python -m cnilib.cni.schema`` compiles them all into plain
pydantic-core schemas in cnilib/cni/_schemas.py, which the plugins load at run
time through cnilib.cni.validate without importing pydantic.
"""

# every module that contributes MODELS; add a plugin's module here
MODULES = ("base", "bridge", "flannel", "ipam", "portmap", "tuning")
