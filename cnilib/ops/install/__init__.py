"""``pycni install`` / ``pycni uninstall``: put the suite into a plugin dir.

One code path for a node (``./build.sh install``, the Debian package's
admin) and for the image's init container.  The installer copies the tree
it runs from (``dist/py`` or the bundle ``dist/bin``, or ``--from DIR``)
into the plugin dir, as one directory per version::

    <bin dir>/.pycni-versions/<version>-<digest>/   the tree, as built
    <bin dir>/bridge -> .pycni-versions/<version>-<digest>/bridge   (one per command)
    <bin dir>/.pycni-backup/<name>                 what the first install replaced
    <bin dir>/.pycni-install.json                  what is installed (pycni-install/1)

Each command name is switched to the new tree by renaming a symlink over
it, so an exec resolves the name once and runs one tree: all old or all
new, never a mix, and the name is never missing.  Before any name is
switched, every command of the new tree answers VERSION where it landed
(chrooted into ``--host-root`` when the node's root is mounted there, as in
the DaemonSet), so nothing that cannot run on this node is installed: a
failure names the loader's own words and the glibc or python found vs
needed, removes the new tree, and changes nothing else.  A failure after
the first switch puts every name back as it was.

Idempotent: when the tree, the names and the conflist already match, a
re-run writes nothing.  The previous tree stays (an exec that started
before the switch may still be reading it); older ones are removed.

Directories: ``--bin-dir`` / ``$PYCNI_BIN_DIR`` (default /usr/libexec/cni),
``--conf-dir`` / ``$PYCNI_CONF_DIR`` (default /etc/cni/net.d).  The
conflist comes from ``--conflist FILE`` / ``$PYCNI_CONFLIST`` (a mounted
ConfigMap) or ``--network flannel|bridge`` / ``$PYCNI_NETWORK`` (built in),
and is written only when absent or different.
"""
