"""``agent-server chat``: a terminal client for the WebSocket, for trying the product by hand.

It prints a reply's tokens as they arrive, then one line of usage and cost. Ctrl-C cancels a reply in
flight and quits at the prompt; Ctrl-D quits. Lines starting with ``/`` are commands (``/help`` lists them)
and never reach the model. The conversation id is remembered per server URL in a small state file
(``$XDG_STATE_HOME/agent-server/chat.json``), so the next run resumes it with its recent history; ``--new``
starts afresh. Piped input works too: one message per line, each sent once the previous reply has ended.

It never dead-ends: a server that wants a key gets a one-line hint (exit status 2), an unreachable server
or a lost connection one line (status 1), a remembered conversation the server does not have is said so
and replaced by a new one, and a command that fails says why and returns to the prompt.

Structure, and why:

- ``ChatClient`` owns the run: the key, the state file, the input, Ctrl-C, and which conversation is open.
  Commands are its ``cmd_*`` methods, found by name. Switching conversation (``/new``, ``/open``) opens the
  new connection first and only then drops the old one, so a failed switch leaves the chat where it was.
- ``Session`` is one WebSocket connection. One task receives every frame and hands it to the handler
  registered for its ``type``; unknown types are ignored, so a new kind of frame (``tool_use``,
  ``tool_result``, ``requires_action``, ``step``, ``thinking``...) is one more handler. The end of the
  connection is noticed in that one place (``Session.lost``), at the prompt as well as mid-reply: that is
  where automatic reconnection will go (open a new ``Session`` with the same conversation id).
- Standard input is read by a daemon thread into a queue, so that waiting for a line can race Ctrl-C and a
  lost connection (``first_of``), and lines typed or piped ahead simply wait their turn. Ctrl-C only sets
  an event; what it means (quit, cancel, abandon a command) is decided by whoever is waiting.
- What ends the run is an ``Exit`` carrying a one-line message and the status, caught once in ``chat``:
  no traceback reaches the user.
- stdout carries the conversation (replayed turns and live ones, with the same ``you>`` and ``claude>``
  labels; a piped message is shown there too, as no terminal echoes it); stderr carries what the client
  says itself: the prompt, notes, command output, usage lines.

The HTTP calls of the commands (``GET /conversations...``) use urllib in a thread: the client needs nothing
beyond the standard library and ``websockets``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

DEFAULT_URL = "ws://127.0.0.1:8000/agent/ws"
TOKEN_VARIABLE = "AGENT_TOKEN"
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
REPLAY_TURNS = 10  # turns shown on resume and /open
LIST_LIMIT = 10  # conversations shown by /list
FIRST_WORDS = 50  # characters of a conversation's first message shown by /list
HTTP_TIMEOUT = 30.0
SESSION_TIMEOUT = 30.0  # for the server's first frame

LABELS = {"user": "you> ", "assistant": "claude> "}
STATUS_MARKS = {"incomplete": " (cancelled)", "failed": " (failed)"}
CLOSE_MEANINGS = {
    1000: "closed by the server",
    1001: "the server is going away",
    1006: "the connection dropped",
    1011: "the server hit an error",
    1012: "the server is restarting",
}

HELP = """\
commands (never sent to the model):
  /new       start a new conversation
  /list      the 10 most recent conversations: id, last update, cost, first words
  /open ID   switch to conversation ID and show its recent turns
  /cost      this conversation's requests, tokens and cost so far
  /help      this list
  /quit      quit (so do Ctrl-D, and Ctrl-C at the prompt)
  //text     sends the message "/text"
Ctrl-C during a reply cancels it."""


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


# The remembered conversation, per server URL


def state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "agent-server" / "chat.json"


def server_key(url: str) -> str:
    """The state file's key for a server: its URL without a key or conversation id in the query."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("token", "conversation_id")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _read_state() -> dict[str, Any]:
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_last(url: str) -> str | None:
    value = _read_state().get(server_key(url))
    return value if isinstance(value, str) and value else None


def save_last(url: str, conversation_id: str | None) -> None:
    """Remember ``conversation_id`` for this server (forget it when None). A state file that cannot be
    written costs only the resume of the next run, so failures are ignored."""
    data = _read_state()
    if conversation_id is None:
        if data.pop(server_key(url), None) is None:
            return
    else:
        data[server_key(url)] = conversation_id
    path = state_file()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        scratch.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(scratch, path)


# URLs and formats


def with_conversation(url: str, conversation_id: str | None) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "conversation_id"]
    if conversation_id:
        query.append(("conversation_id", conversation_id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def http_base(url: str) -> str:
    """The HTTP API next to a WebSocket URL: ws→http, wss→https, same host and port, no path."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def shown_url(url: str) -> str:
    """A URL fit to print: without its query, which may hold a key."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


def format_usd(value: Any) -> str:
    """``$0.000068``, never ``6.8e-05``: at least cents, at most the server's nine decimals."""
    if value is None or isinstance(value, bool):
        return "cost unknown"
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return "cost unknown"
    if not amount.is_finite():
        return "cost unknown"
    amount = amount.quantize(Decimal("1e-9")).normalize()
    if amount.as_tuple().exponent > -2:
        amount = amount.quantize(Decimal("0.01"))
    return f"${amount:f}"


def format_time(stamp: Any) -> str:
    """An API timestamp (UTC) as local ``YYYY-MM-DD HH:MM``; anything unparsable as given."""
    if not isinstance(stamp, str):
        return "?"
    try:
        moment = datetime.fromisoformat(stamp.removesuffix("Z"))
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def first_words(text: Any, limit: int = FIRST_WORDS) -> str:
    words = " ".join(str(text or "").split())
    if len(words) <= limit:
        return words
    cut = words[:limit]
    if " " in cut[limit // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip() + "…"


def content_text(content: Any) -> str:
    """A turn's content as text: a string as it is; content blocks by their text (other blocks by their
    type in brackets), should the server send them."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'block')}]")
            else:
                parts.append(str(block))
        return " ".join(part for part in parts if part)
    return str(content)


def is_terminal(stream: Any) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no stdin, or a closed one
        return False


def usage_line(frame: dict[str, Any]) -> str:
    return (f"({frame.get('input_tokens', '?')} in / {frame.get('output_tokens', '?')} out tokens, "
            f"{format_usd(frame.get('estimated_cost_usd'))})")


def describe_close(code: int | None, reason: str = "") -> str:
    if code is None:
        return "the connection dropped"
    text = CLOSE_MEANINGS.get(code, f"closed with code {code}")
    return f"{text}: {reason}" if reason else text


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    reason = getattr(exc, "reason", None)  # urllib's URLError wraps the OSError
    return str(reason) if reason is not None and str(reason) else text


# What ends the run


class Exit(Exception):
    """End the run with ``status`` after printing ``message`` (one line)."""

    def __init__(self, status: int, message: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message


class ConversationGone(Exception):
    """The server has no such conversation for this key (4404)."""

    def __init__(self, conversation_id: str):
        super().__init__(conversation_id)
        self.conversation_id = conversation_id


def key_needed(url: str, token: str | None) -> Exit:
    if token:
        return Exit(2, f"the server at {shown_url(url)} refused this client key: give the right one with "
                       f"--token KEY or the {TOKEN_VARIABLE} environment variable")
    return Exit(2, f"the server at {shown_url(url)} wants a client key: give it with --token KEY or the "
                   f"{TOKEN_VARIABLE} environment variable")


class ApiError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(f"error ({kind}): {message}")


# Waiting for the first of several things


async def first_of(**waits: Awaitable[Any]) -> tuple[str, Any]:
    """Wait for the first of the named awaitables to finish and cancel the others; returns its name and
    result (its exception is raised). When several finish together, the one named first wins."""
    tasks = {name: asyncio.ensure_future(wait) for name, wait in waits.items()}
    try:
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks.values():
            task.cancel()
    finished = [(name, task) for name, task in tasks.items() if task.done() and not task.cancelled()]
    for _, task in finished[1:]:
        task.exception()  # a loser's failure is not reported ("exception was never retrieved")
    name, task = finished[0]  # asyncio.wait returned: one has finished
    return name, task.result()


class LineReader:
    """The lines of standard input (None at its end), read by a daemon thread with ``os.read``: the thread
    never blocks the exit, and holds no lock of ``sys.stdin`` that shutdown would wait for."""

    def __init__(self, fd: int = 0):
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(fd,), name="chat-stdin", daemon=True).start()

    async def get(self) -> str | None:
        return await self.queue.get()

    def _read(self, fd: int) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._put(line.decode(errors="replace").removesuffix("\r"))
        if pending:
            self._put(pending.decode(errors="replace"))
        self._put(None)

    def _put(self, item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the chat is over
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)


# Output


class Output:
    """stdout for the conversation, stderr for the client's own words; keeps every line whole."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._open: dict[int, bool] = {id(self.out): False, id(self.err): False}  # a line begun, not ended

    def _write(self, stream: TextIO, text: str) -> None:
        if text:
            stream.write(text)
            stream.flush()
            self._open[id(stream)] = not text.endswith("\n")

    def end_lines(self) -> None:
        for stream in (self.out, self.err):
            if self._open[id(stream)]:
                self._write(stream, "\n")

    def note(self, text: str) -> None:
        self.end_lines()
        self._write(self.err, text + "\n")

    def prompt(self, text: str) -> None:
        self.end_lines()
        self._write(self.err, text)

    def line_typed(self, typed_ahead: str | None = None) -> None:
        """A line was read at the prompt. The terminal's echo of it ended the prompt's line, unless it was
        typed ahead (during a reply): that one is shown after the prompt, as a shell does."""
        if typed_ahead is not None:
            self._write(self.err, typed_ahead + "\n")
        self._open[id(self.err)] = False

    def turn(self, role: str, text: str) -> None:
        self.end_lines()
        self._write(self.out, f"{LABELS.get(role, f'{role}> ')}{text}\n")

    def reply_begins(self) -> None:
        self.end_lines()
        self._write(self.out, LABELS["assistant"])

    def reply_text(self, text: str) -> None:
        self._write(self.out, text)


# One WebSocket connection


class Reply:
    """A message sent and its reply in flight."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.cancelling = False


FrameHandler = Callable[[dict[str, Any]], None]


class Session:
    """One connection to ``/agent/ws``: receives frames, hands each to the handler for its type."""

    def __init__(self, ws: ClientConnection, first: dict[str, Any], output: Output,
                 on_new_conversation: Callable[[str], None]):
        self.ws = ws
        self.conversation_id: str | None = first.get("conversation_id") or None
        self.turns: list[dict[str, Any]] = [t for t in first.get("turns") or [] if isinstance(t, dict)]
        self.output = output
        self.on_new_conversation = on_new_conversation
        self.reply: Reply | None = None
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.handlers: dict[str, FrameHandler] = {
            "start": self.on_start,
            "token": self.on_token,
            "done": self.on_done,
            "cancelled": self.on_cancelled,
            "error": self.on_error,
            "ping": lambda frame: None,
        }
        self._closing = False
        self._sending: set[asyncio.Task] = set()
        self._receiver = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        reason = "the connection dropped"
        try:
            async for raw in self.ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(frame, dict):
                    handler = self.handlers.get(frame.get("type"))  # type: ignore[arg-type]
                    if handler is not None:
                        handler(frame)
            reason = describe_close(self.ws.close_code, self.ws.close_reason or "")
        except ConnectionClosed as exc:
            reason = describe_close(exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else "the connection dropped"
        except Exception as exc:  # a bug in a handler: end the session rather than hang the prompt
            reason = f"the client failed on a frame: {exc!r}"
        finally:
            self.lost_reason = reason
            if not self._closing:
                self.lost.set()

    # Frame handlers

    def on_start(self, frame: dict[str, Any]) -> None:
        conversation_id = frame.get("conversation_id")
        if conversation_id and self.conversation_id is None:
            self.conversation_id = conversation_id
            self.on_new_conversation(conversation_id)
        self.output.reply_begins()

    def on_token(self, frame: dict[str, Any]) -> None:
        self.output.reply_text(str(frame.get("text", "")))

    def on_done(self, frame: dict[str, Any]) -> None:
        self._reply_ended()
        self.output.note(usage_line(frame))

    def on_cancelled(self, frame: dict[str, Any]) -> None:
        self._reply_ended()
        self.output.note("(cancelled)")

    def on_error(self, frame: dict[str, Any]) -> None:
        error = frame.get("error") if isinstance(frame.get("error"), dict) else {}
        retry = f" (retry in {error['retry_after']} s)" if error.get("retry_after") is not None else ""
        self._reply_ended()
        self.output.note(f"error ({error.get('type', 'error')}): {error.get('message', 'no message')}{retry}")

    def _reply_ended(self) -> None:
        self.output.end_lines()
        if self.reply is not None:
            self.reply.ended.set()
            self.reply = None

    # Sending

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def ask(self, message: str) -> Reply:
        reply = self.reply = Reply()
        await self.send({"type": "message", "message": message})
        return reply

    def cancel(self) -> None:
        """Ask the server to stop the reply in flight (its ``cancelled`` frame ends it)."""
        if self.reply is None or self.reply.cancelling:
            return
        self.reply.cancelling = True
        task = asyncio.create_task(self._send_quietly({"type": "cancel"}))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_quietly(self, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):  # the receiver reports the loss
            await self.send(frame)

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(BaseException):
            await self._receiver


# The run


Command = Callable[[str], Awaitable["int | None"]]


class ChatClient:
    """One run of the chat: the prompt loop, the commands, and the session in use (replaced on switch)."""

    def __init__(self, url: str, token: str | None, output: Output):
        self.url = url
        self.token = token
        self.output = output
        self.base_url = http_base(url)
        self.session: Session | None = None
        self.interrupted = asyncio.Event()  # Ctrl-C: what it means depends on what is being waited for
        self.interactive = is_terminal(sys.stdin)
        self.lines: LineReader | None = None
        self.commands: dict[str, Command] = {
            "/new": self.cmd_new,
            "/list": self.cmd_list,
            "/open": self.cmd_open,
            "/cost": self.cmd_cost,
            "/help": self.cmd_help,
            "/quit": self.cmd_quit,
        }
        self._signals = False

    # Connections

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def connect(self, conversation_id: str | None) -> Session:
        """A new session (on ``conversation_id``, or for a new conversation); raises ``ConversationGone`` or
        ``Exit``."""
        target = with_conversation(self.url, conversation_id)
        try:
            ws = await connect(target, additional_headers=self.headers(), max_size=None, open_timeout=10,
                               close_timeout=2)
        except (InvalidURI, ValueError) as exc:
            raise Exit(2, f"{shown_url(self.url)} is not a WebSocket URL like {DEFAULT_URL}: "
                          f"{describe_error(exc)}") from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise key_needed(self.url, self.token) from None
            raise Exit(1, f"the server at {shown_url(self.url)} answered HTTP {status} instead of opening a "
                          f"WebSocket: is that the agent server's /agent/ws?") from None
        except (OSError, WebSocketException) as exc:
            raise Exit(1, f"cannot reach the server at {shown_url(self.url)}: {describe_error(exc)}") from None
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), SESSION_TIMEOUT))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            if code == CLOSE_UNAUTHORIZED:
                raise key_needed(self.url, self.token) from None
            if code == CLOSE_NOT_FOUND and conversation_id:
                raise ConversationGone(conversation_id) from None
            reason = describe_close(code, exc.rcvd.reason if exc.rcvd else "")
            raise Exit(1, f"the server at {shown_url(self.url)} ended the connection at once ({reason})") from None
        except (TimeoutError, ValueError):
            await ws.close()
            raise Exit(1, f"the server at {shown_url(self.url)} did not open a chat session") from None
        if not isinstance(first, dict) or first.get("type") != "session":
            await ws.close()
            error = first.get("error") if isinstance(first, dict) and isinstance(first.get("error"), dict) else {}
            if error.get("type") == "not_found_error" and conversation_id:
                raise ConversationGone(conversation_id)
            if error.get("type") == "authentication_error":
                raise key_needed(self.url, self.token)
            if error:
                raise Exit(1, f"error ({error.get('type')}): {error.get('message')}")
            raise Exit(1, f"the server at {shown_url(self.url)} did not open a chat session")
        return Session(ws, first, self.output, self.conversation_started)

    def conversation_started(self, conversation_id: str) -> None:
        self.output.note(f"(new conversation {conversation_id})")
        save_last(self.url, conversation_id)

    async def switch(self, session: Session) -> None:
        old, self.session = self.session, session
        if old is not None:
            await old.close()

    def replay(self, session: Session, heading: str, hint: str = "") -> None:
        turns = session.turns
        shown = turns[-REPLAY_TURNS:]
        self.output.note(f"({heading} {session.conversation_id}: {len(turns)} turn{'' if len(turns) == 1 else 's'}"
                         f"{hint})")
        if len(shown) < len(turns):
            self.output.note(f"({len(turns) - len(shown)} earlier turns not shown)")
        for turn in shown:
            role, content = str(turn.get("role")), content_text(turn.get("content")).rstrip()
            mark = STATUS_MARKS.get(str(turn.get("status")), "") if role == "assistant" else ""
            self.output.turn(role, content + mark if content else mark.lstrip())

    def connection_lost(self, session: Session) -> int:
        resume = f"; run agent-server chat again to resume {session.conversation_id}" if session.conversation_id else ""
        self.output.note(f"connection to the server lost ({session.lost_reason}){resume}")
        return 1

    # The run

    async def run(self, conversation_id: str | None, new: bool) -> int:
        self._install_signals()
        what, session = await first_of(session=self.open_first(conversation_id, new),
                                       interrupt=self.interrupted.wait())
        if what == "interrupt":  # Ctrl-C while connecting
            self.output.end_lines()
            return 130
        await self.switch(session)
        if session.conversation_id:
            save_last(self.url, session.conversation_id)
            if conversation_id is None:
                self.replay(session, "resuming", "; --new starts afresh, /help lists the commands")
            else:
                self.replay(session, "opened", "; /help lists the commands")
        elif self.interactive:
            self.output.note("(a new conversation; /help lists the commands)")
        self.lines = LineReader()
        return await self.converse()

    async def open_first(self, conversation_id: str | None, new: bool) -> Session:
        """The session the run begins with: the conversation asked for, else the one remembered for this
        server, else (or when the server does not have that one) a new one."""
        target = conversation_id or (None if new else load_last(self.url))
        try:
            return await self.connect(target)
        except ConversationGone as gone:
            self.output.note(f"conversation {gone.conversation_id} is not on this server (or not yours); "
                             "starting a new one")
            if load_last(self.url) == gone.conversation_id:
                save_last(self.url, None)
            return await self.connect(None)

    async def converse(self) -> int:
        assert self.lines is not None
        while True:
            session = self.session
            assert session is not None
            if self.interactive:
                self.output.prompt(LABELS["user"])
            typed_ahead = not self.lines.queue.empty()  # its echo is above, mixed with the reply
            self.interrupted.clear()
            what, line = await first_of(lost=session.lost.wait(), interrupt=self.interrupted.wait(),
                                        line=self.lines.get())
            if what == "lost":
                return self.connection_lost(session)
            if what == "interrupt" or line is None:  # Ctrl-C at the prompt, or the end of the input
                self.output.end_lines()
                return 0
            self.output.line_typed(line if typed_ahead and self.interactive else None)
            status = await self.handle(line)
            if status is not None:
                return status

    async def handle(self, line: str) -> int | None:
        if not line.strip():
            return None
        if line.startswith("//"):
            return await self.send_message(line[1:])
        if line.startswith("/"):
            name, *argument = line.split(maxsplit=1)
            command = self.commands.get(name.lower())
            if command is None:
                self.output.note(f"unknown command {name}; /help lists them")
                return None
            return await self.run_command(command, argument[0].strip() if argument else "")
        return await self.send_message(line)

    async def run_command(self, command: Command, argument: str) -> int | None:
        self.interrupted.clear()
        try:
            what, status = await first_of(done=command(argument), interrupt=self.interrupted.wait())
        except ApiError as exc:
            self.output.note(str(exc))
            return None
        if what == "interrupt":
            self.output.note("(interrupted)")
            return None
        return status

    async def send_message(self, message: str) -> int | None:
        session = self.session
        assert session is not None
        if not self.interactive:  # no terminal echoed it: show it, so that stdout reads as the conversation
            self.output.turn("user", message)
        try:
            reply = await session.ask(message)
        except ConnectionClosed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.lost.wait(), 5)
            return self.connection_lost(session)
        while True:
            self.interrupted.clear()
            what, _ = await first_of(ended=reply.ended.wait(), lost=session.lost.wait(),
                                     interrupt=self.interrupted.wait())
            if what == "ended":
                return None
            if what == "lost":
                return self.connection_lost(session)
            if reply.cancelling:  # Ctrl-C again while the cancel is on its way: quit
                self.output.note("(quit before the reply ended)")
                return 130
            session.cancel()

    # Ctrl-C

    def _install_signals(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.interrupted.set)
            self._signals = True

    async def close(self) -> None:
        if self._signals:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
        if self.session is not None:
            await self.session.close()

    # HTTP

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.base_url + path, headers={"Accept": "application/json",
                                                                         **self.headers()})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()
            if exc.code == 401:
                raise key_needed(self.url, self.token) from None
            try:
                error = json.loads(body)["error"]
                kind, message = str(error["type"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                kind, message = "http_error", f"HTTP {exc.code} from {self.base_url}{path}"
            raise ApiError(kind, message) from None
        except (OSError, urllib.error.URLError) as exc:
            raise ApiError("connection_error", f"cannot reach {self.base_url}: {describe_error(exc)}") from None
        except ValueError:
            raise ApiError("api_error", f"{self.base_url}{path} did not answer JSON") from None

    async def get(self, path: str) -> Any:
        return await asyncio.to_thread(self._get, path)

    async def audit(self, conversation_id: str) -> dict[str, Any]:
        return await self.get(f"/conversations/{quote(conversation_id, safe='')}")

    # Commands: each returns None to go on, or an exit status

    async def cmd_help(self, argument: str) -> int | None:
        self.output.note(HELP)
        return None

    async def cmd_quit(self, argument: str) -> int | None:
        return 0

    async def cmd_new(self, argument: str) -> int | None:
        await self.switch(await self.connect(None))
        self.output.note("(new conversation: its id comes with the first reply)")
        return None

    async def cmd_open(self, argument: str) -> int | None:
        if not argument:
            self.output.note("usage: /open ID (/list shows the ids)")
            return None
        try:
            session = await self.connect(argument)
        except ConversationGone:
            current = self.session.conversation_id if self.session else None
            staying = f"staying in {current}" if current else "staying in this new conversation"
            self.output.note(f"conversation {argument} is not on this server (or not yours); {staying}")
            return None
        await self.switch(session)
        save_last(self.url, argument)
        self.replay(session, "opened")
        return None

    async def cmd_cost(self, argument: str) -> int | None:
        conversation_id = self.session.conversation_id if self.session else None
        if not conversation_id:
            self.output.note("(nothing spent yet: this conversation begins with its first reply)")
            return None
        totals = (await self.audit(conversation_id)).get("totals") or {}
        cache = ""
        if totals.get("cache_creation_input_tokens") or totals.get("cache_read_input_tokens"):
            cache = (f", cache {totals.get('cache_creation_input_tokens', 0)} written / "
                     f"{totals.get('cache_read_input_tokens', 0)} read")
        requests = totals.get("requests", 0)
        self.output.note(f"{conversation_id}: {requests} request{'' if requests == 1 else 's'}, "
                         f"{totals.get('input_tokens', 0)} in / {totals.get('output_tokens', 0)} out tokens"
                         f"{cache}, {format_usd(totals.get('cost_usd'))}")
        return None

    async def cmd_list(self, argument: str) -> int | None:
        listing = await self.get(f"/conversations?limit={LIST_LIMIT}")
        conversations = [c for c in listing.get("conversations") or [] if isinstance(c, dict) and c.get("id")]
        if not conversations:
            self.output.note("(no conversations yet)")
            return None
        untitled = [c["id"] for c in conversations if not c.get("title")]
        openings = dict(zip(untitled, await asyncio.gather(*(self.opening(i) for i in untitled)), strict=True))
        current = self.session.conversation_id if self.session else None
        width = max(len(str(c["id"])) for c in conversations)
        for conversation in conversations:
            cid = str(conversation["id"])
            words = first_words(conversation.get("title") or openings.get(cid, ""))
            cost = format_usd((conversation.get("totals") or {}).get("cost_usd"))
            self.output.note(f"{'*' if cid == current else ' '} {cid:<{width}}  "
                             f"{format_time(conversation.get('updated_at'))}  {cost:>12}  {words}")
        return None

    async def opening(self, conversation_id: str) -> str:
        """The first words of a conversation's first message ("" when it cannot be read)."""
        try:
            turns = (await self.audit(conversation_id)).get("turns") or []
        except ApiError:
            return ""
        return next((content_text(t.get("content")) for t in turns if isinstance(t, dict) and t.get("role") == "user"),
                    "")


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
        await client.close()


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
