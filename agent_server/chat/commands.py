"""The commands: lines starting with ``/``, never sent to the model. Each is a ``cmd_*`` method, found by name;
each returns None to go on, or an exit status. Switching conversation (``/new``, ``/open``) opens the new
connection first and only then drops the old one, so a failed switch leaves the chat where it was."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .errors import ConversationGone
from .render import format_time, format_usd
from .state import save_last

if TYPE_CHECKING:
    from .client import ChatClient

LIST_LIMIT = 10  # conversations shown by /list
Command = Callable[[str], Awaitable["int | None"]]

HELP = """\
commands (never sent to the model):
  /new       start a new conversation
  /list      the 10 most recent conversations: id, last update, cost, title
  /open ID   switch to conversation ID and show its recent turns
  /cost      this conversation's requests, tokens and cost so far
  /help      this list
  /quit      quit (so do Ctrl-D, and Ctrl-C at the prompt)
  //text     sends the message "/text"
Ctrl-C during a reply cancels it. Tools the model calls show as "→ tool(input)" and "← result"; the chat asks
before a tool that needs approval runs. A dropped connection is reconnected by itself."""


class Commands:
    def __init__(self, client: ChatClient):
        self.client = client
        self.by_name: dict[str, Command] = {
            "/new": self.cmd_new,
            "/list": self.cmd_list,
            "/open": self.cmd_open,
            "/cost": self.cmd_cost,
            "/help": self.cmd_help,
            "/quit": self.cmd_quit,
        }

    def note(self, text: str) -> None:
        self.client.output.note(text)

    async def cmd_help(self, argument: str) -> int | None:
        self.note(HELP)
        return None

    async def cmd_quit(self, argument: str) -> int | None:
        return 0

    async def cmd_new(self, argument: str) -> int | None:
        client = self.client
        session = await client.connect(None)
        await client.switch(session)
        client.begin(session)
        self.note("(new conversation: its id comes with the first reply)")
        return None

    async def cmd_open(self, argument: str) -> int | None:
        client = self.client
        if not argument:
            self.note("usage: /open ID (/list shows the ids)")
            return None
        try:
            session = await client.connect(argument)
        except ConversationGone:
            current = client.conversation_id
            staying = f"staying in {current}" if current else "staying in this new conversation"
            self.note(f"conversation {argument} is not on this server (or not yours); {staying}")
            return None
        await client.switch(session)
        save_last(client.url, argument)
        client.begin(session, "opened")
        return None

    async def cmd_cost(self, argument: str) -> int | None:
        conversation_id = self.client.conversation_id
        if not conversation_id:
            self.note("(nothing spent yet: this conversation begins with its first reply)")
            return None
        totals = (await self.client.api.audit(conversation_id)).get("totals") or {}
        cache = ""
        if totals.get("cache_creation_input_tokens") or totals.get("cache_read_input_tokens"):
            cache = (f", cache {totals.get('cache_creation_input_tokens', 0)} written / "
                     f"{totals.get('cache_read_input_tokens', 0)} read")
        requests = totals.get("requests", 0)
        self.note(f"{conversation_id}: {requests} request{'' if requests == 1 else 's'}, "
                  f"{totals.get('input_tokens', 0)} in / {totals.get('output_tokens', 0)} out tokens"
                  f"{cache}, {format_usd(totals.get('cost_usd'))}")
        return None

    async def cmd_list(self, argument: str) -> int | None:
        listing = await self.client.api.get(f"/conversations?limit={LIST_LIMIT}")
        conversations = [c for c in listing.get("conversations") or [] if isinstance(c, dict) and c.get("id")]
        if not conversations:
            self.note("(no conversations yet)")
            return None
        current = self.client.conversation_id
        width = max(len(str(c["id"])) for c in conversations)
        for conversation in conversations:
            cid = str(conversation["id"])
            title = " ".join(str(conversation.get("title") or "(untitled)").split())
            cost = format_usd((conversation.get("totals") or {}).get("cost_usd"))
            self.note(f"{'*' if cid == current else ' '} {cid:<{width}}  "
                      f"{format_time(conversation.get('updated_at'))}  {cost:>12}  {title}")
        return None
