"""Key lists the plugins keep by hand are the compiled schemas' fields.

The plugins match config keys case-insensitively (as Go's JSON decoder
does) and pick result keys through short lists of names.  Those lists are
spelled by hand so that an exec needs no walk of the compiled schema; the
schema models (cnilib/cni/schema/) are the truth, and these tests keep the
copies equal to them.
"""

from cnilib import flannel, tuning
from cnilib.bridge import netconf
from cnilib.cni import types
from cnilib.cni._schemas import SCHEMAS
from cnilib.firewall import portmap
from cnilib.ipam import config


def fields(node):
    """The field names of the first typed dict at or under ``node``, through
    the wrappers (default, nullable, list) the compiler puts around it."""
    todo = [node]
    while todo:
        n = todo.pop(0)
        if not isinstance(n, dict):
            continue
        if "fields" in n:
            return set(n["fields"])
        for k in ("schema", "items_schema", "choices"):
            v = n.get(k)
            todo += v if isinstance(v, list) else [v]
    raise AssertionError("no typed dict under %r" % (node,))


def test_bridge_keys_are_the_bridge_schema_beyond_the_netconf_base():
    own = fields(SCHEMAS["bridge"]) - fields(SCHEMAS["netconf"])
    assert set(netconf.KEYS) == own | {"ipam", "dns"}
    assert len(netconf.KEYS) == len(set(netconf.KEYS))


def test_host_local_keys():
    ipam = SCHEMAS["host-local"]["fields"]["ipam"]
    assert set(config.IPAM_KEYS) == fields(ipam)
    assert set(config.RANGE_KEYS) == fields(fields_node(ipam, "ranges"))
    assert set(config.RUNTIME_KEYS) == fields(SCHEMAS["host-local"]["fields"]["runtimeConfig"])


def test_portmap_entry_keys():
    assert set(portmap.ENTRY_KEYS) == fields(SCHEMAS["portmappings"]["fields"]["portMappings"])


def test_result_keys():
    assert set(types._ROUTE_KEYS) == fields(SCHEMAS["result"]["fields"]["routes"])
    assert set(types._DNS_KEYS) == fields(SCHEMAS["result"]["fields"]["dns"])
    assert flannel._ROUTE_KEYS == types._ROUTE_KEYS


def test_tuning_link_keys_are_tuning_fields():
    assert set(tuning.LINK_KEYS) <= fields(SCHEMAS["tuning"]) & fields(SCHEMAS["tuning_args"])


def fields_node(node, name):
    """The schema of field ``name`` of the typed dict at or under ``node``."""
    todo = [node]
    while todo:
        n = todo.pop(0)
        if isinstance(n, dict):
            if "fields" in n:
                return n["fields"][name]
            todo += [n.get(k) for k in ("schema", "items_schema")]
    raise AssertionError(name)
