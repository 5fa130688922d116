"""What a reply stores, and when: its calls in the ledger, its turns, its tool runs, and its end.

Every upstream call has its ``requests`` row before the call is made (``running``; the first one is written by the
transaction that opens the reply), closed when it ends, however it ends, with the usage known. Each step's
message is stored once it is complete, with the call's cost and the owner's daily spend (the last step's by the
end's transaction); each step's tool results once they are all in. ``store_end`` writes the rest in one
transaction and retries until it is stored (the reply's lease is renewed meanwhile): a reply says ``done`` only
once it is stored.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from .. import errors
from ..db import lease, writes
from ..db.base import StorageError
from ..db.models import new_id, utcnow
from ..db.writes import Op
from ..money.prices import Usage, cache_savings, cost_of, to_nano
from ..upstream.client import CallStats
from ..upstream.decoder import MessageAssembler, safe_usage
from . import blocks as b
from .plan import EngineContext, PendingStep, ReplyPlan
from .toolrun import ToolCall, ToolResult, not_run

log = logging.getLogger(__name__)
STORE_RETRY_DELAYS = (0.1, 0.25, 0.5, 1, 2, 5)


def usage_payload(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "server_tool_uses": usage.server_tool_uses}


def _day(now: datetime) -> str:
    return now.date().isoformat()


class Recorder:
    def __init__(self, plan: ReplyPlan, ctx: EngineContext):
        self.plan, self.ctx = plan, ctx
        self.next_seq = plan.next_seq
        self.steps = 0
        self.usage = Usage()
        self.cost: Decimal | None = Decimal(0)
        self.text: list[str] = []
        self.last_turn_id: str | None = None
        self.stop_reason: str | None = None
        self._reported: dict[str, dict[str, Any]] = {}  # tool calls as they finish
        self._asked: list[str] = []  # their ids in the order the model asked for them
        self.pending_payload: list[dict] = []

        self._streaming: tuple[int, str, CallStats, MessageAssembler] | None = None
        self._tools: tuple[int, list[ToolCall], dict[str, ToolResult]] | None = None
        # A paused step this reply continues, with the results known so far, until their turn is stored.
        self._continuing: tuple[PendingStep, dict[str, ToolResult]] | None = None
        self.context_changed = plan.context_changed
        self._cut_spend: list[tuple[str, str, int]] = []
        self._with_end: list[Op] = []  # the last call's message and ledger row, stored with the end
        self._with_end_spend: list[tuple[str, str, int]] = []
        self._open_calls: set[str] = set()
        self._call_days: dict[str, str] = {}
        self._progress: tuple | None = None  # what ``progress`` last stored

    # -- calls ---------------------------------------------------------------------------------------------

    async def open_call(self, step: int, call_id: str | None) -> str:
        now = utcnow()
        if call_id is None:
            call_id = new_id("call")
            await self.ctx.db.write(writes.apply, ops=[writes.insert_call(**self._call_row(call_id, step, now))])
        self._open_calls.add(call_id)
        # A call's cost counts on the day it started, in budgets as in /usage (which groups calls by created_at).
        self._call_days[call_id] = _day(now)
        return call_id

    def _call_row(self, call_id: str, step: int, now: datetime) -> dict[str, Any]:
        plan = self.plan
        return dict(id=call_id, conversation_id=plan.conversation_id, owner=plan.owner, reply_id=plan.reply_id,
                    step=step, prompt_turn_id=plan.prompt_turn_id, route=plan.route, model=plan.model,
                    status="running", created_at=now)

    def streaming(self, step: int, call_id: str, stats: CallStats, assembler: MessageAssembler) -> None:
        self._streaming = (step, call_id, stats, assembler)
        self.steps = max(self.steps, step)

    def progress(self) -> list[Op]:
        """The usage known so far of the call being streamed, when it changed: stored with the reply's next batch
        of events, so that a process killed mid-call leaves its ledger row with the tokens it had been told
        (the input from ``message_start``) and their cost; the interrupted reply's closer charges them."""
        if self._streaming is None:
            return []
        _, call_id, stats, assembler = self._streaming
        usage = safe_usage(assembler.usage)
        known = (call_id, stats.request_id, usage)
        if known == self._progress:
            return []
        self._progress = known
        cost, _ = self._price(usage)
        return [writes.update_call(call_id, upstream_request_id=stats.request_id, input_tokens=usage.input_tokens,
                                   output_tokens=usage.output_tokens,
                                   cache_creation_input_tokens=usage.cache_creation_input_tokens,
                                   cache_write_5m_tokens=usage.cache_write_5m_tokens,
                                   cache_write_1h_tokens=usage.cache_write_1h_tokens,
                                   cache_read_input_tokens=usage.cache_read_input_tokens,
                                   server_tool_uses=usage.server_tool_uses, cost_nano_usd=to_nano(cost))]

    def _price(self, usage: Usage) -> tuple[Decimal | None, Decimal | None]:
        price = self.ctx.prices.get(self.plan.model)
        if price is None:
            self.ctx.prices.cost(self.plan.model, usage)  # logs the warning
            return None, None
        return cost_of(price, usage), cache_savings(price, usage)

    def _close_call(self, call_id: str, stats: CallStats, status: str, error_type: str | None,
                    turn_id: str | None, now: datetime) -> tuple[list[Op], list[tuple[str, str, int]], Decimal | None]:
        self._open_calls.discard(call_id)
        usage = stats.usage
        cost, savings = self._price(usage)
        self.usage = self.usage + usage
        self.cost = None if cost is None or self.cost is None else self.cost + cost
        self.stop_reason = stats.stop_reason or self.stop_reason
        ops = [writes.update_call(
            call_id, turn_id=turn_id, upstream_request_id=stats.request_id, status=status, error_type=error_type,
            stop_reason=stats.stop_reason, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_write_5m_tokens=usage.cache_write_5m_tokens, cache_write_1h_tokens=usage.cache_write_1h_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens, server_tool_uses=usage.server_tool_uses,
            cost_nano_usd=to_nano(cost), cache_savings_nano_usd=to_nano(savings), latency_ms=stats.latency_ms,
            ttft_ms=stats.ttft_ms, attempts=max(stats.attempts, 1),
        )]
        spend = [(self.plan.owner, self._call_days.get(call_id) or _day(now), to_nano(cost) or 0)]
        self._log_call(call_id, status, error_type, stats, cost)
        self.ctx.metrics.observe_call(
            route=self.plan.route, model=self.plan.model, status=status, error_type=error_type, usage=usage,
            cost=cost, latency_s=stats.latency_ms / 1000,
            ttft_s=None if stats.ttft_ms is None else stats.ttft_ms / 1000)
        return ops, spend, cost

    def _turn(self, role: str, blocks: list[dict], status: str, step: int, now: datetime) -> tuple[Op, str]:
        turn_id = new_id("turn")
        encoded = b.encode(blocks)
        op = writes.insert_turn(id=turn_id, conversation_id=self.plan.conversation_id, reply_id=self.plan.reply_id,
                                seq=self.next_seq, step=step, role=role, content=b.text_of(blocks),
                                content_blocks=encoded, tokens=b.estimate_tokens(encoded), status=status,
                                created_at=now, updated_at=now)
        self.next_seq += 1
        return op, turn_id

    async def call_done(self, step: int, call_id: str, stats: CallStats, blocks: list[dict], *,
                        ends_reply: bool = False) -> Decimal | None:
        """Store the step's message and close its call. The reply's last call (``ends_reply``: nothing runs after
        it) is stored by the transaction that ends the reply, one write instead of two: nothing can come between
        them but that transaction, which is retried until it is stored."""
        now = utcnow()
        turn_op, turn_id = self._turn("assistant", blocks, "complete", step, now)
        call_ops, spend, cost = self._close_call(call_id, stats, "ok", None, turn_id, now)
        if ends_reply:
            self._with_end.extend([turn_op, *call_ops])
            self._with_end_spend.extend(spend)
        else:
            await self._store([turn_op, *call_ops], spend)
        self.last_turn_id = turn_id
        self._streaming = None
        return cost

    async def call_refused(self, error: errors.AgentError) -> None:
        """The step being streamed was refused by the upstream and the reply tries again (a prompt too long):
        its call is closed in the ledger now, as an error, rather than left open until the reply ends."""
        if self._streaming is None:
            return
        _, call_id, stats, _ = self._streaming
        ops, spend, _ = self._close_call(call_id, stats, "error", error.type, None, utcnow())
        self._streaming = None
        await self._store(ops, spend)

    # -- tools ---------------------------------------------------------------------------------------------

    def tools_running(self, step: int, calls: list[ToolCall]) -> None:
        if self._tools is None or self._tools[0] != step:
            self._tools = (step, list(calls), {})
        else:
            self._tools[1].extend(calls)

    def tool_finished(self, call: ToolCall, result: ToolResult) -> None:
        if self._tools is not None:
            self._tools[2][call.id] = result
        self.report_call(call.id, call.name, call.kind, call.input, result)

    def _run_row(self, step: int, call: ToolCall, result: ToolResult | None, now: datetime, **extra: Any) -> dict:
        return dict(id=new_id("tool"), conversation_id=self.plan.conversation_id, reply_id=self.plan.reply_id,
                    call_id=None, step=step, tool_use_id=call.id, name=call.name, kind=call.kind,
                    input=b.encode(call.input),
                    output=None if result is None else b.encode(result.content),
                    is_error=bool(result and result.is_error),
                    duration_ms=None if result is None else result.duration_ms,
                    status="done" if result is not None else "pending", created_at=now, **extra)

    async def tool_results(self, step: int, calls: list[ToolCall], results: dict[str, ToolResult],
                           results_blocks: list[dict]) -> None:
        now = utcnow()
        turn_op, _ = self._turn("user", results_blocks, "complete", step, now)
        runs = [self._run_row(step, call, results[call.id], now) for call in calls]
        await self._store([turn_op, writes.insert_tool_runs(runs)], [])
        self._tools = None

    async def pause(self, step: int, calls: list[ToolCall], results: dict[str, ToolResult],
                    pending: list[ToolCall]) -> None:
        now = utcnow()
        runs = []
        for call in calls:
            if call.needs_decision:
                runs.append(self._run_row(step, call, None, now, action=call.needs_decision))
                self.pending_payload.append({"tool_use_id": call.id, "name": call.name, "input": call.input,
                                             "kind": call.needs_decision})
            else:
                runs.append(self._run_row(step, call, results[call.id], now))
        await self._store([writes.insert_tool_runs(runs)], [])
        self._tools = None

    def continuing(self, paused: PendingStep, results: dict[str, ToolResult]) -> None:
        """This reply continues ``paused`` (``results``: those known so far): if it is cut before ``answered``, the
        end closes the whole step — in the model's order, "not run" for what did not run — never a part of it."""
        self._continuing = (paused, results)

    async def answered(self, paused: PendingStep, results: dict[str, ToolResult], results_blocks: list[dict]) -> None:
        await self._store(self._answered_ops(paused, results, results_blocks, utcnow()), [])
        self._tools = self._continuing = None

    def _answered_ops(self, paused: PendingStep, results: dict[str, ToolResult], results_blocks: list[dict],
                      now: datetime) -> list[Op]:
        ops: list[Op] = []
        for answer in paused.answers:
            result = results.get(answer.tool_use_id)
            decision = ("superseded" if answer.action == "superseded" else "answered" if answer.action == "client_tool"
                        else "approved" if answer.approved else "denied")
            ops.append(writes.update_tool_run(
                answer.run_id, status="done", decision=decision, decided_by=answer.decided_by, decided_at=now,
                reason=answer.reason, output=None if result is None else b.encode(result.content),
                is_error=bool(result and result.is_error), duration_ms=None if result is None else result.duration_ms))
        turn_op, _ = self._turn("user", results_blocks, "complete", paused.step, now)
        ops.append(turn_op)
        late = self.plan.late_prompt
        if late is not None:
            prompt_op, self.plan.prompt_turn_id = self._turn("user", [], "complete", 0, now)
            prompt_op[1].update(content_blocks=late.blocks, content=_text(late.blocks), tokens=late.tokens)
            ops.append(prompt_op)
        return ops

    # -- the end -------------------------------------------------------------------------------------------

    def close_cut(self, status: str, error: errors.AgentError | None, cancel_reason: str | None) -> list[Op]:
        """The operations that close what was cut short: the step being streamed, the tools being run."""
        now = utcnow()
        ops: list[Op] = []
        if self._streaming is not None:
            step, call_id, stats, assembler = self._streaming
            partial = assembler.partial_blocks()
            turn_id = None
            # A failed call with no text leaves no turn; a cancelled one always does, so ``cancelled`` can name it.
            if status != "failed" or b.text_of(partial):
                turn_op, turn_id = self._turn("assistant", partial, "failed" if status == "failed" else "incomplete",
                                              step, now)
                ops.append(turn_op)
                self.last_turn_id = turn_id
            call_status = "error" if status == "failed" else "cancelled"
            error_type = error.type if error is not None else None
            call_ops, spend, _ = self._close_call(call_id, stats, call_status, error_type, turn_id, now)
            ops.extend(call_ops)
            self._cut_spend = spend
            self._streaming = None
        for call_id in list(self._open_calls):  # opened, never streamed (a failure before the request went out)
            call_ops, spend, _ = self._close_call(call_id, CallStats(attempts=0),
                                                  "error" if status == "failed" else "cancelled",
                                                  error.type if error is not None else None, None, now)
            ops.extend(call_ops)
        reason = "the reply was cancelled" if cancel_reason == "cancelled" else (
            "the server shut down" if cancel_reason == "shutdown" else "the reply failed")
        if self._continuing is not None:  # cut before the answered step was stored (its approved calls running)
            paused, known = self._continuing
            ran = self._tools[2] if self._tools is not None else {}
            results = {i: known.get(i) or ran.get(i) or not_run(i, reason) for i in paused.order}
            ops.extend(self._answered_ops(paused, results, [results[i].block() for i in paused.order], now))
            self._tools = self._continuing = None
        if self._tools is not None:
            step, calls, results = self._tools
            complete = {call.id: results.get(call.id) or not_run(call.id, reason) for call in calls}
            turn_op, _ = self._turn("user", [complete[call.id].block() for call in calls], "complete", step, now)
            ops.append(turn_op)
            ops.append(writes.insert_tool_runs([self._run_row(step, call, complete[call.id], now) for call in calls]))
            self._tools = None
        return ops

    async def store_end(self, status: str, error: errors.AgentError | None, cut_ops: list[Op],
                        event_rows: list[dict], last_seq: int) -> None:
        plan = self.plan
        now = utcnow()
        conversation: dict[str, Any] = {"pending_reply_id": plan.reply_id if status == "requires_action" else None}
        if self.context_changed:
            conversation["context_from_seq"] = plan.context_from_seq
        ops = [
            *self._with_end,
            *cut_ops,
            writes.insert_events(event_rows),
            writes.update_reply(plan.reply_id, status=status, finished_at=now, turn_id=self.last_turn_id,
                                steps=self.steps, stop_reason=self.stop_reason,
                                error_type=None if error is None else error.type,
                                error_message=None if error is None else error.message[:500], last_seq=last_seq,
                                context=b.encode(plan.context)),
            writes.update_conversation(plan.conversation_id, **conversation),
        ]
        spend = self._with_end_spend + self._cut_spend
        for attempt in range(10_000):
            try:
                await self.ctx.db.write(_end, ops=ops, spend=spend, conversation_id=plan.conversation_id,
                                        token=plan.lease_token, now=now)
                return
            except StorageError as exc:
                delay = STORE_RETRY_DELAYS[min(attempt, len(STORE_RETRY_DELAYS) - 1)]
                log.warning("could not store the end of reply %s (%s); retrying in %ss", plan.reply_id, exc.message,
                            delay)
                await asyncio.sleep(delay)

    async def _store(self, ops: list[Op], spend: list[tuple[str, str, int]]) -> None:
        await self.ctx.db.write(writes.apply_with_spend, ops=ops, spend=spend)

    def totals(self) -> Usage:
        return self.usage

    def asked(self, call_ids: list[str]) -> None:
        """The model asked for these calls, in this order (calls run in parallel and finish in any order)."""
        self._asked.extend(i for i in call_ids if i not in self._asked)

    def report_call(self, call_id: str, name: str, kind: str, arguments: dict, result: ToolResult) -> None:
        """A tool call of this reply, for ``POST /agent``'s ``tool_calls``."""
        content, _ = result.event_content()
        self._reported[call_id] = {"id": call_id, "name": name, "kind": kind, "input": arguments,
                                   "is_error": result.is_error, "content": content,
                                   "duration_ms": result.duration_ms}

    def tool_calls_out(self) -> list[dict[str, Any]]:
        """The finished calls in the order the model asked for them, step after step."""
        ordered = [self._reported[i] for i in self._asked if i in self._reported]
        return ordered + [call for i, call in self._reported.items() if i not in self._asked]

    def _log_call(self, call_id: str, status: str, error_type: str | None, stats: CallStats,
                  cost: Decimal | None) -> None:
        log.info("upstream call", extra={
            "event": "upstream_call", "conversation_id": self.plan.conversation_id, "reply_id": self.plan.reply_id,
            "call_id": call_id, "route": self.plan.route, "model": self.plan.model, "status": status,
            "error_type": error_type, "upstream_request_id": stats.request_id, "attempts": stats.attempts,
            "input_tokens": stats.usage.input_tokens, "output_tokens": stats.usage.output_tokens,
            "cost_usd": None if cost is None else str(cost), "latency_ms": stats.latency_ms, "ttft_ms": stats.ttft_ms,
        })


def _text(blocks_json: str) -> str:
    import json

    return b.text_of(json.loads(blocks_json))


async def _end(conn, *, ops: list[Op], spend: list[tuple[str, str, int]], conversation_id: str, token: str,
               now: datetime) -> None:
    await writes.apply_with_spend(conn, ops=ops, spend=spend)
    await lease.release(conn, conversation_id=conversation_id, token=token, now=now)
