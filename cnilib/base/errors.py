"""Typed CNI errors, one class per spec error code.

Every error that crosses the skel is a CniError: skel prints it as
{"cniVersion", "code", "msg", "details"} on stdout and exits 1.  Messages
name the object, what was found and what was expected; ``details`` carries
the longer story (the fix, the value seen).
"""

# an error message is one line: runtimes log it as one
from cnilib.base.text import printable as one_line  # noqa: F401


class CniError(Exception):
    code = 999

    def __init__(self, msg, details="", code=None):
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code

    def to_dict(self, cni_version):
        out = {"cniVersion": cni_version, "code": self.code, "msg": one_line(self.msg)}
        if self.details:
            out["details"] = one_line(self.details)
        return out

    def __str__(self):
        if self.details:
            return "%s; %s" % (self.msg, self.details)
        return self.msg


class IncompatibleVersion(CniError):
    code = 1


class UnsupportedField(CniError):
    code = 2


class UnknownContainer(CniError):
    code = 3


class InvalidEnvironment(CniError):
    code = 4


class IOFailure(CniError):
    code = 5


class DecodingFailure(CniError):
    code = 6


class InvalidConfig(CniError):
    code = 7


class InvalidNetNS(CniError):
    code = 8


class TryAgainLater(CniError):
    code = 11


class NotAvailable(CniError):
    code = 50


class LimitedConnectivity(CniError):
    code = 51


class Internal(CniError):
    code = 999


# what a config ADD refuses raises: a DEL that can clean up by the
# attachment's key alone catches these instead of failing for ever
CONFIG_ERRORS = (IncompatibleVersion, UnsupportedField, DecodingFailure, InvalidConfig)

BY_CODE = {
    cls.code: cls
    for cls in (
        IncompatibleVersion, UnsupportedField, UnknownContainer,
        InvalidEnvironment, IOFailure, DecodingFailure, InvalidConfig,
        InvalidNetNS, TryAgainLater, NotAvailable, LimitedConnectivity,
        Internal,
    )
}


def from_code(code, msg, details=""):
    """Rebuild a typed error from a delegate's error JSON."""
    cls = BY_CODE.get(code, CniError)
    return cls(msg, details, code=code)
