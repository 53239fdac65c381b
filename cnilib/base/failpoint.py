"""Named failpoints for fault-injection tests; inert unless enabled.

PYCNI_FAILPOINTS="name=action[,name=action...]" with action one of
  kill      SIGKILL this process right there (a crash)
  error     raise an unexpected exception (an ADD that fails mid-way)
  sleep:S   sleep S seconds (to widen a race)
  trace     append the name to the file $PYCNI_FAILPOINTS_TRACE and go on
The name ``*`` matches every failpoint without an action of its own, so
``*=trace`` lists the failpoints a run passes, in order (the reliability
tests find the points to kill at that way).
When the variable is unset, ``hit`` is one global lookup and a return.
"""

import os

_SPEC = os.environ.get("PYCNI_FAILPOINTS")
_ACTIONS = None


def _parse():
    global _ACTIONS
    _ACTIONS = {}
    for item in (_SPEC or "").split(","):
        name, _, action = item.partition("=")
        if name:
            _ACTIONS[name.strip()] = action.strip() or "kill"


def reset():
    """Re-read PYCNI_FAILPOINTS (the agent's workers take the caller's env)."""
    global _SPEC, _ACTIONS
    _SPEC = os.environ.get("PYCNI_FAILPOINTS")
    _ACTIONS = None


def hit(name):
    if _SPEC is None:
        return
    if _ACTIONS is None:
        _parse()
    action = _ACTIONS.get(name) or _ACTIONS.get("*")
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), 9)
    elif action == "error":
        raise RuntimeError("failpoint %s" % name)
    elif action.startswith("sleep:"):
        import time
        time.sleep(float(action[6:]))
    elif action == "trace":
        _trace(name)


def _trace(name):
    path = os.environ.get("PYCNI_FAILPOINTS_TRACE")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, ("%s\n" % name).encode())
    finally:
        os.close(fd)
