"""Stored conversations written straight into a migrated database, much faster than through the API.

The rows are those agent_server writes for finished replies (version 2): ``conversations``; per exchange one
``replies`` row (complete), the user turn (step 0) and the assistant turn (step 1), each with its content blocks
and token estimate, and one ``requests`` row (the ledger); plus the owner's ``daily_spend``. They are built with
agent_server's own statement builders (``db/writes.py``: ``await db.write(writes.apply, ops=[...])``) and block
encoding (``engine/blocks.py``), on either database (``db.open_database``: SQLite or PostgreSQL). No
``reply_events``: the server keeps those for ``AGENT_REPLY_EVENTS_HOURS`` only.

Seeding runs in a child process (``add_conversations``) that imports agent_server the way the servers of the run
do (with ``--rev``, from the snapshot), so that the rows always fit the schema being measured; this module is
loaded there by its path, so nothing else of the harness is imported with it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

MODEL = "claude-sonnet-5-5"
OWNER = "bench"
_WORDS = ("the", "agent", "reads", "a", "long", "history", "of", "turns", "before", "it", "answers", "again")
BATCH_ROWS = 5000  # rows per executemany, per table, in one write transaction
_LOADER = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


def text(chars: int, seed: int) -> str:
    words, size, i = [], 0, seed
    while size < chars:
        word = _WORDS[i % len(_WORDS)]
        words.append(word)
        size += len(word) + 1
        i += 7
    return " ".join(words)[:chars]


def messages(turns: int, chars: int) -> list[dict]:
    """The same history as ``add_conversations`` stores, as Messages API messages (for the baseline proxy)."""
    return [{"role": "user" if seq % 2 else "assistant", "content": text(chars, seq)} for seq in range(1, turns + 1)]


def add_conversations(database_url: str, jobs: list[dict], *, env: dict[str, str], cwd: Path,
                      timeout: float = 600) -> list[list[str]]:
    """For each job ``{"count", "turns", "chars"}``, ``count`` conversations of ``turns`` complete turns owned by
    ``bench``, written by a child process with ``env`` (its PYTHONPATH picks the agent_server); their ids, per job."""
    payload = json.dumps({"database_url": database_url, "jobs": jobs})
    proc = subprocess.run([sys.executable, "-c", _LOADER, str(Path(__file__).resolve())], input=payload, text=True,
                          capture_output=True, env=env, cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"seeding {jobs} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["ids"]


# -- the child's side: imports agent_server ---------------------------------------------------------------------


def _conversation_rows(turns: int, chars: int, start, out: dict[str, list]) -> str:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from agent_server.db import writes
    from agent_server.db.models import new_id
    from agent_server.engine import blocks as b

    conversation_id = new_id("conv")
    last = start + timedelta(milliseconds=turns)
    out["conversations"].append(writes.insert_conversation(
        id=conversation_id, owner=OWNER, model=MODEL, system=None, title=text(min(chars, 80), 1), created_at=start,
        updated_at=last))
    for seq in range(1, turns + 1, 2):
        reply_id = new_id("reply")
        user_id, moment = f"turn_{reply_id.removeprefix('reply_')}", start + timedelta(milliseconds=seq)
        prompt = b.encode(b.text_blocks(text(chars, seq)))
        out["turns"].append(writes.insert_turn(
            id=user_id, conversation_id=conversation_id, reply_id=reply_id, seq=seq, step=0, role="user",
            content=text(chars, seq), content_blocks=prompt, tokens=b.estimate_tokens(prompt), status="complete",
            created_at=moment, updated_at=moment))
        answer_id = None
        if seq + 1 <= turns:
            answer_id = new_id("turn")
            answer = b.encode(b.text_blocks(text(chars, seq + 1)))
            done = start + timedelta(milliseconds=seq + 1)
            out["turns"].append(writes.insert_turn(
                id=answer_id, conversation_id=conversation_id, reply_id=reply_id, seq=seq + 1, step=1,
                role="assistant", content=text(chars, seq + 1), content_blocks=answer,
                tokens=b.estimate_tokens(answer), status="complete", created_at=done, updated_at=done))
            out["requests"].append(writes.insert_call(
                id=new_id("call"), conversation_id=conversation_id, owner=OWNER, reply_id=reply_id, step=1,
                prompt_turn_id=user_id, turn_id=answer_id, route="agent", model=MODEL,
                upstream_request_id="req_" + secrets.token_hex(12), status="ok", stop_reason="end_turn",
                input_tokens=25 * seq, output_tokens=max(chars // 4, 1), cache_creation_input_tokens=0,
                cache_read_input_tokens=0, cost_nano_usd=1000 * seq, latency_ms=900, ttft_ms=300, attempts=1,
                created_at=moment))
        out["replies"].append(writes.insert_reply(
            id=reply_id, conversation_id=conversation_id, owner=OWNER, route="agent", model=MODEL,
            status="complete" if answer_id else "failed", prompt_turn_id=user_id, turn_id=answer_id,
            steps=1 if answer_id else 0, stop_reason="end_turn" if answer_id else None, last_seq=0,
            context=b.encode({"turns_sent": seq, "turns_omitted": 0}), created_at=moment, finished_at=moment))
    return conversation_id


def _batched(ops: list) -> list:  # type: ignore[type-arg]
    """Ops of one statement as executemany ops of at most BATCH_ROWS parameter sets."""
    if not ops:
        return []
    statement = ops[0][0]
    rows = [parameters for _, parameters in ops]
    return [(statement, rows[i:i + BATCH_ROWS]) for i in range(0, len(rows), BATCH_ROWS)]


async def _seed(database_url: str, jobs: list[dict]) -> list[list[str]]:
    from datetime import UTC, datetime, timedelta

    from agent_server.db import open_database, writes

    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    db = open_database(database_url)
    ids: list[list[str]] = []
    try:
        for job in jobs:
            out: dict[str, list] = {"conversations": [], "replies": [], "turns": [], "requests": []}
            made = []
            for _ in range(job["count"]):
                made.append(_conversation_rows(job["turns"], job["chars"], start, out))
                if len(out["turns"]) >= BATCH_ROWS * 4:
                    await _store(db, writes, out)
                    out = {key: [] for key in out}
            await _store(db, writes, out)
            ids.append(made)
        await db.write(writes.add_spend, owner=OWNER, day=start.date().isoformat(), cost_nano_usd=1)
    finally:
        await db.dispose()
    return ids


async def _store(db, writes, out: dict[str, list]) -> None:  # type: ignore[no-untyped-def]
    ops = [op for table in ("conversations", "replies", "turns", "requests") for op in _batched(out[table])]
    if ops:
        await db.write(writes.apply, ops=ops, heavy=True)


def _main() -> None:
    import asyncio

    spec: dict[str, Any] = json.loads(sys.stdin.read())
    os.environ.pop("DATABASE_URL", None)
    ids = asyncio.run(_seed(spec["database_url"], spec["jobs"]))
    print(json.dumps({"ids": ids}))


if __name__ == "__main__":
    _main()
