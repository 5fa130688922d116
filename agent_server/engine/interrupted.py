"""Replies whose process died (kill -9, out of memory, a lost machine): found by any instance — at start-up, on each
lease renewal, or when a client follows one — once its lease is free, and closed as ``interrupted``.

Closing one, in one transaction that first re-checks the lease under a row lock (two instances may look at once):
the partial text of the step it was in (rebuilt from its stored ``token`` events) kept as an ``incomplete`` turn;
its open calls closed in the ledger with the usage known; a step cut during its tools closed with ``is_error``
results ("not run"), so the conversation stays valid upstream; a final ``error`` event of type ``interrupted`` for
anyone who resumes it; the lease freed.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from sqlalchemy import func, select

from .. import errors
from ..db import lease, reads, writes
from ..db.models import Conversation, Reply, ReplyEvent, ToolRun, Turn, UpstreamCall, new_id, utcnow
from . import blocks as b
from .events import number

log = logging.getLogger(__name__)


class Interrupted(errors.AgentError):
    status, type = 503, "interrupted"


NOT_RUN = "not run: the server process stopped"
INTERRUPTED = Interrupted("The server process running this reply stopped before it finished; "
                          "what it had written is kept.")


async def find_and_close(db, *, exclude: set[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """Close every running reply (but ``exclude``, this process's own) whose lease is free; their ids."""
    now = utcnow()
    async with db.read() as conn:
        candidates = await reads.running_replies(conn)
    closed = []
    for row in candidates:
        if row.id in exclude or not _abandoned(row, now):
            continue
        if await db.write(close_one, reply_id=row.id, conversation_id=row.conversation_id, now=utcnow()):
            closed.append(row.id)
            log.warning("reply %s was interrupted (its process died); closed it", row.id)
    return closed


def _abandoned(row, now: datetime) -> bool:  # type: ignore[no-untyped-def]
    return row.lock_reply_id != row.id or lease.is_free(row, now)


async def close_one(conn, *, reply_id: str, conversation_id: str, now: datetime) -> bool:
    conversation = (await conn.execute(
        select(Conversation).where(Conversation.id == conversation_id).with_for_update())).one_or_none()
    reply = (await conn.execute(select(Reply).where(Reply.id == reply_id))).one_or_none()
    if conversation is None or reply is None or reply.status != "running":
        return False
    if conversation.lock_reply_id == reply_id and not lease.is_free(conversation, now):
        return False  # its holder is alive after all
    events = list(await conn.execute(
        select(ReplyEvent.seq, ReplyEvent.type, ReplyEvent.data).where(ReplyEvent.reply_id == reply_id)
        .order_by(ReplyEvent.seq)))
    turns = list(await conn.execute(
        select(Turn.seq, Turn.role, Turn.step, Turn.content_blocks, Turn.id).where(Turn.reply_id == reply_id)
        .order_by(Turn.seq)))
    last_seq = (await conn.execute(select(Turn.seq).where(Turn.conversation_id == conversation_id)
                                   .order_by(Turn.seq.desc()).limit(1))).scalar() or 0
    ops = []
    seq = last_seq + 1
    partial_text, partial_step, open_tool_uses = _partial(events, turns)
    last_turn_id = turns[-1].id if turns else None
    ran: dict[str, tuple] = {}
    if not turns:  # it continued a paused step and died before it stored the step's results (tools running)
        open_tool_uses, ran, pending_ops = await _paused_step(conn, conversation_id)
        ops.extend(pending_ops)
    if open_tool_uses:
        step, ids = open_tool_uses
        results = [b.tool_result_block(i, json.loads(ran[i][0]), bool(ran[i][1])) if i in ran
                   else b.tool_result_block(i, NOT_RUN, True) for i in ids]
        encoded = b.encode(results)
        ops.append(writes.insert_turn(id=new_id("turn"), conversation_id=conversation_id, reply_id=reply_id, seq=seq,
                                      step=step, role="user", content="", content_blocks=encoded,
                                      tokens=b.estimate_tokens(encoded), status="complete", created_at=now,
                                      updated_at=now))
        seq += 1
    elif partial_text is not None:
        blocks = b.text_blocks(partial_text) if partial_text else []
        encoded = b.encode(blocks)
        last_turn_id = new_id("turn")
        ops.append(writes.insert_turn(id=last_turn_id, conversation_id=conversation_id, reply_id=reply_id, seq=seq,
                                      step=partial_step, role="assistant", content=partial_text,
                                      content_blocks=encoded, tokens=b.estimate_tokens(encoded), status="incomplete",
                                      created_at=now, updated_at=now))
    steps = (await conn.execute(select(func.max(UpstreamCall.step)).where(UpstreamCall.reply_id == reply_id))
             ).scalar() or 0
    calls = list(await conn.execute(
        select(UpstreamCall.id, UpstreamCall.owner, UpstreamCall.created_at, UpstreamCall.cost_nano_usd)
        .where(UpstreamCall.reply_id == reply_id, UpstreamCall.status == "running")))
    spend = []
    for call in calls:
        # Its usage so far was stored with the events (what the dead process had been told): charged now.
        ops.append(writes.update_call(call.id, status="cancelled", error_type="interrupted"))
        if call.cost_nano_usd and call.owner:
            spend.append((call.owner, call.created_at.date().isoformat(), call.cost_nano_usd))
    final_seq = (events[-1].seq if events else 0) + 1
    final = number(final_seq, "error", INTERRUPTED.envelope())
    ops.append(writes.insert_events([{"reply_id": reply_id, "seq": final_seq, "type": "error", "data": final.json,
                                      "created_at": now}]))
    ops.append(writes.update_reply(reply_id, status="interrupted", finished_at=now, turn_id=last_turn_id,
                                   steps=steps, error_type="interrupted", error_message=INTERRUPTED.message,
                                   last_seq=final_seq))
    await writes.apply_with_spend(conn, ops=ops, spend=spend)
    if conversation.lock_reply_id == reply_id:
        await lease.release(conn, conversation_id=conversation_id, token=conversation.lock_token, now=now)
    return True


async def _paused_step(conn, conversation_id: str) -> tuple[tuple[int, list[str]] | None, dict[str, tuple], list]:  # type: ignore[no-untyped-def]
    """The paused step a continuing reply was answering, if the conversation still ends with it (its tool calls
    without results): its calls, the results of those that ran before the pause, and the operations that close
    its other tool runs as not run."""
    last = (await conn.execute(
        select(Turn.role, Turn.step, Turn.status, Turn.content_blocks, Turn.reply_id)
        .where(Turn.conversation_id == conversation_id).order_by(Turn.seq.desc()).limit(1))).one_or_none()
    if last is None or last.role != "assistant" or last.status != "complete":
        return None, {}, []
    ids = [block["id"] for block in json.loads(last.content_blocks or "[]") if block.get("type") == "tool_use"]
    if not ids:
        return None, {}, []
    runs = list(await conn.execute(select(ToolRun.id, ToolRun.tool_use_id, ToolRun.status, ToolRun.output,
                                          ToolRun.is_error).where(ToolRun.reply_id == last.reply_id)))
    ran = {run.tool_use_id: (run.output, run.is_error) for run in runs if run.status == "done" and run.output}
    ops = [writes.update_tool_run(run.id, status="done", output=b.encode(NOT_RUN), is_error=True)
           for run in runs if run.status == "pending"]
    return (last.step or 1, ids), ran, ops


def _partial(events: list, turns: list) -> tuple[str | None, int, tuple[int, list[str]] | None]:
    """From the stored events: the text of the step in progress (None if no step was in progress), its number,
    and the tool calls of a complete step that have no results yet (the process died while running them)."""
    step, text = 1, []
    for _seq, kind, data in events:
        if kind == "token":
            text.append(json.loads(data)["text"])
        elif kind == "step":
            step = json.loads(data)["step"] + 1
            text = []
    if turns:
        last = turns[-1]
        if last.role == "assistant":
            blocks = json.loads(last.content_blocks or "[]")
            calls = [block["id"] for block in blocks if block.get("type") == "tool_use"]
            if calls:
                return None, last.step or step, (last.step or step, calls)
    return ("".join(text) if text else None), step, None
