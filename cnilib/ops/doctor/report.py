"""What doctor reports: a check's outcome, the JSON report and its schema,
the human rendering and the exit status.  Shared by every check module
(``Check``, ``worst``, ``cmd_text``), the bundle and the command."""

JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pycni doctor report (pycni-doctor/1)",
    "type": "object",
    "required": ["schema", "version", "exit", "summary", "checks", "locations", "problems"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": "pycni-doctor/1"},
        "version": {"type": "string"},
        "exit": {"enum": [0, 1, 2]},
        "summary": {"type": "object", "required": ["PASS", "WARN", "FAIL", "SKIP"],
                    "additionalProperties": False,
                    "properties": {"PASS": {"type": "integer", "minimum": 0},
                                   "WARN": {"type": "integer", "minimum": 0},
                                   "FAIL": {"type": "integer", "minimum": 0},
                                   "SKIP": {"type": "integer", "minimum": 0}}},
        "checks": {"type": "array", "items": {
            "type": "object",
            "required": ["id", "title", "status", "summary", "evidence", "fix", "safeFix", "error"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^[a-z0-9-]+$"},
                "title": {"type": "string"},
                "status": {"enum": ["PASS", "WARN", "FAIL", "SKIP"]},
                "summary": {"type": "string"},
                "evidence": {"type": "array", "items": {"type": "string"}},
                "fix": {"type": "array", "items": {"type": "string"}},
                "safeFix": {"type": "array", "items": {"type": "string"}},
                "error": {"type": ["string", "null"]}}}},
        "locations": {"type": "object"},
        "problems": {"type": "array", "items": {"type": "string"}}}}


STATUSES = ("PASS", "WARN", "FAIL", "SKIP")


class Check:
    """One check's outcome.

    ``fix`` lists every fix line shown; ``safe`` the ones among them that
    ``pycni doctor --fix`` may apply on its own.  A check marks a line safe
    (``add_fix(line, safe=True)``) only when it is one command (``shlex.split``
    gives its argv: no pipes, redirections or ``&&``; text after ``   #`` is a
    comment), local (this node, this netns), idempotent (a second run changes
    nothing) and attributable (it touches only what the check named as
    broken).  Every other line is print-only: a person decides."""

    __slots__ = ("id", "title", "status", "summary", "evidence", "fix", "safe", "error")

    def __init__(self, cid, title):
        self.id, self.title = cid, title
        self.status, self.summary, self.evidence, self.fix, self.error = "SKIP", "", [], [], None
        self.safe = []

    def set(self, status, summary, evidence=(), fix=()):
        self.status, self.summary = status, summary
        self.evidence += list(evidence)
        for f in fix:
            self.add_fix(f)
        return self

    def add_fix(self, line, safe=False):
        """Add a fix line once; ``safe`` marks it for ``--fix`` (see the class)."""
        if line not in self.fix:
            self.fix.append(line)
        if safe and line not in self.safe:
            self.safe.append(line)
        return self

    def as_dict(self):
        return {"id": self.id, "title": self.title, "status": self.status, "summary": self.summary,
                "evidence": list(self.evidence), "fix": list(self.fix),
                "safeFix": [f for f in self.safe if f in self.fix], "error": self.error}


def plain(text, limit=400):
    """Foreign text (a program's stderr, a file's line) made safe to show:
    control characters escaped, lines joined with ' | ', at most ``limit``
    characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    out = "".join(ch if ch.isprintable() else "\\x%02x" % ord(ch) if ord(ch) < 256 else "\\u%04x" % ord(ch)
                  for ch in " | ".join(lines))
    return out if len(out) <= limit else out[:limit - 3] + "..."


def shown(text):
    """``text`` as the terminal may see it: every character that is not
    printable (ESC, CR, a newline inside a line) escaped, the rest as is,
    so a fix line stays the command to copy."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "\\x%02x" % ord(ch) if ord(ch) < 256 else "\\u%04x" % ord(ch)
                   for ch in text)


def cmd_text(argv):
    import shlex
    return " ".join(shlex.quote(str(a)) for a in argv)


def pycni_command():
    """How a fix line calls pycni: 'pycni' when the running one is on PATH
    (or when doctor does not run as pycni), else its full path.  ``--fix``
    runs a line's 'pycni' as the running pycni either way."""
    import os
    import sys
    exe = sys.argv[0] if sys.argv else ""
    if os.path.basename(exe) != "pycni":
        return "pycni"
    d = os.path.dirname(os.path.abspath(exe))
    on_path = [os.path.abspath(p) for p in os.environ.get("PATH", "").split(":") if p]
    return "pycni" if d in on_path else os.path.abspath(exe)


def worst(statuses):
    for s in ("FAIL", "WARN", "PASS"):
        if s in statuses:
            return s
    return "SKIP"


def exit_code(checks):
    if any(c.status == "FAIL" for c in checks):
        return 1
    if any(c.error for c in checks):
        return 2
    return 0


def report(checks, loc, problems):
    from cnilib.cni import version
    summary = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
    return {"schema": "pycni-doctor/1", "version": version.SUITE_VERSION, "exit": exit_code(checks),
            "summary": summary, "checks": [c.as_dict() for c in checks],
            "locations": loc.as_dict(), "problems": list(problems)}


_COLORS = {"PASS": "32", "WARN": "33", "FAIL": "31;1", "SKIP": "2"}


def render(rep, color=False):
    """Human output: a header, one line per check, evidence and fix under WARN/FAIL."""
    s = rep["summary"]
    lines = ["pycni doctor %s: %d checks, %s" % (
        rep["version"], len(rep["checks"]),
        "  ".join("%s %d" % (k, s[k]) for k in STATUSES if s[k]))]
    width = max([len(c["id"]) for c in rep["checks"]] + [0])
    for c in rep["checks"]:
        st = c["status"]
        tag = "\x1b[%sm%-4s\x1b[0m" % (_COLORS[st], st) if color else "%-4s" % st
        lines.append("%s  %-*s  %s" % (tag, width, c["id"], shown(c["summary"])))
        if st in ("WARN", "FAIL") or c["error"]:
            for e in c["evidence"]:
                lines.append("        %s" % shown(e))
            for f in c["fix"]:
                lines.append("    fix: %s" % shown(f))
            if c["error"]:
                lines.append("    error: %s" % shown(c["error"]))
    for p in rep["problems"]:
        lines.append("note: %s" % shown(p))
    verdict = {0: "healthy (no check failed)", 1: "FAILED: see the fix lines above",
               2: "could not check everything (see the errors above)"}[rep["exit"]]
    lines.append("pycni doctor: %s" % verdict)
    return "\n".join(lines) + "\n"

