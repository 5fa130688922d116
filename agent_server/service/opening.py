"""The transaction that opens a reply: the rules checked against the stored conversation, the lease taken, the
prompt and the first call's ledger row stored — all before anything goes upstream, so nothing is ever sent that
the ledger does not know of. Raises NotFound, ValidationFailed or Conflict (nothing is then stored).

With pending actions (the conversation's last reply paused for approvals or client results) the answers are
checked against the stored pending set: every pending call must be answered unless a new message comes with
them (the rest are then answered as not run); an unknown or already answered id is a 422.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from .. import errors
from ..db import lease, writes
from ..db.models import Conversation, ToolRun, Turn
from ..engine import blocks as b
from ..engine.interrupted import close_one
from ..engine.plan import Answer, PendingStep


@dataclass(frozen=True)
class Opened:
    conversation_id: str
    model: str
    system: str | None
    prompt_turn_id: str | None
    next_seq: int
    before_seq: int | None
    context_from_seq: int | None
    continues: PendingStep | None


def title_from(message: str) -> str:
    return " ".join(message.split())[:80]


async def open_reply(conn, *, owner: str, conversation_id: str | None, system: str | None, model: str | None,
                     default_model: str, prompt_blocks: str | None, answers: list[dict], reply_id: str,
                     call_id: str, token: str, holder: lease.Holder, route: str, now: datetime) -> Opened:
    if conversation_id is None:
        if answers:
            raise errors.ValidationFailed("There are no pending actions on a new conversation.")
        conversation_id = await _create(conn, owner=owner, system=system, model=model or default_model,
                                        prompt_blocks=prompt_blocks, reply_id=reply_id, token=token, holder=holder,
                                        now=now)
        chosen_model, stored_system, seq = model or default_model, system, 1
        continues, from_seq, before = None, None, None
    else:
        stored = (await conn.execute(
            select(Conversation).where(Conversation.id == conversation_id, Conversation.owner == owner)
            .with_for_update())).one_or_none()
        if stored is None:
            raise errors.conversation_not_found(conversation_id)
        if system is not None and system != stored.system:
            raise errors.ValidationFailed(
                "'system' cannot change on an existing conversation: omit it or send the stored one.")
        if not lease.is_free(stored, now):
            raise errors.Conflict("This conversation is already generating a reply; wait for it to finish.")
        if stored.lock_reply_id is not None and stored.lock_token is not None:
            # The lease was left by a reply whose process died (or whose lease expired): close it as interrupted
            # first, in this transaction, so its partial text and its call are settled before this reply starts.
            await close_one(conn, reply_id=stored.lock_reply_id, conversation_id=conversation_id, now=now)
        continues = None
        if stored.pending_reply_id is not None:
            continues = await _pending_step(conn, reply_id=stored.pending_reply_id, answers=answers,
                                            has_message=prompt_blocks is not None, owner=owner)
        elif answers:
            raise errors.ValidationFailed("This conversation has no pending actions to answer.")
        await lease.claim(conn, conversation_id=conversation_id, token=token, reply_id=reply_id, holder=holder,
                          now=now)
        last = (await conn.execute(select(func.max(Turn.seq)).where(Turn.conversation_id == conversation_id))).scalar()
        seq = (last or 0) + 1
        chosen_model, stored_system = model or stored.model, stored.system
        from_seq, before = stored.context_from_seq, seq
    prompt_turn_id = None
    if prompt_blocks is not None and continues is None:
        prompt_turn_id = f"turn_{reply_id.removeprefix('reply_')}"
    ops = [writes.insert_reply(id=reply_id, conversation_id=conversation_id, owner=owner, route=route,
                               model=chosen_model, status="running", steps=0, last_seq=0, created_at=now,
                               prompt_turn_id=prompt_turn_id)]
    if prompt_turn_id is not None and prompt_blocks is not None:
        ops.append(writes.insert_turn(
            id=prompt_turn_id, conversation_id=conversation_id, reply_id=reply_id, seq=seq, step=0, role="user",
            content=b.text_of(json.loads(prompt_blocks)), content_blocks=prompt_blocks,
            tokens=b.estimate_tokens(prompt_blocks), status="complete", created_at=now, updated_at=now))
        ops.append(writes.insert_call(id=call_id, conversation_id=conversation_id, owner=owner, reply_id=reply_id,
                                      step=1, prompt_turn_id=prompt_turn_id, route=route, model=chosen_model,
                                      status="running", created_at=now))
        seq += 1
    if continues is not None:
        ops.append(writes.update_conversation(conversation_id, pending_reply_id=None))
    await writes.apply(conn, ops=ops)
    return Opened(conversation_id, chosen_model, stored_system, prompt_turn_id, seq, before, from_seq, continues)


async def _create(conn, *, owner: str, system: str | None, model: str, prompt_blocks: str | None, reply_id: str,
                  token: str, holder: lease.Holder, now: datetime) -> str:
    from ..db.models import new_id

    conversation_id = new_id("conv")
    title = title_from(b.text_of(json.loads(prompt_blocks))) if prompt_blocks else None
    await writes.apply(conn, ops=[writes.insert_conversation(
        id=conversation_id, owner=owner, model=model, system=system, title=title, created_at=now, updated_at=now,
        **lease.claim_values(token=token, reply_id=reply_id, holder=holder, now=now))])
    return conversation_id


async def _pending_step(conn, *, reply_id: str, answers: list[dict], has_message: bool, owner: str) -> PendingStep:
    runs = list(await conn.execute(select(ToolRun).where(ToolRun.reply_id == reply_id)))
    pending = {run.tool_use_id: run for run in runs if run.status == "pending"}
    answered: dict[str, Answer] = {}
    for given in answers:
        tool_use_id = given["tool_use_id"]
        run = pending.get(tool_use_id)
        if run is None or tool_use_id in answered:
            raise errors.ValidationFailed(f"No pending action has the id {_shown(tool_use_id)} "
                                          "(unknown, or already answered).")
        if given["kind"] != run.action:
            expected = "an approval" if run.action == "approval" else "a tool result"
            raise errors.ValidationFailed(f"The pending action {_shown(tool_use_id)} needs {expected}.")
        answered[tool_use_id] = Answer(run.id, tool_use_id, run.name, json.loads(run.input), run.action,
                                       approved=given.get("approved"), reason=given.get("reason"),
                                       content=given.get("content"), is_error=bool(given.get("is_error")),
                                       decided_by=owner)
    missing = [i for i in pending if i not in answered]
    if missing and not has_message:
        raise errors.ValidationFailed("These pending actions need an answer (or send a message instead): "
                                      + ", ".join(_shown(i) for i in missing) + ".")
    for tool_use_id in missing:
        run = pending[tool_use_id]
        answered[tool_use_id] = Answer(run.id, tool_use_id, run.name, json.loads(run.input), "superseded",
                                       decided_by=owner)
    step = runs[0].step if runs else 1
    order = await tool_order(conn, reply_id=reply_id, step=step, fallback=[run.tool_use_id for run in runs])
    done = {run.tool_use_id: {"content": json.loads(run.output) if run.output else "", "is_error": run.is_error,
                              "duration_ms": run.duration_ms}
            for run in runs if run.status == "done"}
    return PendingStep(step=step, call_id=runs[0].call_id if runs else None, order=order, done=done,
                       answers=list(answered.values()))


async def tool_order(conn, *, reply_id: str, step: int, fallback: list[str]) -> list[str]:
    """The tool calls of the paused step in the order the model asked for them (its assistant turn)."""
    row = (await conn.execute(select(Turn.content_blocks).where(
        Turn.reply_id == reply_id, Turn.step == step, Turn.role == "assistant", Turn.status == "complete")
        .order_by(Turn.seq.desc()).limit(1))).scalar()
    if not row:
        return fallback
    return [block["id"] for block in json.loads(row) if block.get("type") == "tool_use"]


def _shown(value: Any) -> str:
    text = str(value)
    return repr(text[:64]) if len(text) <= 64 and text.isprintable() else "given"
