"""The pure part of the benchmark: percentiles, targets, checks, the table.

Nothing here runs a process or needs root; tests/unit/test_bench.py covers it.
"""

import math


def percentile(values, q):
    """The q-th percentile (0-100) by linear interpolation between ranks.

    The "inclusive" definition (numpy's default): p0 is the minimum, p100
    the maximum, p50 the median.  None for no values.
    """
    if not values:
        return None
    xs = sorted(values)
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def summarize(samples):
    """n, p50, p90, p99, mean, min, max of a list of milliseconds."""
    xs = [x for x in samples if x is not None and x >= 0]
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": percentile(xs, 50), "p90": percentile(xs, 90),
            "p99": percentile(xs, 99), "mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs)}


def ratio(ours, theirs):
    """ours / theirs, or None when either side is missing."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def growth(latencies, window=20):
    """Median of the first and last ``window`` samples (pod order) and the
    growth in percent from one to the other; failed samples (< 0) skipped."""
    first = [x for x in latencies[:window] if x is not None and x >= 0]
    last = [x for x in latencies[-window:] if x is not None and x >= 0]
    if not first or not last or len(latencies) < 2 * window:
        return None
    a, b = percentile(first, 50), percentile(last, 50)
    return {"first": a, "last": b, "window": window, "growth_pct": (b - a) / a * 100.0}


class Target:
    """A goal from the issues, judged on one number.

    kind: "ms" (a p50 in ms), "ratio" (p50 ours / p50 Go), "throughput"
    (ops/s ours / ops/s Go) or "growth" (percent); op: "<=", "<" or ">=".
    ``variants``: the variants the goal is for (others show no verdict).
    """

    UNITS = {"ms": " ms", "ratio": "x Go", "throughput": "x Go", "growth": "%"}
    LABELS = {"ms": "p50", "ratio": "", "throughput": "", "growth": "growth"}

    def __init__(self, kind, op, value, variants, source=""):
        assert kind in self.UNITS and op in ("<=", "<", ">=")
        self.kind, self.op, self.value = kind, op, value
        self.variants = tuple(variants)
        self.source = source

    def applies(self, variant):
        return variant in self.variants

    def check(self, measured):
        """"PASS", "MISS", or None when there is nothing to judge."""
        if measured is None:
            return None
        ok = {"<=": measured <= self.value, "<": measured < self.value,
              ">=": measured >= self.value}[self.op]
        return "PASS" if ok else "MISS"

    def text(self):
        label = self.LABELS[self.kind]
        number = "%.1f" if self.kind in ("ratio", "throughput") else "%g"
        value = (number % self.value) + self.UNITS[self.kind]
        return ("%s %s %s" % (label, self.op, value)).strip()

    def __repr__(self):
        return "Target(%s)" % self.text()


# ---- rows and the table

class Row:
    """One line of the table: a workload's figure for one variant.

    Either numbers (n, p50, p90, p99 in ms, or a throughput in ops/s with
    ``unit="/s"``) or a ``text`` shown in their place (n/a, checks).
    """

    def __init__(self, workload, variant, n=None, p50=None, p90=None, p99=None, unit="ms",
                 ratio=None, target=None, verdict=None, text=None):
        self.workload, self.variant = workload, variant
        self.n, self.p50, self.p90, self.p99, self.unit = n, p50, p90, p99, unit
        self.ratio, self.target, self.verdict, self.text = ratio, target, verdict, text

    def as_dict(self):
        return dict(vars(self))


def fmt_num(x):
    """Milliseconds or rates with 3 significant figures, at most 1 decimal."""
    if x is None:
        return ""
    if abs(x) >= 100:
        return "%.0f" % x
    return "%.1f" % x


def fmt_ratio(x):
    return "" if x is None else "%.2f" % x


COLUMNS = ("workload", "variant", "n", "median", "p90", "p99", "vs Go", "target", "result")


def _cells(row):
    if row.text is not None:
        nums = (row.text, "", "")
    else:
        suffix = "/s" if row.unit == "/s" else ""
        nums = tuple(fmt_num(x) + (suffix if x is not None else "") for x in (row.p50, row.p90, row.p99))
    return (row.workload, row.variant, "" if row.n is None else str(row.n)) + nums + (
        fmt_ratio(row.ratio), row.target or "", row.verdict or "")


def render_text(rows):
    """A fixed-width table, rows of one workload grouped under its name.

    A row's ``text`` (n/a, a check) starts in the median column and may run
    on over the columns to its right; its target and result follow it.
    """
    cells = [_cells(r) for r in rows]
    widths = [len(c) for c in COLUMNS]
    for c, r in zip(cells, rows):
        for i, v in enumerate(c):
            if r.text is None or i < 3 or i > 6:
                widths[i] = max(widths[i], len(v))
    right = {2, 3, 4, 5, 6}

    def fmt(i, v):
        return v.rjust(widths[i]) if i in right else v.ljust(widths[i])

    def line(values, text=None):
        if text is None:
            return "  ".join(fmt(i, v) for i, v in enumerate(values)).rstrip()
        head = "  ".join(fmt(i, v) for i, v in enumerate(values[:3])) + "  " + text
        tail = "  ".join(fmt(i, v) for i, v in enumerate(values) if i >= 7).rstrip()
        if not tail.strip():
            return head.rstrip()
        col = sum(widths[:7]) + 2 * 7           # where the target column starts
        return (head.ljust(col) if len(head) < col else head + "  ") + tail

    lines = [line(COLUMNS), line(["-" * w for w in widths])]
    prev = None
    for c, r in zip(cells, rows):
        c = list(c)
        if r.workload == prev:
            c[0] = ""
        prev = r.workload
        lines.append(line(c, r.text))
    return "\n".join(lines)


def render_markdown(rows):
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    prev = None
    for r in rows:
        c = list(_cells(r))
        if r.workload == prev:
            c[0] = ""
        prev = r.workload
        out.append("| " + " | ".join(v.replace("|", "/") for v in c) + " |")
    return "\n".join(out)


# ---- checks of the pods workloads

def check_unique(ip_lists):
    """(number of addresses, number of duplicates) over every pod's result."""
    seen, dups = set(), 0
    for ips in ip_lists:
        for ip in ips or ():
            if ip in seen:
                dups += 1
            seen.add(ip)
    return len(seen), dups


def leftovers(before, after):
    """What ``after`` holds beyond ``before``: {kind: count}.

    Snapshots map a kind (veths, leases, rules...) to a list of items; they
    compare as multisets, so a rule rewritten in place counts as nothing
    left, and a second copy of one that was there counts as one.
    """
    from collections import Counter
    return {key: sum((Counter(items) - Counter(before.get(key, ()))).values())
            for key, items in after.items()}


# ---- rows from results

def _target_for(targets, variant):
    for t in targets or ():
        if t.applies(variant):
            return t
    return None


def latency_rows(title, variants, results, targets=(), baseline="go"):
    """Rows for one timed operation.

    variants: [(name, label, status)] in table order, status None when the
    variant ran, else the text to show ("n/a (not built)").  results:
    {name: {"samples": [ms...], "errors": int}}.  A "ms" target is judged
    on the p50, a "ratio" target on p50 / the baseline's p50.
    """
    base = summarize(results.get(baseline, {}).get("samples", ())).get("p50")
    rows = []
    for name, label, status in variants:
        t = _target_for(targets, name)
        if status is not None:
            rows.append(Row(title, label, text=status, target=t.text() if t else None))
            continue
        res = results.get(name, {})
        s = summarize(res.get("samples", ()))
        r = None if name == baseline else ratio(s.get("p50"), base)
        verdict = None
        if t is not None:
            verdict = t.check(s.get("p50") if t.kind == "ms" else r)
        if res.get("errors"):
            verdict = "ERR %d" % res["errors"]
        if s["n"] == 0:
            rows.append(Row(title, label, n=0, text="no samples", target=t.text() if t else None,
                            verdict=verdict))
            continue
        rows.append(Row(title, label, n=s["n"], p50=s["p50"], p90=s["p90"], p99=s["p99"], ratio=r,
                        target=t.text() if t else None, verdict=verdict))
    return rows


def throughput_rows(title, variants, rates, targets=(), baseline="go"):
    """Rows for operations per second: rates = {name: (ops/s, n, errors)}."""
    base = rates.get(baseline, (None, 0, 0))[0]
    rows = []
    for name, label, status in variants:
        t = _target_for(targets, name)
        if status is not None:
            rows.append(Row(title, label, text=status, target=t.text() if t else None))
            continue
        rate, n, errors = rates.get(name, (None, 0, 0))
        r = None if name == baseline else ratio(rate, base)
        verdict = t.check(r) if t is not None else None
        if errors:
            verdict = "ERR %d" % errors
        rows.append(Row(title, label, n=n, p50=rate, unit="/s", ratio=r,
                        target=t.text() if t else None, verdict=verdict))
    return rows


def growth_row(title, name, label, g, target=None, errors=0):
    """The pod-1-vs-pod-N row: median of the first and last windows."""
    if g is None:
        return Row(title, label, text="too few samples", target=target.text() if target else None,
                   verdict="ERR %d" % errors if errors else None)
    text = "%s -> %s ms (%+.0f%%)" % (fmt_num(g["first"]), fmt_num(g["last"]), g["growth_pct"])
    verdict = target.check(g["growth_pct"]) if target is not None else None
    if errors:
        verdict = "ERR %d" % errors
    return Row(title, label, text=text, target=target.text() if target else None, verdict=verdict)


def check_text(pods, ok_adds, unique, dups, left):
    """(text, verdict) for the uniqueness and cleanup check of a pods run."""
    parts = ["%d/%d ADDs, %d unique IPs" % (ok_adds, pods, unique)]
    if dups:
        parts.append("%d duplicates" % dups)
    leaks = ["%d %s" % (n, k) for k, n in sorted(left.items()) if n]
    parts.append("left: " + (", ".join(leaks) if leaks else "nothing"))
    ok = ok_adds == pods and unique >= pods and not dups and not leaks
    return "; ".join(parts), "OK" if ok else "FAIL"
