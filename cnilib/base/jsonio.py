"""JSON on the plugins' exec path, straight from the C accelerator.

``import json`` costs ~8 ms (it pulls in ``re`` and ``enum``); ``_json``
alone costs ~0.2 ms.  These two functions are all the suite needs: strict
decoding (no NaN/Infinity, like Go) and compact encoding.
"""

import _json

_WS = " \t\n\r"


def _bad_constant(name):
    raise ValueError("%s is not valid JSON" % name)


class _Ctx:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_bad_constant)
    memo = None


_scan = _json.make_scanner(_Ctx())
_encode = _json.make_encoder(
    None, None, _json.encode_basestring_ascii, None, ":", ",",
    False, False, False)
_encode_sorted = _json.make_encoder(
    None, None, _json.encode_basestring_ascii, None, ":", ",",
    True, False, False)


class JSONError(ValueError):
    """Malformed JSON; ``pos`` is the character offset of the problem."""

    def __init__(self, msg, pos):
        super().__init__("%s at offset %d" % (msg, pos))
        self.pos = pos


def loads(data):
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONError("input is not UTF-8", exc.start) from exc
    n = len(data)
    i = 0
    while i < n and data[i] in _WS:
        i += 1
    if i == n:
        raise JSONError("empty input, expected a JSON value", i)
    try:
        try:
            obj, end = _scan(data, i)
        except SystemError:
            # _json reports string/object errors through json.decoder's
            # JSONDecodeError, but only finds it in sys.modules: load it
            # (error path only) and scan again for the real message.
            import json.decoder  # noqa: F401
            obj, end = _scan(data, i)
    except StopIteration as exc:
        raise JSONError("expected a JSON value", exc.value) from None
    except RecursionError:
        raise JSONError("JSON nested too deeply", i) from None
    except ValueError as exc:  # json.decoder.JSONDecodeError, bad constants
        msg = getattr(exc, "msg", None) or str(exc)
        if msg.endswith(" at"):
            msg = msg[:-3]
        raise JSONError(msg, getattr(exc, "pos", i)) from None
    while end < n and data[end] in _WS:
        end += 1
    if end != n:
        raise JSONError("extra data after the JSON value", end)
    return obj


def dumps(obj, sort_keys=False):
    enc = _encode_sorted if sort_keys else _encode
    try:
        return "".join(enc(obj, 0))
    except RecursionError:
        raise ValueError("value nested too deeply to encode") from None
