"""The conversation use cases shared by every route: open a reply, read the audit, list conversations.

Knows nothing of HTTP. Routes call ``open_reply`` (which commits the user turn and takes the reply lock
before anything goes upstream), then drive the returned ``Reply``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from datetime import datetime

from . import errors
from .claude import Claude, UpstreamRequest
from .db import reply_lock, repository, writes
from .db.engine import Database
from .db.models import utcnow
from .history import upstream_messages
from .metrics import Metrics
from .pricing import PriceTable
from .reply import Reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplyParams:
    message: str
    conversation_id: str | None = None
    system: str | None = None
    model: str | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class ConversationAudit:
    conversation: repository.ConversationRecord
    turns: list
    calls: list
    totals: repository.Totals


@dataclass(frozen=True)
class ConversationPage:
    conversations: list[repository.ConversationRecord]
    totals: dict[str, repository.Totals]
    next_cursor: str | None


class ConversationService:
    def __init__(
        self,
        *,
        db: Database,
        claude: Claude,
        prices: PriceTable,
        default_model: str,
        default_max_tokens: int,
        max_replies_per_owner: int = 8,
        metrics: Metrics | None = None,
    ):
        self.db = db
        self.claude = claude
        self.prices = prices
        self.default_model = default_model
        self.default_max_tokens = default_max_tokens
        self.max_replies_per_owner = max_replies_per_owner
        self.metrics = metrics or Metrics()
        self._owner_of: dict[Reply, str] = {}
        self.active: set[Reply] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self._holder = reply_lock.this_process()

    # -- replies -------------------------------------------------------------------------------------

    async def open_reply(self, *, owner: str, params: ReplyParams, route: str) -> Reply:
        """Validate against the stored conversation, take its reply lock and commit the user turn.

        Raises NotFound (unknown or foreign conversation), ValidationFailed (system differs, unknown
        model) or Conflict (a reply is already being generated, in any process).
        """
        if self.draining:
            raise errors.ShuttingDown("The server is shutting down; try again in a moment.")
        if sum(1 for who in self._owner_of.values() if who == owner) >= self.max_replies_per_owner:
            self.metrics.rate_limited.labels("concurrency").inc()
            raise errors.RateLimited(
                f"At most {self.max_replies_per_owner} replies may be in flight per client key; retry shortly.",
                retry_after=1,
            )
        model = params.model
        if model is not None and model not in self.prices:
            raise errors.ValidationFailed(f"Unknown model {model!r}.")
        opening = self.db.submit_write(
            _begin_reply, owner=owner, params=params, default_model=model or self.default_model,
            token=reply_lock.new_token(), holder=self._holder, now=utcnow(),
        )
        try:
            begun = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The caller left while the transaction ran: once it has committed, give the lock back.
            opening.add_done_callback(self._release_abandoned)
            raise
        conversation_id, model, system, seq, history, prompt_turn_id, token = begun
        upstream = UpstreamRequest(
            model=model,
            max_tokens=params.max_tokens or self.default_max_tokens,
            messages=upstream_messages(history, params.message),
            system=system,
        )
        reply = Reply(
            db=self.db, claude=self.claude, prices=self.prices, conversation_id=conversation_id,
            prompt_turn_id=prompt_turn_id, seq=seq, lock_token=token, upstream=upstream, route=route,
            on_finished=self._forget, metrics=self.metrics,
        )
        self.active.add(reply)
        self._owner_of[reply] = owner
        self.metrics.in_flight.inc()
        self._idle.clear()
        return reply

    def _release_abandoned(self, opening: asyncio.Future) -> None:
        if opening.cancelled() or opening.exception() is not None:
            return
        conversation_id, token = opening.result()[0], opening.result()[-1]

        async def release() -> None:
            await self.db.write(reply_lock.release, conversation_id=conversation_id, token=token, now=utcnow())

        asyncio.ensure_future(release())

    def _forget(self, reply: Reply) -> None:
        self.active.discard(reply)
        if self._owner_of.pop(reply, None) is not None:
            self.metrics.in_flight.dec()
        if not self.active:
            self._idle.set()

    async def keep_locks_alive(self) -> None:
        """Renew the expiry of the reply locks this process holds, for as long as it runs."""
        while True:
            await asyncio.sleep(reply_lock.RENEW_EVERY_SECONDS)
            held = [(reply.conversation_id, reply.lock_token) for reply in self.active]
            if held:
                try:
                    await self.db.write(reply_lock.renew, held=held, now=utcnow())
                except Exception:
                    log.exception("could not renew reply locks")

    async def drain(self, grace_seconds: float) -> None:
        """Refuse new replies, give those in flight ``grace_seconds`` to finish, then interrupt the rest."""
        self.draining = True
        if self.active:
            log.info("draining %d repl%s in flight (grace %.0fs)", len(self.active),
                     "y" if len(self.active) == 1 else "ies", grace_seconds)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_seconds)
        except TimeoutError:
            log.warning("grace period over: interrupting %d repl%s", len(self.active),
                        "y" if len(self.active) == 1 else "ies")
            for reply in list(self.active):
                reply.interrupt()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=5)
            except TimeoutError:
                log.error("%d repl%s did not stop in time", len(self.active), "y" if len(self.active) == 1 else "ies")

    # -- audit ---------------------------------------------------------------------------------------

    async def audit(self, *, owner: str, conversation_id: str) -> ConversationAudit:
        async with self.db.read() as conn:
            conversation = await repository.get_conversation(conn, conversation_id=conversation_id, owner=owner)
            if conversation is None:
                raise errors.conversation_not_found(conversation_id)
            turns = await repository.list_turns(conn, conversation_id=conversation_id)
            calls = await repository.list_upstream_calls(conn, conversation_id=conversation_id)
            totals = await repository.totals_by_conversation(conn, conversation_ids=[conversation_id])
        return ConversationAudit(conversation, turns, calls, totals.get(conversation_id, repository.Totals()))

    async def history(self, *, owner: str, conversation_id: str) -> list:
        """The stored turns of a conversation (WebSocket resume)."""
        async with self.db.read() as conn:
            conversation = await repository.get_conversation(conn, conversation_id=conversation_id, owner=owner)
            if conversation is None:
                raise errors.conversation_not_found(conversation_id)
            return await repository.list_turns(conn, conversation_id=conversation_id)

    async def list_conversations(self, *, owner: str, limit: int, cursor: str | None) -> ConversationPage:
        before = decode_cursor(cursor) if cursor else None
        async with self.db.read() as conn:
            rows = await repository.list_conversations(conn, owner=owner, limit=limit + 1, before=before)
            page = rows[:limit]
            totals = await repository.totals_by_conversation(conn, conversation_ids=[c.id for c in page])
        next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
        return ConversationPage(page, totals, next_cursor)


def _begin_reply(
    conn, *, owner: str, params: ReplyParams, default_model: str, token: str, holder: reply_lock.Holder,
    now: datetime,
) -> tuple:
    """The transaction that opens a reply (on the writer thread): check the conversation, take its reply
    lock, read its history and store the user turn. Raises NotFound, ValidationFailed or Conflict."""
    if params.conversation_id is None:
        model, system, seq, history = default_model, params.system, 1, []
        conversation_id = writes.create_conversation(
            conn, owner=owner, model=model, system=system, now=now,
            **reply_lock.claim_values(token=token, holder=holder, now=now),
        )
    else:
        conversation_id = params.conversation_id
        stored = writes.conversation_for_reply(conn, conversation_id=conversation_id, owner=owner)
        if stored is None:
            raise errors.conversation_not_found(conversation_id)
        if params.system is not None and params.system != stored.system:
            raise errors.ValidationFailed(
                "'system' cannot change on an existing conversation: omit it or send the stored one."
            )
        if not reply_lock.is_free(stored, now):
            raise errors.Conflict("This conversation is already generating a reply; wait for it to finish.")
        model, system = params.model or stored.model, stored.system
        reply_lock.claim(conn, conversation_id=conversation_id, token=token, holder=holder, now=now)
        turns = writes.turns_for_history(conn, conversation_id=conversation_id)
        seq = turns[-1][0] + 1 if turns else 1
        history = [(number, role, content) for number, role, status, content in turns if status == "complete"]
    prompt_turn_id = writes.save_turn(
        conn, conversation_id=conversation_id, seq=seq, role="user", content=params.message, status="complete",
        now=now,
    )
    return conversation_id, model, system, seq, history, prompt_turn_id, token


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
