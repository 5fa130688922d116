"""Stored conversations written straight into a migrated SQLite file, much faster than through the API.

Rows follow migrations/versions/0001_initial.py: ``conversations``, ``turns`` (user and assistant turns
alternate, seq 1..n, status ``complete``) and one ``requests`` row per assistant turn, as the server
writes them. Times use SQLAlchemy's SQLite DateTime text format.
"""

from __future__ import annotations

import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

MODEL = "claude-sonnet-5-5"
OWNER = "bench"
_WORDS = ("the", "agent", "reads", "a", "long", "history", "of", "turns", "before", "it", "answers", "again")


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(15).replace('-', 'A').replace('_', 'z')}"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


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


def add_conversations(database: Path, *, count: int, turns: int, chars: int) -> list[str]:
    """``count`` conversations of ``turns`` complete turns each, owned by ``bench``; returns their ids."""
    now = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    ids: list[str] = []
    conversations, turn_rows, request_rows = [], [], []
    for _ in range(count):
        conversation_id = _id("conv")
        ids.append(conversation_id)
        conversations.append((conversation_id, OWNER, MODEL, None, _stamp(now), _stamp(now)))
        previous = None
        for seq in range(1, turns + 1):
            turn_id = _id("turn")
            moment = _stamp(now + timedelta(milliseconds=seq))
            role = "user" if seq % 2 else "assistant"
            turn_rows.append((turn_id, conversation_id, seq, role, text(chars, seq), None, "complete", moment, moment))
            if role == "assistant" and previous is not None:
                request_rows.append((_id("call"), conversation_id, previous, turn_id, "agent", MODEL,
                                     "req_" + secrets.token_hex(12), "ok", None, "end_turn", 25 * seq,
                                     chars // 4, 0, None, None, 0, 1000 * seq, 900, 300, 1, moment))
            previous = turn_id
    with sqlite3.connect(database, timeout=60) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executemany("INSERT INTO conversations (id, owner, model, system, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", conversations)
        conn.executemany("INSERT INTO turns (id, conversation_id, seq, role, content, content_blocks, status, "
                         "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", turn_rows)
        conn.executemany(
            "INSERT INTO requests (id, conversation_id, prompt_turn_id, turn_id, route, model, upstream_request_id, "
            "status, error_type, stop_reason, input_tokens, output_tokens, cache_creation_input_tokens, "
            "cache_write_5m_tokens, cache_write_1h_tokens, cache_read_input_tokens, cost_nano_usd, latency_ms, "
            "ttft_ms, attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            request_rows,
        )
    conn.close()
    return ids


def checkpoint(database: Path) -> dict:
    """Fold the WAL into the main file, then report its size and contents."""
    conn = sqlite3.connect(database, timeout=60)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        turns, chars = conn.execute("SELECT count(*), coalesce(sum(length(content)), 0) FROM turns").fetchone()
        requests = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    return {"bytes": database.stat().st_size, "turns": turns, "content_chars": chars, "requests": requests,
            "page_size": page_size, "free_pages": free_pages}
