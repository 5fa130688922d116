"""``ChatClient`` owns the run: the key, the state file, the input, Ctrl-C, which conversation is open, and the
prompt loop: read a line; a command runs, a message is sent and its reply followed to its end (answering the
actions it pauses for, reconnecting when the connection drops), then the prompt again."""

from __future__ import annotations

import sys

from websockets.exceptions import ConnectionClosed

from .actions import answers
from .commands import Command, Commands
from .errors import ConversationGone
from .http import Api, ApiError
from .output import Output, is_terminal
from .reconnect import Reconnector
from .render import LABELS, replayed
from .session import Session, open_session
from .state import load_last, save_last
from .terminal import CtrlC, LineReader, first_of
from .view import ReplyView, Waiter

REPLAY_TURNS = 10  # turns shown on resume and /open


class ChatClient:
    def __init__(self, url: str, token: str | None, output: Output):
        self.url = url
        self.token = token
        self.output = output
        self.api = Api(url, token)
        self.view = ReplyView(output)
        self.session: Session | None = None
        self.ctrl_c = CtrlC()  # what it means depends on what is being waited for
        self.interactive = is_terminal(sys.stdin)
        self.lines: LineReader | None = None
        self.commands = Commands(self)
        self.links = Reconnector(self)

    @property
    def conversation_id(self) -> str | None:
        return self.session.conversation_id if self.session else None

    # Connections

    async def connect(self, conversation_id: str | None, after: int = 0) -> Session:
        return await open_session(self.url, self.token, conversation_id, self.view, self.conversation_started, after)

    def conversation_started(self, conversation_id: str) -> None:
        self.output.note(f"(new conversation {conversation_id})")
        save_last(self.url, conversation_id)

    async def switch(self, session: Session) -> None:
        old, self.session = self.session, session
        if old is not None:
            await old.close()

    def begin(self, session: Session, heading: str | None = None, hint: str = "") -> None:
        """A conversation opened: show its recent turns (under ``heading``), then what it found running or
        pending, and start receiving."""
        self.view.forget()
        self.view.seen.update(str(t["reply_id"]) for t in session.turns if t.get("reply_id"))
        if heading and session.conversation_id:
            self.replay(session, heading, hint)
        if session.running_reply_id:
            self.view.expect()
        elif session.pending:
            self.view.paused(session.pending)
        session.start()

    def replay(self, session: Session, heading: str, hint: str = "") -> None:
        running = session.running_reply_id  # its steps are shown by its frames
        turns = [t for t in session.turns if not (running and t.get("reply_id") == running and t.get("step"))]
        shown = turns[-REPLAY_TURNS:]
        self.output.note(f"({heading} {session.conversation_id}: {len(turns)} turn{'' if len(turns) == 1 else 's'}"
                         f"{hint})")
        if len(shown) < len(turns):
            self.output.note(f"({len(turns) - len(shown)} earlier turns not shown)")
        for turn in shown:
            for line in replayed(turn):
                self.output.line(line)

    def connection_lost(self, session: Session) -> int:
        resume = f"; run agent-server chat again to resume {session.conversation_id}" if session.conversation_id else ""
        self.output.note(f"connection to the server lost ({session.lost_reason}){resume}")
        return 1

    # The run

    async def run(self, conversation_id: str | None, new: bool) -> int:
        self.ctrl_c.install()
        what, session = await first_of(session=self.open_first(conversation_id, new), interrupt=self.ctrl_c.wait())
        if what == "interrupt":  # Ctrl-C while connecting
            self.output.end_lines()
            return 130
        await self.switch(session)
        heading, hint = None, ""
        if session.conversation_id:
            save_last(self.url, session.conversation_id)
            heading, hint = (("resuming", "; --new starts afresh, /help lists the commands") if conversation_id is None
                             else ("opened", "; /help lists the commands"))
        elif self.interactive:
            self.output.note("(a new conversation; /help lists the commands)")
        self.lines = LineReader()
        self.begin(session, heading, hint)
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
            if self.view.waiter is not None:  # a reply in flight, or actions to answer
                status = await self.follow()
                if status is not None:
                    return status
                continue
            session = self.session
            assert session is not None
            if self.interactive:
                self.output.prompt(LABELS["user"])
            typed_ahead = not self.lines.queue.empty()  # its echo is above, mixed with the reply
            self.ctrl_c.clear()
            what, line = await first_of(lost=session.lost.wait(), interrupt=self.ctrl_c.wait(), line=self.lines.get())
            if what == "lost":
                status = await self.links.reconnect()
                if status is not None:
                    return status
                continue
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
            command = self.commands.by_name.get(name.lower())
            if command is None:
                self.output.note(f"unknown command {name}; /help lists them")
                return None
            return await self.run_command(command, argument[0].strip() if argument else "")
        return await self.send_message(line)

    async def run_command(self, command: Command, argument: str) -> int | None:
        self.ctrl_c.clear()
        try:
            what, status = await first_of(done=command(argument), interrupt=self.ctrl_c.wait())
        except ApiError as exc:
            self.output.note(str(exc))
            return None
        if what == "interrupt":
            self.output.note("(interrupted)")
            return None
        return status

    # A message and its reply

    async def send_message(self, message: str) -> int | None:
        if not self.interactive:  # no terminal echoed it: show it, so that stdout reads as the conversation
            self.output.turn("user", message)
        await self.send_waited(self.view.expect(message))
        return await self.follow()

    async def send_waited(self, waiter: Waiter) -> None:
        assert self.session is not None and waiter.message is not None
        try:
            await self.session.send({"type": "message", "message": waiter.message})
        except ConnectionClosed:
            return  # not sent: once reconnected, it is sent again
        waiter.sent = True

    async def follow(self) -> int | None:
        """Wait for the end of the reply waited for (and of those that carry it on after answers)."""
        while (waiter := self.view.waiter) is not None:
            session = self.session
            assert session is not None
            self.ctrl_c.clear()
            waits = {"ended": waiter.ended.wait(), "lost": session.lost.wait(), "interrupt": self.ctrl_c.wait()}
            if session.resumed:
                waits["stalled"] = self.links.watch()
            what, _ = await first_of(**waits)
            if what == "ended":
                if self.view.waiter is waiter:
                    self.view.waiter = None
                final = waiter.final or {}
                if final.get("type") == "done" and final.get("status") == "requires_action":
                    await self.answer(final.get("pending") or [])
            elif what == "lost":
                status = await self.links.reconnect()
                if status is not None:
                    return status
            elif what == "interrupt":
                if waiter.cancelling:  # Ctrl-C again while the cancel is on its way: quit
                    self.output.note("(quit before the reply ended)")
                    return 130
                waiter.cancelling = True
                session.cancel()
        return None

    # Pending actions

    async def answer(self, pending: list[dict]) -> None:
        frames = await answers(pending, self.ask, self.output.note)
        if frames is None:
            self.output.note("(left unanswered: a message you send now answers what is pending as not run)")
            return
        if not frames:
            return
        self.view.expect()  # the reply that carries on starts by itself once all are answered
        assert self.session is not None
        try:
            for frame in frames:
                await self.session.send(frame)
        except ConnectionClosed:
            pass  # once reconnected, the session lists what is still pending, and it is asked again

    async def ask(self, question: str) -> str | None:
        """A line answering ``question``; None on Ctrl-C or at the end of the input."""
        assert self.lines is not None
        self.output.prompt(question)
        self.ctrl_c.clear()
        what, line = await first_of(interrupt=self.ctrl_c.wait(), line=self.lines.get())
        if what == "interrupt" or line is None:
            self.output.end_lines()
            return None
        self.output.line_typed(None if self.interactive else line)
        return line
