"""Named failpoints for fault-injection tests; inert unless enabled.

PYCNI_FAILPOINTS="name=action[,name=action...]" with action one of
  kill      SIGKILL this process right there (a crash)
  error     raise an unexpected exception (an ADD that fails mid-way)
  sleep:S   sleep S seconds (to widen a race)
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
    action = _ACTIONS.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), 9)
    elif action == "error":
        raise RuntimeError("failpoint %s" % name)
    elif action.startswith("sleep:"):
        import time
        time.sleep(float(action[6:]))
