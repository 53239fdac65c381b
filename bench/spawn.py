"""Exec-to-exit timer for direct plugin execs (no libcni), one per variant.

Started by the orchestrator as ``ip netns exec <variant host netns>
python -I -S bench/spawn.py``, so every plugin it starts runs in that
netns with its /sys.  It reads one JSON request per line on stdin:

    {"argv": [exe], "env": {...}, "stdin": "..."}

and answers one JSON line: {"ms", "cpu_ms", "rc", "stdout"}.  The plugin is
started with posix_spawn and timed with perf_counter_ns from just before
the spawn to wait4's return; its stdin and stdout are memfds, so this
process does nothing while the plugin runs.  Stdlib only.
"""

import json
import os
import sys
import time


def serve(inp, out):
    stdin_fd = os.memfd_create("bench-stdin")
    stdout_fd = os.memfd_create("bench-stdout")
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    actions = [(os.POSIX_SPAWN_DUP2, stdin_fd, 0), (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
               (os.POSIX_SPAWN_DUP2, devnull, 2)]
    for line in inp:
        req = json.loads(line)
        data = req.get("stdin", "").encode()
        os.ftruncate(stdin_fd, 0)
        os.pwrite(stdin_fd, data, 0)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        os.ftruncate(stdout_fd, 0)
        os.lseek(stdout_fd, 0, os.SEEK_SET)
        argv = req["argv"]
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], argv, req["env"], file_actions=actions)
        _, status, ru = os.wait4(pid, 0)
        t1 = time.perf_counter_ns()
        size = os.fstat(stdout_fd).st_size
        text = os.pread(stdout_fd, min(size, 65536), 0).decode("utf-8", "replace")
        out.write(json.dumps({"ms": (t1 - t0) / 1e6, "cpu_ms": (ru.ru_utime + ru.ru_stime) * 1e3,
                              "rc": os.waitstatus_to_exitcode(status), "stdout": text}) + "\n")
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
