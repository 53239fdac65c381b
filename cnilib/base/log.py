"""The suite's trail: one line per exec in a size-capped log file.

libcni shows a plugin's stderr only when its stdout is empty, so this file
is what an operator reads at 3 a.m.  Every exec appends exactly one summary
line (time, plugin, verb, network, container, ifname, outcome, ms); an error
adds its traceback, indented, below it.  Debug lines are written only when
the level asks for them.  Every line goes through cnilib.base.text.printable:
a control character from input (an ESC in a refused container ID, a newline
in a quoted value) is escaped, so it can neither forge a line nor reach the
terminal of whoever tails the file.  Logging never raises: a plugin that cannot log
still does its job.

Where it goes, first match wins: $PYCNI_LOG, the config's ``logFile``,
/var/log/pycni/pycni.log.  ``PYCNI_LOG=-`` or ``logFile: "-"`` means stderr,
``off`` disables the file.
"""

import os
import time

from cnilib.base import paths
from cnilib.base.text import printable

MAX_BYTES = 10 * 1024 * 1024
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Log:
    def __init__(self, plugin, env=None):
        env = os.environ if env is None else env
        self.plugin = plugin
        self.path = env.get("PYCNI_LOG") or paths.LOG_FILE
        self.env_path = bool(env.get("PYCNI_LOG"))
        self.env_level = "PYCNI_LOG_LEVEL" in env
        self.level = LEVELS.get(env.get("PYCNI_LOG_LEVEL", "info"), 20)
        self.lines = []

    def configure(self, conf):
        """Apply logFile / logLevel from the network config (env wins for the path)."""
        if not isinstance(conf, dict):
            return
        lf = conf.get("logFile")
        if isinstance(lf, str) and lf and not self.env_path:
            self.path = lf
        ll = conf.get("logLevel")
        if isinstance(ll, str) and ll.lower() in LEVELS and not self.env_level:
            self.level = LEVELS[ll.lower()]

    def _add(self, tag, msg, a):
        text = msg % a if a else msg
        if self.level <= 10:
            # at debug level every line carries its wall-clock time, so that
            # the lines of parallel execs can be laid side by side
            t = time.time()
            tag = "%s.%03d %s" % (time.strftime("%H:%M:%S", time.gmtime(t)), int(t * 1000) % 1000, tag)
        self.lines.append("  " + tag + printable(text))

    def debug(self, msg, *a):
        if self.level <= 10:
            self._add("debug: ", msg, a)

    def info(self, msg, *a):
        if self.level <= 20:
            self._add("", msg, a)

    def warning(self, msg, *a):
        if self.level <= 30:
            self._add("warning: ", msg, a)

    def flush(self, summary, trace=None):
        """Write the summary line plus any buffered detail lines."""
        if self.path == "off":
            return
        text = printable(summary) + "\n"
        for line in self.lines:
            text += line + "\n"
        if trace:
            text += "".join("  | " + printable(ln) + "\n" for ln in trace.rstrip("\n").split("\n"))
        self.lines = []
        data = text.encode("utf-8", "replace")
        if self.path == "-":
            try:
                os.write(2, data)
            except OSError:
                pass
            return
        try:
            fd = self._open()
            try:
                if os.fstat(fd).st_size > MAX_BYTES:
                    # keep one generation, and write this line to the new file
                    try:
                        os.rename(self.path, self.path + ".1")
                        os.close(fd)
                        fd = -1
                        fd = self._open()
                    except OSError:
                        pass
                if fd >= 0:
                    os.write(fd, data)
            finally:
                if fd >= 0:
                    os.close(fd)
        except (OSError, ValueError):     # ValueError: a logFile with a NUL byte
            pass

    def _open(self):
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return os.open(self.path, flags, 0o640)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path) or ".", 0o750, exist_ok=True)
            return os.open(self.path, flags, 0o640)


def stamp():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)
