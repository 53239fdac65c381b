"""The optional warm agent: the server that forks a worker per request
(server) and the wire format with the plugins' side of it (wire)."""
