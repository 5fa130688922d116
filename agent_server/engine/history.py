"""Which stored turns go upstream, and how: the history rules.

The stored content blocks of each turn go verbatim, oldest first, append-only. Per reply:

- every complete turn goes: the prompt, each step's assistant message and the tool results that answered it;
- turns that are not complete (a reply cut short: ``incomplete``, ``failed``) stay in the audit only;
- a prompt goes only when its reply kept at least one complete assistant message: a reply cut short before any
  tool ran is left out whole (so the upstream never sees a question twice), while one cut after tools ran keeps
  its completed steps (their tools ran, and the model must know it) — the engine closed the step it was cut in
  with ``is_error`` results;
- an assistant message the API would refuse (no blocks, or text of whitespace only) is left out.

Consecutive messages of one role become one message (the API would merge them anyway): tool results of a reply cut
short, then the next prompt, make one user message with the results first, as the API requires.

Turns are grouped into ``Unit``s, the pieces the context window leaves out whole: a reply's turns, with the
replies that continued it (answers to its pending actions) — so a ``tool_use`` never loses its ``tool_result``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..db.reads import HistoryRow
from . import blocks as b

_SHORT = 4096  # assistant messages shorter than this are checked for emptiness (a long one cannot be empty)


@dataclass
class Message:
    role: str
    blocks: str  # JSON text of the content blocks
    tokens: int
    turns: int = 1  # stored turns it stands for (0 for what the current reply has not stored yet)


@dataclass
class Unit:
    first_seq: int
    messages: list[Message] = field(default_factory=list)
    last_seq: int | None = None  # the seq of its last stored turn (None: first_seq)

    @property
    def tokens(self) -> int:
        return sum(message.tokens for message in self.messages)

    @property
    def turns(self) -> int:
        return sum(message.turns for message in self.messages)


def _sendable_assistant(row: HistoryRow) -> bool:
    if len(row.blocks) >= _SHORT:
        return True
    try:
        return not b.is_empty(json.loads(row.blocks))
    except ValueError:
        return False


def units_of(rows: list[HistoryRow]) -> list[Unit]:
    """The history that may go upstream, as units, oldest first."""
    units: list[Unit] = []
    for group in _by_reply(rows):
        complete = [row for row in group if row.status == "complete"]
        kept: list[Message] = []
        prompt: HistoryRow | None = None
        for row in complete:
            if row.role == "assistant":
                if not _sendable_assistant(row):
                    continue
                if prompt is not None:
                    kept.append(_message(prompt))
                    prompt = None
                kept.append(_message(row))
            elif row.step == 0 or (row.step is None and not kept):
                prompt = row  # held until an assistant message shows its reply got somewhere
            else:
                kept.append(_message(row))  # tool results
        if not kept:
            continue
        continues = group[0].role == "user" and group[0].step not in (0, None)
        if continues and not units:
            # It answers a paused reply that is not in what was read (the window starts after it): its tool
            # results would go without their tool_use. Left out whole.
            continue
        if continues:
            units[-1].messages.extend(kept)
            units[-1].last_seq = group[-1].seq
        else:
            units.append(Unit(group[0].seq, kept, group[-1].seq))
    return units


def _by_reply(rows: list[HistoryRow]) -> list[list[HistoryRow]]:
    groups: list[list[HistoryRow]] = []
    for row in rows:
        if groups and row.reply_id is not None and groups[-1][0].reply_id == row.reply_id:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _message(row: HistoryRow) -> Message:
    return Message(row.role, row.blocks, row.tokens or b.estimate_tokens(row.blocks))


def encode_messages(messages: list[Message]) -> list[str]:
    """The messages as the request's JSON texts, consecutive ones of one role merged."""
    merged: list[list] = []
    for message in messages:
        if merged and merged[-1][0] == message.role:
            merged[-1][1] = b.join_blocks(merged[-1][1], message.blocks)
        else:
            merged.append([message.role, message.blocks])
    return [b.message_json(role, blocks) for role, blocks in merged]
