"""Fixtures that more than one integration module uses.

``node`` is a bridge node (bridge_env); modules with a node of their own
(firewall, flannel, portmap) define ``node`` themselves, which takes
precedence. ``agent`` / ``agent_private_mounts`` start a private warm agent.
"""

from agent_env import agent, agent_factory, agent_private_mounts  # noqa: F401
from bridge_env import node  # noqa: F401
