"""``pycni doctor --fix [--yes]``: apply the fix lines the checks mark safe.

A check marks a fix line safe (report.Check.add_fix(line, safe=True)) only
when it is one command, local, idempotent and attributable (report.Check
says what each means).  ``--fix``:

1. runs the checks and prints the report as doctor always does;
2. lists the safe lines of the checks that WARN or FAIL, each once, in
   check order, and asks for each (``[y/N/q]``, from stdin; anything but
   y, and the end of stdin, is no) unless ``--yes``;
3. after the questions, runs the checks again and applies only the lines
   that are still proposed (a minute at the prompt is long enough for a
   pod to come or go), each as one command: the text after ``   #`` is a
   comment, leading NAME=value words are its environment, and ``pycni`` is
   the pycni running now; no shell is involved;
4. runs the checks once more and prints the report after: its exit status
   is doctor's.

Every other fix line stays print-only: a person decides.  Each applied
line is one line in the suite's log, under the run's summary line.
"""

import os
import re
import shlex
import sys
import time

from cnilib.ops.doctor.report import plain, render

ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SHELL = frozenset(("&&", "||", "|", ";", ">", ">>", "<", "&", "2>", "2>&1"))
TIMEOUT = 300.0


class NotACommand(ValueError):
    """A line marked safe that is not one plain command (a check's bug)."""


def parse(line):
    """(env {name: value}, argv) of a fix line; raises NotACommand."""
    text = line.split("   #", 1)[0].strip()
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise NotACommand("cannot split %r: %s" % (text, exc)) from None
    env = {}
    while words and ASSIGN.match(words[0]):
        k, _, v = words.pop(0).partition("=")
        env[k] = v
    if not words:
        raise NotACommand("%r names no command" % text)
    bad = [w for w in words if w in SHELL]
    if bad:
        raise NotACommand("%r is more than one command (%s)" % (text, " ".join(bad)))
    return env, words


def own_pycni():
    """The pycni running now (argv[0] when that is pycni), else pycni on PATH."""
    exe = sys.argv[0] if sys.argv else ""
    if os.path.basename(exe) == "pycni":
        return os.path.abspath(exe)
    return "pycni"


def apply(line):
    """Run one fix line: (ok, what it said)."""
    from cnilib.base import proc
    try:
        env, argv = parse(line)
    except NotACommand as exc:
        return False, "not applied: %s" % exc
    if argv[0] == "pycni":
        argv[0] = own_pycni()
    full = dict(os.environ)
    full.setdefault("PATH", proc.SYSTEM_PATH)
    full.update(env)
    try:
        done = proc.run(argv, env=full, timeout=TIMEOUT)
    except FileNotFoundError:
        return False, "%s is not installed" % argv[0]
    except (OSError, TimeoutError) as exc:
        return False, str(exc)
    said = plain(done.err or done.out, 600)
    if done.rc != 0:
        return False, "exit %d%s" % (done.rc, ": " + said if said else "")
    return True, said


def proposals(checks):
    """[(check id, line)] of the safe fix lines of the checks that WARN or
    FAIL, each line once, in check order."""
    out, seen = [], set()
    for c in checks:
        if c.status not in ("WARN", "FAIL"):
            continue
        for line in c.safe:
            if line in c.fix and line not in seen:
                seen.add(line)
                out.append((c.id, line))
    return out


def ask(question, stdin, stdout):
    """y/N/q from ``stdin``: 'y', 'n' or 'q' (the end of input is 'q')."""
    stdout.write(question)
    stdout.flush()
    answer = stdin.readline()
    if not answer:
        stdout.write("(end of input: no)\n")
        return "q"
    if not (hasattr(stdin, "isatty") and stdin.isatty()):
        stdout.write(plain(answer) + "\n")     # a piped answer shows in the transcript
    a = answer.strip().lower()
    return "y" if a in ("y", "yes") else "q" if a in ("q", "quit") else "n"


def main(args, check_node, stdin=None, stdout=None):
    """``check_node()`` runs every check (``--only`` applied) and returns
    (checks, report); raises OSError when the node cannot be read."""
    from cnilib.base import log as logmod
    from cnilib.base.errors import one_line
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    t0 = time.monotonic()
    log = logmod.Log("pycni")
    applied, failed, declined = [], [], []
    color = out.isatty() and not os.environ.get("NO_COLOR")
    checks, rep = check_node()
    out.write(render(rep, color))
    todo = proposals(checks)
    if not todo:
        n = sum(len(c.fix) for c in checks if c.status in ("WARN", "FAIL"))
        out.write("pycni doctor --fix: nothing to apply: no failing check marks a fix safe%s\n"
                  % (" (%d fix line(s) above are for a person to run)" % n if n else ""))
        rc = rep["exit"]
    else:
        out.write("pycni doctor --fix: %d fix(es) the checks mark safe (one command, local, idempotent, "
                  "touching only what the check named):\n" % len(todo))
        for i, (cid, line) in enumerate(todo, 1):
            out.write("  [%d] %-15s %s\n" % (i, cid, plain(line, 1000)))
        chosen = []
        for i, (cid, line) in enumerate(todo, 1):
            if args.yes:
                chosen.append((i, cid, line))
                continue
            a = ask("apply [%d] %s? [y/N/q] " % (i, plain(line.split("   #")[0], 1000)), stdin, out)
            if a == "y":
                chosen.append((i, cid, line))
            else:
                declined.append(line)
                if a == "q":
                    declined += [ln for _c, ln in todo[i:]]
                    break
        if chosen and not args.yes:
            # the answers took a while: apply only what a fresh look still proposes
            still = {line for _c, line in proposals(check_node()[0])}
            for i, cid, line in list(chosen):
                if line not in still:
                    chosen.remove((i, cid, line))
                    out.write("  [%d] not applied: the checks no longer propose it\n" % i)
        for i, cid, line in chosen:
            out.write("applying [%d] %s\n" % (i, plain(line.split("   #")[0], 1000)))
            out.flush()
            ok, said = apply(line)
            (applied if ok else failed).append(line)
            out.write("  %s%s\n" % ("done" if ok else "FAILED: ", said if not ok else
                                    (": " + said if said else "")))
            log.info("%s", one_line("doctor --fix: %s %s: %s%s" % (
                "applied" if ok else "FAILED", cid, line.split("   #")[0], "" if ok else " (%s)" % said)))
        if not chosen:
            out.write("pycni doctor --fix: nothing applied\n")
            rc = rep["exit"]
        else:
            out.write("pycni doctor --fix: %d applied, %d failed; the checks again:\n"
                      % (len(applied), len(failed)))
            checks, rep = check_node()
            out.write(render(rep, color))
            rc = rep["exit"] or (1 if failed else 0)
    out.flush()
    log.flush("%s pycni[%d] DOCTOR-FIX applied=%d failed=%d declined=%d exit=%d %.1fms" % (
        logmod.stamp(), os.getpid(), len(applied), len(failed), len(declined), rc,
        (time.monotonic() - t0) * 1000))
    return rc
