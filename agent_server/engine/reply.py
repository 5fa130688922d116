"""A reply as a process the service owns: from the committed prompt to the stored outcome, whatever happens between.

``ReplyProcess.start()`` runs the reply as a task (the supervisor), which runs the work (steps: an upstream call,
then the tools it asked for) as a child task. Routes follow its ``journal`` and may ``cancel`` it; none owns its
lifetime. Every way out — success, an upstream error, a storage failure, an unexpected exception at any stage,
cancel, shutdown — ends in ``_finish``: the outcome stored in one transaction (retried until it is: the reply's
lease is renewed meanwhile), then the final event shown, the lease and the slot freed.

=====================  ====================================  ===============  ============================
how it ended           turns stored                          call status      last event
=====================  ====================================  ===============  ============================
finished               each step's message, tool results     ok               done (complete)
paused for actions     the step's message; results wait      ok               requires_action, done
upstream failed        the step's partial text as failed     error            error (mapped type)
cancelled / shutdown   partial text as incomplete; a step    cancelled        cancelled / error shutdown
                       cut during its tools gets "not run"
                       results, so history stays valid
a bug                  as upstream failed                    error api_error  error api_error
=====================  ====================================  ===============  ============================
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from .. import errors
from ..db.models import new_id, utcnow
from ..db.writes import Op
from ..money.prices import Usage
from ..upstream.client import CallStats
from ..upstream.decoder import MessageAssembler
from . import blocks as b
from . import events as ev
from ..db import reads
from . import context
from .history import Message, encode_messages, units_of
from .journal import Journal
from .plan import EngineContext, ReplyPlan
from .recording import Recorder, usage_payload
from .request import build
from .toolrun import EVENT_LIMIT, ToolCall, ToolResult, cut_utf8, not_run, run_calls

log = logging.getLogger(__name__)
# Declared (with tool_choice none) when the history holds tool blocks and no tool is configured any more.
NO_TOOLS = {"name": "no_tools_available", "description": "No tools are available in this conversation now.",
            "input_schema": {"type": "object", "properties": {}}}


@dataclass(frozen=True)
class ReplyResult:
    """How a reply ended, for a route that waited for it (``POST /agent``)."""

    status: str
    payload: dict  # the ``done`` object
    content: str  # the text of every step, in order, as a streaming client was shown it
    tool_calls: list[dict]
    error: errors.AgentError | None
    final: ev.Numbered


class _Ending:
    def __init__(self, status: str, error: errors.AgentError | None = None, event_name: str = "done"):
        self.status, self.error, self.event_name = status, error, event_name


class ReplyProcess:
    def __init__(self, plan: ReplyPlan, ctx: EngineContext, *, on_finished: Callable[[ReplyProcess], None]):
        self.plan = plan
        self.ctx = ctx
        self.reply_id = plan.reply_id
        self.conversation_id = plan.conversation_id
        self.owner = plan.owner
        self.journal = Journal(plan.reply_id, ctx.events)
        self.record = Recorder(plan, ctx)
        self.journal.progress = self.record.progress
        self.outcome: asyncio.Future[ReplyResult] = asyncio.get_running_loop().create_future()
        self._on_finished = on_finished
        self._task: asyncio.Task | None = None
        self._work: asyncio.Task | None = None
        self._cancel_reason: str | None = None
        self.status = "running"
        self._units: list = []
        self._left_out = 0
        self._ratio = 1.0
        self._estimate = 0
        self._window: int | None = None  # the upstream's window, once it said "prompt is too long"
        self._squeeze = 1.0
        self._announced = False  # ``start`` emitted

    # -- lifetime ------------------------------------------------------------------------------------------

    def start(self) -> None:
        # The work first: it runs at the loop's next turn, not one turn after its supervisor's.
        self._work = asyncio.create_task(self._run(), name=f"reply-work-{self.reply_id}")
        self._task = asyncio.create_task(self._supervise(), name=f"reply-{self.reply_id}")

    def cancel(self, reason: str = "cancelled") -> bool:
        """Stop the reply wherever it is (``cancelled``, or ``shutdown``); its outcome is stored as for any end."""
        if self._work is None or self._work.done() or self._cancel_reason is not None:
            return False
        self._cancel_reason = reason
        self._work.cancel(msg=reason)
        return True

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _supervise(self) -> None:
        assert self._work is not None
        ending: _Ending
        try:
            ending = await self._work
        except asyncio.CancelledError:
            if self._cancel_reason is None:
                raise  # the supervisor itself was cancelled (the loop is going away): the sweep will notice
            ending = (_Ending("cancelled", errors.ShuttingDown("The server is shutting down; the partial reply was "
                                                               "saved."), "error")
                      if self._cancel_reason == "shutdown" else _Ending("cancelled", None, "cancelled"))
        except errors.AgentError as exc:
            ending = _Ending("failed", exc, "error")
        except Exception:
            log.exception("unhandled error in reply %s", self.reply_id)
            ending = _Ending("failed", errors.InternalError(self.reply_id), "error")
        try:
            await self._finish(ending)
        finally:
            self._on_finished(self)

    # -- the work ------------------------------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Read the history this reply continues and choose what fits the context window."""
        plan = self.plan
        if plan.before_seq is None:
            return
        async with self.ctx.db.read() as conn:
            # The window only moves forward: what it left out once is never read again.
            rows = await reads.history(conn, conversation_id=plan.conversation_id, from_seq=plan.context_from_seq,
                                       before_seq=plan.before_seq)
            previous = await reads.last_call_usage(conn, conversation_id=plan.conversation_id)
            self._left_out = 0 if plan.context_from_seq is None else await reads.count_turns(
                conn, conversation_id=plan.conversation_id, before_seq=plan.context_from_seq)
        self._units = units_of(rows)
        if previous is not None:
            # The previous call counted the tools and the system prompt too: so must its estimate.
            self._ratio = context.calibration(sum(previous), self._prefix_tokens() + sum(u.tokens for u in self._units))
        self._refit()

    def _prefix_tokens(self) -> int:
        plan = self.plan
        return b.estimate_tokens(b.encode(self.ctx.tools.definitions(plan.tool_names))) + b.estimate_tokens(
            plan.system or "")

    def _window_of(self) -> int:
        price = self.ctx.prices.get(self.plan.model)
        window = price.context_window if price else 200_000
        return window if self._window is None else min(window, self._window)

    def _refit(self) -> bool:
        """Choose the history again (the reply's own messages grew, or the upstream said "too long"); True when
        it changed."""
        plan = self.plan
        fixed = self._prefix_tokens() + sum(m.tokens for m in self._own)
        chosen = context.fit(self._units, fixed_tokens=fixed, window=self._window_of(),
                             max_tokens=plan.max_tokens, ratio=self._ratio, from_seq=plan.context_from_seq,
                             squeeze=self._squeeze, keep=1 if plan.continues is not None else 0)
        before = len(plan.history)
        plan.history = [message for unit in chosen.units for message in unit.messages]
        plan.context = {"turns_sent": chosen.turns_sent + (1 if plan.prompt is not None else 0),
                        "turns_omitted": chosen.turns_omitted + self._left_out}
        if chosen.from_seq != plan.context_from_seq:
            plan.context_from_seq, plan.context_changed = chosen.from_seq, True
        self.record.context_changed = plan.context_changed
        self._estimate = chosen.estimate
        return before != len(plan.history)

    async def _run(self) -> _Ending:
        plan, settings = self.plan, self.ctx.settings
        self._own: list[Message] = [plan.prompt] if plan.prompt is not None else []
        known: dict[str, ToolResult] = {}
        if plan.continues is not None:  # from here on, a reply cut short closes the paused step whole
            known = _known_results(plan.continues)
            self.record.continuing(plan.continues, known)
        await self._prepare()
        previous_end: int | None = None
        if plan.continues is not None:
            self._announce()  # the paused step's tool events come first
            self._own.extend(await self._continue_paused(known))
        squeezed = False
        step = 0
        while step < settings.max_steps + squeezed:  # the retry after "too long" is not one of the steps
            step += 1
            last = step == settings.max_steps + squeezed
            if self._refit():  # this reply's own messages grew (answers, tool results): older history goes
                previous_end = None
            messages = plan.history + self._own
            try:
                assistant, stop_reason = await self._call(step, messages, previous_end, last)
            except errors.UpstreamInvalidRequest as exc:
                if squeezed or "prompt is too long" not in exc.message or not plan.history:
                    raise
                squeezed = True  # leave out more and try once more
                await self.record.call_refused(exc)
                self._ratio, self._window, self._squeeze = context.after_too_long(
                    exc.message, estimate=self._estimate, ratio=self._ratio, window=self._window_of())
                self._refit()
                previous_end = None
                continue
            previous_end = len(encode_messages(messages)) - 1
            calls = self._tool_calls(b.tool_calls(assistant))
            self.record.asked([call.id for call in calls])
            encoded = b.encode(assistant)
            self._own.append(Message("assistant", encoded, b.estimate_tokens(encoded), 0))
            if calls:
                pending = [call for call in calls if call.needs_decision]
                results = await self._run_tools(step, [call for call in calls if not call.needs_decision])
                if pending:
                    await self.record.pause(step, calls, results, pending)
                    return _Ending("requires_action")
                results_blocks = [results[call.id].block() for call in calls]
                await self.record.tool_results(step, calls, results, results_blocks)
                encoded = b.encode(results_blocks)
                self._own.append(Message("user", encoded, b.estimate_tokens(encoded), 0))
                continue
            if stop_reason == "pause_turn" and not last:
                final = b.encode(b.as_final(assistant))  # goes back as the last message
                self._own[-1] = Message("assistant", final, b.estimate_tokens(final), 0)
                continue
            return _Ending("complete")
        return _Ending("complete")

    def _announce(self) -> None:
        """``start``, once, before any other event: when the upstream has accepted the reply's first call (its
        write then overlaps the model's time to first token instead of delaying the request), or before whatever
        comes first — a paused step's tool events, or the end of a reply whose call never got that far."""
        if self._announced:
            return
        self._announced = True
        plan = self.plan
        self.journal.emit(ev.Start(plan.reply_id, plan.conversation_id, plan.model, plan.context))

    async def _accepted(self) -> None:
        self._announce()

    def _tool_calls(self, calls: list[dict]) -> list[ToolCall]:
        offered = self.plan.tool_names
        out = []
        for call in calls:
            tool = self.ctx.tools.get(call["name"])
            out.append(ToolCall(call["id"], call["name"], call.get("input") or {}, tool,
                                offered is None or call["name"] in offered))
        return out

    async def _call(self, step: int, messages: list[Message], previous_end: int | None, last: bool):
        plan, ctx = self.plan, self.ctx
        call_id = plan.first_call_id if step == 1 and plan.first_call_id else None
        call_id = await self.record.open_call(step, call_id)
        definitions = ctx.tools.definitions(plan.tool_names)
        only_declared = False
        if not definitions and any('"tool_use"' in m.blocks for m in messages):
            # The API requires tools when history holds tool blocks, even when none may be used (or none is
            # configured any more: then a placeholder, so that the conversation stays usable).
            definitions, only_declared = ctx.tools.definitions(None) or [NO_TOOLS], True
        tool_choice = plan.tool_choice
        if step > 1 and tool_choice is not None and tool_choice.get("type") in ("any", "tool"):
            # A forced tool is for the first step: forced on every step, the model could never answer in words.
            tool_choice = {k: v for k, v in tool_choice.items() if k == "disable_parallel_tool_use"} | {"type": "auto"}
        if definitions and (last or plan.tool_names == [] or only_declared):
            tool_choice = {"type": "none"}
        encoded = encode_messages(messages)
        request = build(model=plan.model, max_tokens=plan.max_tokens, system=plan.system, tools=definitions,
                        tool_choice=tool_choice if definitions else None, thinking=plan.thinking,
                        messages=encoded, previous_end=_previous_end(encoded, previous_end), cache=ctx.settings.cache)
        stats, assembler = CallStats(), MessageAssembler()
        self.record.streaming(step, call_id, stats, assembler)
        first_delta = True
        async for kind, value in ctx.claude.stream(request, stats, assembler, on_open=self._accepted):
            if kind in ("text", "thinking"):
                if kind == "text":
                    self.record.text.append(value)
                followed = first_delta and self.journal.waiting
                first_delta = False
                self.journal.emit(ev.Token(value) if kind == "text" else ev.Thinking(value))
                if followed:
                    # Let the followers this woke send the call's first delta now: with a burst of deltas already
                    # buffered, the reply would run on to the end of the stream (and its write) first, ~1 ms. Only
                    # the first: a yield per delta costs a quarter more CPU per token in the fan-out benchmark.
                    await asyncio.sleep(0)
            else:
                self._block_done(assembler.blocks[value])
        blocks = b.without_blank_text(assembler.blocks)  # stored as it can go back upstream
        ends_reply = not b.tool_calls(blocks) and (stats.stop_reason != "pause_turn" or last)
        cost = await self.record.call_done(step, call_id, stats, blocks, ends_reply=ends_reply)
        self.journal.emit(ev.Step(step, stats.stop_reason, usage_payload(stats.usage), _usd(cost)))
        return blocks, stats.stop_reason

    def _block_done(self, block: dict) -> None:
        kind = block.get("type")
        if kind == "tool_use":
            tool = self.ctx.tools.get(block["name"])
            self.journal.emit(ev.ToolUse(block["id"], block["name"], block.get("input") or {},
                                         tool.kind if tool is not None else "unknown"))
        elif kind in b.SERVER_CALLS:
            self.journal.emit(ev.ToolUse(block["id"], block["name"], block.get("input") or {}, "server"))
        elif isinstance(kind, str) and kind.endswith("_tool_result"):
            content = block.get("content")
            text = b.result_text(content if isinstance(content, (str, list)) else [content])
            is_error = isinstance(content, dict) and str(content.get("type", "")).endswith("_error")
            shown, truncated = cut_utf8(text, EVENT_LIMIT)
            self.journal.emit(ev.ToolResult(block.get("tool_use_id", ""), is_error, shown, None, truncated))

    async def _run_tools(self, step: int, calls: list[ToolCall]) -> dict[str, ToolResult]:
        settings = self.ctx.settings
        self.record.tools_running(step, calls)

        def heard(call: ToolCall, result: ToolResult) -> None:
            self.record.tool_finished(call, result)
            content, truncated = result.event_content()
            self.journal.emit(ev.ToolResult(call.id, result.is_error, content, result.duration_ms, truncated))
            self.ctx.metrics.tool_runs.labels(call.name if call.tool else "unknown", result.outcome).inc()

        return await run_calls(calls, default_timeout=settings.tool_timeout, output_limit=settings.tool_output_limit,
                               on_result=heard)

    async def _continue_paused(self, results: dict[str, ToolResult]) -> list[Message]:
        """Apply the answers to a paused step: approved calls run here, the rest give their results (``results``,
        with those of the calls that ran before the pause); then the whole step's results are stored as one
        message, in the order the model asked."""
        paused = self.plan.continues
        assert paused is not None
        approved = [a for a in paused.answers if a.action == "approval" and a.approved]
        calls = [ToolCall(a.tool_use_id, a.name, a.input, self.ctx.tools.get(a.name), True) for a in approved]
        self.record.asked(list(paused.order))
        for answer in paused.answers:
            if answer.tool_use_id in results:
                result = results[answer.tool_use_id]
                content, truncated = result.event_content()
                self.journal.emit(ev.ToolResult(answer.tool_use_id, result.is_error, content, None, truncated))
                tool = self.ctx.tools.get(answer.name)
                self.record.report_call(answer.tool_use_id, answer.name, tool.kind if tool else "unknown",
                                        answer.input, result)
        if calls:
            results.update(await self._run_tools(paused.step, calls))
        ordered = [results.get(i) or not_run(i, "no answer was given") for i in paused.order]
        results_blocks = [result.block() for result in ordered]
        await self.record.answered(paused, results, results_blocks)
        encoded = b.encode(results_blocks)
        own = [Message("user", encoded, b.estimate_tokens(encoded), 0)]
        if self.plan.late_prompt is not None:
            own.append(self.plan.late_prompt)
        return own

    # -- the end -------------------------------------------------------------------------------------------

    async def _finish(self, ending: _Ending) -> None:
        plan = self.plan
        record = self.record
        cut_ops: list[Op] = record.close_cut(ending.status, ending.error, self._cancel_reason)
        totals = record.totals()
        payload = {
            "reply_id": plan.reply_id, "conversation_id": plan.conversation_id, "turn_id": record.last_turn_id,
            "model": plan.model, "status": ending.status, "stop_reason": record.stop_reason,
            "steps": record.steps, "input_tokens": totals.input_tokens, "output_tokens": totals.output_tokens,
            "usage": usage_payload(totals), "estimated_cost_usd": _usd(record.cost),
            "context": plan.context,
        }
        self._announce()
        if ending.status == "requires_action":
            payload["pending"] = record.pending_payload
            self.journal.emit(ev.RequiresAction(record.pending_payload))
        if ending.event_name == "done":
            final: ev.Event = ev.Done(payload)
        elif ending.event_name == "cancelled":
            final = ev.Cancelled(plan.reply_id, plan.conversation_id, record.last_turn_id)
        else:
            assert ending.error is not None
            final = ev.Error(ending.error.envelope())
        await self.journal.settled()
        numbered, rows = self.journal.prepare_final(final)
        await record.store_end(ending.status, ending.error, cut_ops, rows, numbered.seq)
        self.status = ending.status
        self.journal.publish_final(numbered)
        if not self.outcome.done():
            self.outcome.set_result(ReplyResult(ending.status, payload, "".join(record.text), record.tool_calls_out(),
                                                ending.error, numbered))


def _previous_end(encoded: list[str], known: int | None) -> int | None:
    """Where the previous request ended (its last message: what it wrote to the prompt cache). Within a reply we
    know; for a reply's first call it is the user message before the last reply's answer, when there is one."""
    if known is not None:
        return known
    if len(encoded) >= 3 and encoded[-2].startswith('{"role":"assistant"') and encoded[-3].startswith('{"role":"user"'):
        return len(encoded) - 3
    return None


def _known_results(paused) -> dict[str, ToolResult]:  # type: ignore[no-untyped-def]
    """The results of a paused step known before anything runs: the answers but approvals, and the calls that ran
    before the pause."""
    results = {answer.tool_use_id: _answered(answer) for answer in paused.answers
               if not (answer.action == "approval" and answer.approved)}
    for tool_use_id, done in paused.done.items():
        results[tool_use_id] = ToolResult(tool_use_id, done["content"], done["is_error"], done.get("duration_ms"), "ok")
    return results


def _answered(answer) -> ToolResult:  # type: ignore[no-untyped-def]
    if answer.action == "approval":
        reason = answer.reason or "no reason given"
        return ToolResult(answer.tool_use_id, f"The user denied this tool call: {reason}", True, None, "denied")
    if answer.action == "superseded":
        return ToolResult(answer.tool_use_id, "not run: the user sent a new message instead", True, None, "not_run")
    content = answer.content if answer.content is not None else ""
    return ToolResult(answer.tool_use_id, content, answer.is_error, None, "error" if answer.is_error else "ok")


def _usd(cost: Decimal | None) -> float | None:
    from ..money.prices import from_nano, to_nano

    return None if cost is None else float(from_nano(to_nano(cost)))


__all__ = ["ReplyProcess", "Usage", "new_id", "utcnow"]
