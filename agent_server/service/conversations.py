"""The conversation use cases: the audit, the list, a page of history, the title, delete and export."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from .. import errors
from ..db import reads
from ..db.base import Database

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
        turns = await reads.list_turns(conn, conversation_id=record.id)
        calls = await reads.list_calls(conn, conversation_id=record.id)
        runs = await reads.list_tool_runs(conn, conversation_id=record.id)
        replies = await reads.list_replies(conn, conversation_id=record.id)
        totals = await reads.totals_by_conversation(conn, conversation_ids=[record.id])
        return ConversationAudit(record, turns, calls, runs, replies, totals.get(record.id, reads.Totals()))

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
        """Every conversation of ``owner``, oldest first, one audit at a time (memory stays constant)."""
        cursor: tuple[datetime, str] | None = None
        while True:
            async with self.db.read() as conn:
                page = await reads.list_conversations_ascending(conn, owner=owner, limit=50, after=cursor)
            if not page:
                return
            for record in page:
                async with self.db.read() as conn:
                    current = await reads.get_conversation(conn, conversation_id=record.id, owner=owner)
                    if current is None:
                        continue
                    audit = await self._audit_of(conn, current)
                yield audit
            cursor = (page[-1].created_at, page[-1].id)


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
    return [{"tool_use_id": run.tool_use_id, "name": run.name, "input": json.loads(run.input), "kind": run.action}
            for run in runs]
