"""Text from input, made safe to show: one helper for every log line and
every line of human output.

A name a workload or a runtime controls (a pod's process or interface
name, a refused container ID, a byte that is not UTF-8) can hold ESC, BEL
or a newline: written raw to a terminal it retitles, clears or recolours
it, and in a log it forges lines.  ``printable`` writes every character
``str.isprintable`` refuses (C0 and C1 controls, DEL, line and paragraph
separators, bidi and zero-width format characters, lone surrogates from a
non-UTF-8 environment) as ``repr`` escapes it: ``\\n``, ``\\x1b``,
``\\u202e``, ``\\udcff``.  Printable text, spaces and non-ASCII letters
included, is returned unchanged (the same object), so the common case
costs one ``isprintable`` call.  JSON output is never passed through it: there the
encoder escapes what JSON needs and the value stays exact.
"""


def printable(text):
    """``text`` with every non-printable character escaped; anything that
    is not a str is returned as it is."""
    if not isinstance(text, str) or text.isprintable():
        return text
    # repr escapes exactly the characters isprintable refuses
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cut_bytes(text, limit, tail="..."):
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary,
    ending in ``tail`` when cut: for the kernel's strings, whose limits are
    in bytes (an iptables comment is 255), while a name from input may
    take two to four bytes a character."""
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return text
    room = limit - len(tail.encode("utf-8"))
    return raw[:room].decode("utf-8", "ignore") + tail
