"""What every part of the installer shares: the names it writes into a
plugin dir, the built-in network configs, its error and its line cleaner."""


from cnilib.base import paths

DEFAULT_BIN_DIR = paths.BIN_DIRS[1]     # the Red Hat path, owned by no Debian package
DEFAULT_CONF_DIR = paths.CONF_DIR
VERSIONS = ".pycni-versions"
BACKUP = ".pycni-backup"
STATE = ".pycni-install.json"
OLD_MANIFEST = ".pycni-installed"        # the layout ./build.sh install made before this module
SUPPORT_DIRS = ("pycni.d", ".pycni")    # py form, bundle
SCHEMA = "pycni-install/1"
MIN_PYTHON = (3, 9)
CHECK_TIMEOUT = 30.0

# the built-in network configs (kept equal to conf/ by tests/unit/test_install_lib.py)
BUILTIN_CONFLISTS = {
    "flannel": ("10-flannel.conflist", """{
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"""),
    "bridge": ("10-containerd-net.conflist", """{
  "cniVersion": "1.0.0",
  "name": "containerd-net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "promiscMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [{
            "subnet": "10.88.0.0/16"
          }],
          [{
            "subnet": "fd00:10:88::/64"
          }]
        ],
        "routes": [
          { "dst": "0.0.0.0/0" },
          { "dst": "::/0" }
        ]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
"""),
}


class InstallError(Exception):
    """A failure the operator reads: ``msg`` and the lines under it."""

    def __init__(self, msg, details=()):
        Exception.__init__(self, msg)
        self.msg = msg
        self.details = list(details)


def clean(text, limit=300):
    """Text from a file or a program, safe for a terminal: one line,
    control characters escaped, bounded."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = []
    for c in str(text)[:limit]:
        if c == "\n":
            out.append(" | ")
        elif c < " " or c == "\x7f":
            out.append("\\x%02x" % ord(c))
        else:
            out.append(c)
    s = "".join(out).strip(" |")
    return s + ("..." if len(str(text)) > limit else "")
