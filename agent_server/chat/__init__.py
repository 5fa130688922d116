"""``agent-server chat``: a terminal client for the WebSocket, for trying the product by hand.

It prints a reply's tokens as they arrive, its tool calls and their results as ``→``/``←`` lines, its thinking
prefixed, then one line of usage and cost. A tool that needs approval is asked about (``[y/N]``, then an optional
reason); a client tool the client knows (``get_timezone``) is answered by itself. Ctrl-C cancels a reply in flight
and quits at the prompt; Ctrl-D quits. Lines starting with ``/`` are commands (``/help`` lists them) and never
reach the model. The conversation id is remembered per server URL in a small state file
(``$XDG_STATE_HOME/agent-server/chat.json``), so the next run resumes it with its recent history (and a reply
still running, or actions still pending); ``--new`` starts afresh. Piped input works too: one message per line,
each sent once the previous reply has ended, and answers to approvals on the lines that follow.

It never dead-ends: a server that wants a key gets a one-line hint (exit status 2), an unreachable server one
line (status 1), a dropped connection one line and a reconnection by itself that carries on the reply where it
was, a remembered conversation the server does not have is said so and replaced by a new one, and a command that
fails says why and returns to the prompt. What ends the run is an ``Exit`` carrying a one-line message and the
status, caught once in ``chat``: no traceback reaches the user.

The modules, one job each:

- ``client``: ``ChatClient``, the run and its prompt loop; ``commands``: the ``/`` commands.
- ``session``: one WebSocket connection, its first frame, the task receiving the others.
- ``view``: the frame dispatcher (a handler per ``type``) and how far the reply in flight was shown (``seq``).
- ``reconnect``: a lost connection mended, and a reply that finished meanwhile caught up on.
- ``actions``: answers to pending approvals and client tools.
- ``terminal``: standard input read in a thread, Ctrl-C as an event, ``first_of`` to race them.
- ``output`` (stdout for the conversation, stderr for the client's own words) and ``render`` (formats).
- ``http`` (the HTTP API over urllib), ``urls`` and ``state`` (the remembered conversation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from .client import ChatClient
from .errors import Exit
from .output import Output
from .render import format_usd
from .urls import DEFAULT_URL, TOKEN_VARIABLE

__all__ = ["add_chat_arguments", "format_usd", "run_chat"]


def add_chat_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``agent-server chat``, added to ``parser`` (its sub-command parser); returns it."""
    parser.add_argument("--url", default=DEFAULT_URL, help="the server's WebSocket URL (default: %(default)s)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--conversation", metavar="ID", default=None,
                       help="open this conversation (default: the one last used with this URL, if any)")
    which.add_argument("--new", action="store_true",
                       help="start a new conversation instead of resuming the last one (default: resume)")
    token = os.environ.get(TOKEN_VARIABLE) or None
    parser.add_argument("--token", metavar="KEY", default=token,
                        help=f"client key (default: the {TOKEN_VARIABLE} environment variable, "
                             f"{'set' if token else 'not set'} here)")
    return parser


async def chat(url: str, conversation_id: str | None, token: str | None, new: bool) -> int:
    output = Output()
    client = ChatClient(url, token, output)
    try:
        return await client.run(conversation_id, new)
    except Exit as exc:
        if exc.message:
            output.note(f"agent-server chat: {exc.message}")
        return exc.status
    finally:
        client.ctrl_c.remove()
        if client.session is not None:
            await client.session.close()


def run_chat(*, url: str, conversation_id: str | None, token: str | None, new: bool = False) -> int:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
    try:
        return asyncio.run(chat(url, conversation_id, token or None, new))
    except KeyboardInterrupt:  # Ctrl-C before the prompt: while connecting
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout piped into a program that stopped reading
        with contextlib.suppress(OSError):  # keeps the interpreter's final flush of stdout quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
