"""cnilib: the work behind the pycni plugins, in layers (see ARCHITECTURE.md).

Plugin X's verbs are in ``plugins/X.py``; its work is in ``cnilib/X`` (the
``bridge/`` package, ``flannel.py``, ``tuning.py``), in ``cnilib/ipam/`` for
host-local, and in ``cnilib/firewall/<rule set>.py`` for portmap
(``portmap``) and firewall (``forward``).

Nothing is imported here: a plugin loads only the modules its verb needs.
"""
