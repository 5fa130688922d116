"""The conversation use cases: the audit, the list, a page of history, the title, delete and export."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from .. import errors
from ..db import reads
from ..db.base import Database
from .opening import tool_order

MAX_PAGE = 200


@dataclass(frozen=True)
class ConversationAudit:
    conversation: reads.ConversationRecord
    turns: list
    calls: list
    tool_runs: list
    replies: list
    totals: reads.Totals


@dataclass(frozen=True)
class ConversationPage:
    conversations: list[reads.ConversationRecord]
    totals: dict[str, reads.Totals]
    next_cursor: str | None


@dataclass(frozen=True)
class TurnPage:
    turns: list
    before: int | None  # pass as ``before`` for the next older page (None: nothing older)


class ConversationService:
    def __init__(self, db: Database):
        self.db = db

    async def _owned(self, conn, owner: str, conversation_id: str) -> reads.ConversationRecord:  # type: ignore[no-untyped-def]
        record = await reads.get_conversation(conn, conversation_id=conversation_id, owner=owner)
        if record is None:
            raise errors.conversation_not_found(conversation_id)
        return record

    async def audit(self, *, owner: str, conversation_id: str) -> ConversationAudit:
        async with self.db.read() as conn:
            record = await self._owned(conn, owner, conversation_id)
            return await self._audit_of(conn, record)

    async def _audit_of(self, conn, record: reads.ConversationRecord) -> ConversationAudit:  # type: ignore[no-untyped-def]
        (audit,) = await _audits_of(conn, [record])
        return audit

    async def turns_page(self, *, owner: str, conversation_id: str, before: int | None, limit: int) -> TurnPage:
        """The newest ``limit`` turns before seq ``before`` (the newest of all without it), oldest first."""
        async with self.db.read() as conn:
            await self._owned(conn, owner, conversation_id)
            turns = await reads.list_turns(conn, conversation_id=conversation_id, before_seq=before, limit=limit + 1)
        more = len(turns) > limit
        turns = turns[-limit:] if more else turns
        return TurnPage(turns, turns[0].seq if more and turns else None)

    async def list(self, *, owner: str, limit: int, cursor: str | None) -> ConversationPage:
        before = decode_cursor(cursor) if cursor else None
        async with self.db.read() as conn:
            rows = await reads.list_conversations(conn, owner=owner, limit=limit + 1, before=before)
            page = rows[:limit]
            totals = await reads.totals_by_conversation(conn, conversation_ids=[c.id for c in page])
        next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
        return ConversationPage(page, totals, next_cursor)

    async def pending_actions(self, *, owner: str, conversation_id: str) -> list[dict]:
        return await pending_actions_of(self.db, owner=owner, conversation_id=conversation_id)

    async def export(self, *, owner: str) -> AsyncIterator[ConversationAudit]:
        """Every conversation of ``owner``, oldest first, a page of audits at a time: memory stays bounded by the
        page (at most ``EXPORT_PAGE`` conversations, and no more than ``EXPORT_PAGE_CHARS`` of turn content unless
        one conversation alone is larger). A page is read in one transaction with one query per table: read one
        conversation at a time, 10,000 conversations took minutes."""
        cursor: tuple[datetime, str] | None = None
        while True:
            async with self.db.read() as conn:
                page = await reads.list_conversations_ascending(conn, owner=owner, limit=EXPORT_PAGE, after=cursor)
                if not page:
                    return
                page = await _within_size(conn, page)
                audits = await _audits_of(conn, page)
            for audit in audits:
                yield audit
            cursor = (page[-1].created_at, page[-1].id)


EXPORT_PAGE = 50
EXPORT_PAGE_CHARS = 4_000_000


async def _within_size(conn, page: list[reads.ConversationRecord]) -> list[reads.ConversationRecord]:  # type: ignore[no-untyped-def]
    """The first conversations of ``page`` whose turns hold no more than ``EXPORT_PAGE_CHARS`` (at least one)."""
    sizes = await reads.content_sizes(conn, conversation_ids=[record.id for record in page])
    kept, total = [], 0
    for record in page:
        total += sizes.get(record.id, 0)
        if kept and total > EXPORT_PAGE_CHARS:
            break
        kept.append(record)
    return kept


async def _audits_of(conn, page: list[reads.ConversationRecord]) -> list[ConversationAudit]:  # type: ignore[no-untyped-def]
    """The audits of ``page``'s conversations, each table read once for all of them."""
    ids = [record.id for record in page]
    rows = await reads.audit_rows(conn, conversation_ids=ids)
    totals = await reads.totals_by_conversation(conn, conversation_ids=ids)
    return [ConversationAudit(record, rows.turns[record.id], rows.calls[record.id],
                              in_model_order(rows.tool_runs[record.id], rows.turns[record.id]),
                              rows.replies[record.id], totals.get(record.id, reads.Totals()))
            for record in page]


def in_model_order(runs: list, turns: list) -> list:
    """Tool runs in the order the model asked for them: a step's runs are stored at one moment, so their stored
    order within the step says nothing; the step's ``tool_use`` blocks do."""
    asked: dict[str, int] = {}
    for turn in turns:
        if turn.role == "assistant" and turn.content_blocks and '"tool_use"' in turn.content_blocks:
            for block in json.loads(turn.content_blocks):
                if block.get("type") == "tool_use":
                    asked.setdefault(block.get("id"), len(asked))
    return sorted(runs, key=lambda run: (asked.get(run.tool_use_id, len(asked)),))


def encode_cursor(created_at: datetime, conversation_id: str) -> str:
    raw = f"{created_at.isoformat()}|{conversation_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, conversation_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), conversation_id
    except (ValueError, UnicodeDecodeError):
        raise errors.ValidationFailed("'before' is not a cursor this server issued.") from None


async def pending_actions_of(db: Database, *, owner: str, conversation_id: str) -> list[dict]:
    """The tool calls the conversation's paused reply waits on (empty when none)."""
    import json

    async with db.read() as conn:
        record = await reads.get_conversation(conn, conversation_id=conversation_id, owner=owner)
        if record is None:
            raise errors.conversation_not_found(conversation_id)
        runs = await reads.pending_runs(conn, conversation_id=conversation_id)
        if runs:  # in the order the model asked for them, as ``requires_action`` listed them
            order = await tool_order(conn, reply_id=runs[0].reply_id, step=runs[0].step, fallback=[])
            position = {tool_use_id: n for n, tool_use_id in enumerate(order)}
            runs = sorted(runs, key=lambda run: position.get(run.tool_use_id, len(position)))
    return [{"tool_use_id": run.tool_use_id, "name": run.name, "input": json.loads(run.input), "kind": run.action}
            for run in runs]
