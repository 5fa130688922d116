"""One reply, from the committed user turn to the committed assistant turn, whatever happens between.

A ``Reply`` does not know about connections: a route consumes its tokens and tells it when the client
went away. That keeps the door open to running a reply detached from its connection later.

Outcomes and what is stored:

=====================  ===============  ==============  ===================
what happened          assistant turn   request status  client sees
=====================  ===============  ==============  ===================
upstream finished      complete         ok              done
upstream failed        failed (if text) error           error (mapped type)
client left/cancelled  incomplete       cancelled       cancelled / nothing
server shutting down   incomplete       cancelled       error ``shutdown``
=====================  ===============  ==============  ===================
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from . import errors
from .claude import CallStats, Claude, UpstreamRequest
from .db import reply_lock, writes
from .db.engine import Database
from .db.models import new_id, utcnow
from .metrics import Metrics
from .pricing import PriceTable, Usage, to_nano

log = logging.getLogger(__name__)

# While a reply streams, its partial text is written (as an ``incomplete`` turn) at most this often, so a
# process killed outright (kill -9, out of memory) keeps what its clients were shown, up to this lag.
CHECKPOINT_SECONDS = 1.0


@dataclass(frozen=True)
class ReplyOutcome:
    conversation_id: str
    turn_id: str
    model: str
    stop_reason: str | None
    usage: Usage
    cost_usd: Decimal | None
    content: str
    request_id: str
    upstream_request_id: str | None


class Reply:
    """Created by ``ConversationService.open_reply`` once the user turn is committed and the lock held."""

    def __init__(
        self,
        *,
        db: Database,
        claude: Claude,
        prices: PriceTable,
        conversation_id: str,
        prompt_turn_id: str,
        seq: int,
        lock_token: str,
        upstream: UpstreamRequest,
        route: str,
        on_finished: Callable[[Reply], Awaitable[None] | None],
        metrics: Metrics,
    ):
        self.conversation_id = conversation_id
        self.turn_id = new_id("turn")
        self.request_id = new_id("call")
        self.model = upstream.model
        self.route = route
        self.outcome: ReplyOutcome | None = None
        self.stats = CallStats()
        self._db, self._claude, self._prices = db, claude, prices
        self._prompt_turn_id, self._seq, self._lock_token = prompt_turn_id, seq, lock_token
        self._upstream = upstream
        self._parts: list[str] = []
        self._finished = False
        self._on_finished = on_finished
        self._metrics = metrics
        self._consumer: asyncio.Task | None = None
        self._next_checkpoint = 0.0
        self._interrupted = False

    @property
    def lock_token(self) -> str:
        return self._lock_token

    @property
    def partial_text(self) -> str:
        return "".join(self._parts)

    async def complete(self) -> ReplyOutcome:
        """The whole reply in one piece (POST /agent); stored before it returns, like ``run``."""
        self._consumer = asyncio.current_task()
        try:
            text = await self._claude.complete(self._upstream, self.stats)
        except errors.AgentError as exc:
            await self._finish(turn_status="failed", call_status="error", error_type=exc.type)
            raise
        except asyncio.CancelledError:
            await self._after_cancel()
            raise
        finally:
            self._consumer = None
        self._parts = [text]
        return await self._finish(turn_status="complete", call_status="ok", error_type=None)

    async def run(
        self, on_token: Callable[[str], Awaitable[None]], on_open: Callable[[], Awaitable[None]] | None = None
    ) -> ReplyOutcome:
        """Stream the reply, handing each text delta to ``on_token``; return once the turn is committed.

        ``on_open`` is awaited once the upstream has accepted the call, before the first delta (see
        ``Claude.stream``).

        Whatever ends it, the turn and its request row are stored before this returns or raises:
        an upstream failure stores a ``failed`` turn and raises the mapped ``AgentError``; ``interrupt()``
        stores an ``incomplete`` turn and raises ``ShuttingDown``; the client leaving (``on_token`` raising,
        or the task being cancelled) stores an ``incomplete`` turn and re-raises.
        """
        self._consumer = asyncio.current_task()
        tokens = self._claude.stream(self._upstream, self.stats, on_open)
        loop = asyncio.get_running_loop()
        self._next_checkpoint = loop.time() + CHECKPOINT_SECONDS
        try:
            try:
                async for text in tokens:
                    # Stored before it is sent: better to keep a token the client missed than lose one it saw.
                    self._parts.append(text)
                    if loop.time() >= self._next_checkpoint:
                        self._checkpoint()
                        self._next_checkpoint = loop.time() + CHECKPOINT_SECONDS
                    await on_token(text)
            finally:
                await tokens.aclose()
        except errors.AgentError as exc:
            await self._finish(turn_status="failed", call_status="error", error_type=exc.type)
            raise
        except asyncio.CancelledError:
            await self._after_cancel()
            raise
        except BaseException:
            await self.abandon()
            raise
        finally:
            self._consumer = None
        return await self._finish(turn_status="complete", call_status="ok", error_type=None)

    def _checkpoint(self) -> None:
        """Queue a write of the partial text; the writer runs transactions in order, so the final one wins."""
        future = self._db.submit_write(
            writes.save_turn, conversation_id=self.conversation_id, seq=self._seq + 1, role="assistant",
            content=self.partial_text, status="incomplete", now=utcnow(), turn_id=self.turn_id,
        )
        future.add_done_callback(_log_failed_checkpoint)

    async def _after_cancel(self) -> None:
        """Store the partial turn; when the cancel was our own ``interrupt()``, turn it into ShuttingDown."""
        if not self._interrupted:
            await self.abandon()
            return
        # Our interrupt, not the client leaving: swallow the cancellation and report the shutdown.
        asyncio.current_task().uncancel()
        await self._finish(turn_status="incomplete", call_status="cancelled", error_type="shutdown")
        raise errors.ShuttingDown("The server is shutting down; the partial reply was saved.")

    def interrupt(self) -> None:
        """Stop a streaming reply at once and make it raise ``ShuttingDown`` (the grace period is over).

        Cancelling the consuming task costs nothing per token, unlike racing every token against an event.
        """
        if self._consumer is not None and not self._finished and not self._interrupted:
            self._interrupted = True
            self._consumer.cancel(msg="shutdown")

    async def abandon(self) -> None:
        """The client went away or cancelled: store what it was shown as an ``incomplete`` turn.

        Safe to call in any state and from a cancelled task: the write runs shielded.
        """
        if self._finished:
            return
        task = asyncio.ensure_future(self._finish(turn_status="incomplete", call_status="cancelled", error_type=None))
        await asyncio.shield(task)

    async def _finish(self, *, turn_status: str, call_status: str, error_type: str | None) -> ReplyOutcome:
        if self._finished:
            assert self.outcome is not None
            return self.outcome
        self._finished = True
        stats, content = self.stats, self.partial_text
        model = self._upstream.model
        cost = self._prices.cost(model, stats.usage)
        # A failed reply with no text leaves no turn; a cancelled one always does, so ``cancelled`` can name it.
        store_turn = turn_status != "failed" or bool(content)
        now = utcnow()
        try:
            await self._db.write(
                _store_outcome,
                turn=dict(conversation_id=self.conversation_id, seq=self._seq + 1, role="assistant",
                          content=content, status=turn_status, now=now, turn_id=self.turn_id) if store_turn else None,
                call=dict(
                    id=self.request_id,
                    conversation_id=self.conversation_id,
                    prompt_turn_id=self._prompt_turn_id,
                    turn_id=self.turn_id if store_turn else None,
                    route=self.route,
                    model=model,
                    upstream_request_id=stats.request_id,
                    status=call_status,
                    error_type=error_type,
                    stop_reason=stats.stop_reason,
                    input_tokens=stats.usage.input_tokens,
                    output_tokens=stats.usage.output_tokens,
                    cache_creation_input_tokens=stats.usage.cache_creation_input_tokens,
                    cache_write_5m_tokens=stats.usage.cache_write_5m_tokens,
                    cache_write_1h_tokens=stats.usage.cache_write_1h_tokens,
                    cache_read_input_tokens=stats.usage.cache_read_input_tokens,
                    cost_nano_usd=to_nano(cost),
                    latency_ms=stats.latency_ms,
                    ttft_ms=stats.ttft_ms,
                    attempts=stats.attempts,
                    created_at=now,
                ),
                lock_token=self._lock_token,
                now=now,
            )
        finally:
            result = self._on_finished(self)
            if result is not None:
                await result
        self._metrics.observe_call(
            route=self.route, model=model, status=call_status, error_type=error_type, usage=stats.usage,
            cost=cost, latency_s=stats.latency_ms / 1000,
            ttft_s=None if stats.ttft_ms is None else stats.ttft_ms / 1000,
        )
        self.outcome = ReplyOutcome(
            conversation_id=self.conversation_id,
            turn_id=self.turn_id,
            model=model,
            stop_reason=stats.stop_reason,
            usage=stats.usage,
            cost_usd=cost,
            content=content,
            request_id=self.request_id,
            upstream_request_id=stats.request_id,
        )
        log.info(
            "upstream call",
            extra={
                "event": "upstream_call",
                "conversation_id": self.conversation_id,
                "call_id": self.request_id,
                "route": self.route,
                "model": model,
                "status": call_status,
                "error_type": error_type,
                "upstream_request_id": stats.request_id,
                "attempts": stats.attempts,
                "input_tokens": stats.usage.input_tokens,
                "output_tokens": stats.usage.output_tokens,
                "cost_usd": None if cost is None else str(cost),
                "latency_ms": stats.latency_ms,
                "ttft_ms": stats.ttft_ms,
            },
        )
        return self.outcome


def _store_outcome(conn, *, turn: dict | None, call: dict, lock_token: str, now) -> None:
    """The transaction that ends a reply (on the writer thread): its turn, its request row, the lock."""
    if turn is not None:
        writes.save_turn(conn, **turn)
    writes.add_upstream_call(conn, **call)
    reply_lock.release(conn, conversation_id=call["conversation_id"], token=lock_token, now=now)


def _log_failed_checkpoint(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not checkpoint a partial reply: %s", type(future.exception()).__name__)
