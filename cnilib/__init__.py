"""cnilib: the work behind the pycni plugins (protocol, kernel, state).

Nothing is imported here: a plugin loads only the modules its verb needs.
"""
