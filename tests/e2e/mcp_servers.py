"""The tools of the agent-loop tests: two MCP servers (``mcp``'s ``MCPServer``, the v2 name of ``FastMCP``) and the
Python functions that the tests' tools files name.

Run as a script, by path, so that it needs nothing of this repository (a stdio child gets an allow-listed
environment, and the e2e server runs in a temporary folder):

    python tests/e2e/mcp_servers.py stdio                      # an MCP server on stdin/stdout
    python tests/e2e/mcp_servers.py http --port N              # streamable HTTP on http://127.0.0.1:N/mcp

Both serve the same tools: ``search`` (answers at once), ``hang`` (writes a marker file named by
``MCP_MARK_FILE`` and then waits, so that a test can kill the server while a call is in flight), ``crash`` (the
server kills itself with SIGKILL in the middle of the call), ``fails`` (raises: an ``is_error`` result) and
``whoami`` (its pid and the value of
``MCP_SECRET``: what ``${VAR}`` in the tools file gave it). Imported as a module, it defines the Python tools and
starts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time
from typing import Any

# -- Python tools (``python = "tests.e2e.mcp_servers:<name>"``) ---------------------------------------------------

CALLS: list[str] = []  # names of the Python tools called in this process, in order
RELEASE = threading.Event()  # ``wait_for_release`` returns once it is set (in-process tests only)


def lookup(city: str, limit: int = 3, exact: bool = False) -> str:
    """Look a city up in the atlas."""
    CALLS.append("lookup")
    return f"{city}: {limit} results{' (exact)' if exact else ''}"


def add(a: int, b: int = 1) -> dict:
    """Add two integers; the answer is a JSON object."""
    CALLS.append("add")
    return {"sum": a + b}


def where_sync() -> str:
    """Which thread runs this sync tool, and whether an event loop runs in it."""
    CALLS.append("where_sync")
    return f"thread={threading.current_thread().name} loop={_loop_running()}"


async def where_async() -> str:
    """Which thread runs this async tool, and whether an event loop runs in it."""
    CALLS.append("where_async")
    return f"thread={threading.current_thread().name} loop={_loop_running()}"


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def boom(reason: str = "the flux capacitor broke") -> str:
    """Always fails."""
    CALLS.append("boom")
    raise RuntimeError(reason)


async def slow(seconds: float = 30.0) -> str:
    """Sleeps (async), then answers."""
    CALLS.append("slow")
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


def slow_sync(seconds: float = 3.0) -> str:
    """Sleeps in its thread, then answers."""
    CALLS.append("slow_sync")
    time.sleep(seconds)
    return f"slept {seconds}"


def huge(chars: int = 250_000) -> str:
    """A very long answer."""
    CALLS.append("huge")
    return "".join(chr(ord("a") + i % 26) for i in range(chars))


def blocks() -> list[dict[str, Any]]:
    """Content blocks: two texts and an image."""
    CALLS.append("blocks")
    return [{"type": "text", "text": "first block"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
            {"type": "text", "text": "last block"}]


def nothing() -> None:
    """Returns None."""
    CALLS.append("nothing")


async def wait_for_release() -> str:
    """Waits until the test sets ``RELEASE`` (in-process tests: a tool that is surely running)."""
    CALLS.append("wait_for_release")
    while not RELEASE.is_set():
        await asyncio.sleep(0.01)
    return "released"


def exits(code: int = 2) -> str:
    """Calls sys.exit, as a library's command-line code may (argparse on bad arguments)."""
    CALLS.append("exits")
    raise SystemExit(code)


async def exits_async(code: int = 2) -> str:
    """The same, from an async tool."""
    CALLS.append("exits_async")
    raise SystemExit(code)


async def cancels_itself() -> str:
    """Raises CancelledError of its own accord (nobody cancelled it)."""
    CALLS.append("cancels_itself")
    raise asyncio.CancelledError()


def note(title: str, body: str = "") -> str:
    """Save a note (a parameter named like a JSON schema keyword)."""
    CALLS.append("note")
    return f"{title}: {body}"


class Opaque:
    """A type pydantic cannot validate."""


def takes_opaque(thing: Opaque) -> str:
    """Not a valid tool: its parameter has no schema."""
    return str(thing)


def takes_kwargs(**options: Any) -> str:
    """Not a valid tool: no named parameters."""
    return str(options)


NOT_CALLABLE = 42
# A 1x1 transparent PNG.
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="


# -- the MCP servers ------------------------------------------------------------------------------------------


def build_server(name: str = "docs") -> Any:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer(name, log_level="WARNING")

    @server.tool()
    def search(query: str) -> str:
        """Search the docs."""
        return f"results for {query!r} from pid {os.getpid()}"

    @server.tool()
    async def hang(seconds: float = 60.0) -> str:
        """Writes the marker file, then waits."""
        mark = os.environ.get("MCP_MARK_FILE")
        if mark:
            with open(mark, "w") as handle:
                handle.write(str(os.getpid()))
        await asyncio.sleep(seconds)
        return "woke up"

    @server.tool()
    def crash() -> str:
        """Kills this server in the middle of the call."""
        os.kill(os.getpid(), signal.SIGKILL)
        return "unreachable"

    @server.tool()
    def fails(reason: str = "the index is gone") -> str:
        """Fails: the server answers with an is_error result that says why."""
        from mcp.server.mcpserver.exceptions import ToolError

        raise ToolError(reason)

    @server.tool()
    def whoami() -> str:
        """This server's pid and its secret (from the tools file's ${VAR})."""
        return f"pid={os.getpid()} secret={os.environ.get('MCP_SECRET', '')}"

    @server.tool(name="dotted.name")
    def dotted() -> str:
        """A name that MCP allows and the Messages API does not."""
        return "dotted"

    @server.tool(name="a_tool_name_so_long_that_with_its_server_prefix_it_passes_64_characters")
    def long_name() -> str:
        """Too long for the Messages API once prefixed."""
        return "long"

    @server.tool()
    def hidden() -> str:
        """Left out by the tools file's allow list."""
        return "should not be offered"

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transport", choices=("stdio", "http"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="docs")
    args = parser.parse_args()
    server = build_server(args.name)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
