"""``agent-server chat``: a terminal client for the WebSocket, for trying the product by hand.

Prints tokens as they arrive; Ctrl-C cancels a reply in flight (and quits when idle); the conversation id
is kept in a small state file so the next run resumes it (``--new`` starts afresh). Works with piped
input too: one message per line, each sent once the previous reply has ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

END_FRAMES = {"done", "error", "cancelled"}


def state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "agent-server" / "chat.json"


def load_last(url: str) -> str | None:
    try:
        return json.loads(state_file().read_text()).get(url)
    except (OSError, ValueError, AttributeError):
        return None


def save_last(url: str, conversation_id: str) -> None:
    path = state_file()
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        data = {}
    data[url] = conversation_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def with_conversation(url: str, conversation_id: str | None) -> str:
    if not conversation_id:
        return url
    parts = urlsplit(url)
    query = (parts.query + "&" if parts.query else "") + urlencode({"conversation_id": conversation_id})
    return urlunsplit(parts._replace(query=query))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def chat(url: str, conversation_id: str | None, token: str | None, new: bool) -> int:
    if conversation_id is None and not new:
        conversation_id = load_last(url)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    loop = asyncio.get_running_loop()
    try:
        ws = await connect(with_conversation(url, conversation_id), additional_headers=headers, max_size=None)
    except OSError as exc:
        _say(f"cannot connect to {url}: {exc}")
        return 1
    async with ws:
        session = json.loads(await ws.recv())
        if session.get("type") == "error":
            _say(f"error: {session['error']['message']}")
            return 1
        if session.get("conversation_id"):
            _say(f"(resuming {session['conversation_id']}: {len(session['turns'])} turns; --new starts afresh)")
            for turn in session["turns"][-6:]:
                _say(f"{turn['role']}> {turn['content']}")
        replying = asyncio.Event()
        finished = asyncio.Event()

        def on_interrupt() -> None:
            if replying.is_set():
                asyncio.ensure_future(ws.send(json.dumps({"type": "cancel"})))
            else:
                finished.set()

        if sys.stdin.isatty():
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
        interactive = sys.stdin.isatty()
        try:
            while not finished.is_set():
                if interactive:
                    print("you> ", end="", file=sys.stderr, flush=True)
                reader = loop.run_in_executor(None, sys.stdin.readline)
                done, _ = await asyncio.wait({reader, asyncio.ensure_future(finished.wait())},
                                            return_when=asyncio.FIRST_COMPLETED)
                if reader not in done:
                    break
                line = reader.result()
                if not line:
                    break
                message = line.rstrip("\n")
                if not message.strip():
                    continue
                await ws.send(json.dumps({"type": "message", "message": message}))
                replying.set()
                status = await print_reply(ws, url)
                replying.clear()
                if status is not None:
                    return status
        except ConnectionClosed as exc:
            _say(f"\n(connection closed: {exc.rcvd.code if exc.rcvd else 'no close frame'})")
            return 1
        finally:
            if interactive:
                loop.remove_signal_handler(signal.SIGINT)
    return 0


async def print_reply(ws, url: str) -> int | None:
    """Print one reply's frames; None to go on, or an exit status."""
    while True:
        frame = json.loads(await ws.recv())
        kind = frame.get("type")
        if kind == "start":
            save_last(url, frame["conversation_id"])
            print("claude> ", end="", flush=True)
        elif kind == "token":
            print(frame["text"], end="", flush=True)
        elif kind == "done":
            print(flush=True)
            cost = frame.get("estimated_cost_usd")
            _say(f"({frame['output_tokens']} tokens" + (f", ${cost:.6f})" if cost is not None else ")"))
            return None
        elif kind == "cancelled":
            print(flush=True)
            _say("(cancelled)")
            return None
        elif kind == "error":
            print(flush=True)
            _say(f"error ({frame['error']['type']}): {frame['error']['message']}")
            return None


def run_chat(*, url: str, conversation_id: str | None, token: str | None, new: bool = False) -> int:
    try:
        return asyncio.run(chat(url, conversation_id, token, new))
    except KeyboardInterrupt:
        return 130
