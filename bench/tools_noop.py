"""No-op tools for the ``tools`` section (``bench/tools_noop.toml``, loaded by agent-server through
``AGENT_TOOLS_FILE``): the reply loop's own cost per step, with nothing of a tool's.

``noop`` is a coroutine, run on the event loop like the SDK tool runner's ``@beta_async_tool`` (the baseline's);
``noop_sync`` is a plain function, which agent_server runs in a thread (``--tools-tool sync``: what that costs).
"""

from __future__ import annotations


async def noop(value: str = "") -> str:
    """Does nothing and says so."""
    return "ok"


def noop_sync(value: str = "") -> str:
    """Does nothing and says so (a plain function)."""
    return "ok"
