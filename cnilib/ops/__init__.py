"""The operator's command ``pycni`` and what only it uses: the cnitool-style
runner, node state readers, whois, doctor (with its packet tracer), fabric
and the demo.  Nothing outside ops/ imports ops/ except cnilib.main."""
