"""The CNI protocol: the skel (env and stdin in, result or error out), result
types and versions, runtime arguments, delegation, the command registry and
the config schemas.  Imports only cnilib.base."""
