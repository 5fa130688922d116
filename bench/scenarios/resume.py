"""Replies outlive their connection: replaying a finished reply, reconnecting to a running one, and what the
stored events cost.

- Replay: ``resume_replies`` finished replies of ``resume_tokens`` tokens each (``POST /agent``), then each replayed
  whole, ``resume_samples`` times, with ``GET /replies/{id}/events?after=0`` (the reply is over: its events come from
  storage, in pages). Events per second and the time to the first event, beside two references read by the same
  client in the same rounds: the same reply streamed live through agent_server (``POST /agent/stream``) and the
  fake upstream's own stream of it (``direct``: what the client and the machine allow).
- Reconnect: a reply of ``resume_live_tokens`` tokens ``resume_token_delay`` apart streamed with ``POST
  /agent/stream``; after ``resume_read_before`` events the client drops the connection (the reply goes on:
  ``AGENT_ON_DISCONNECT=continue``) and at once asks ``GET /replies/{id}/events`` with ``Last-Event-ID``: the time
  from that request to its first event (replayed from memory, the reply still running), and that no event was lost
  or repeated (the first seq is the last seen + 1; the replay then runs to ``done``).
- Storage: ``reply_events`` rows of the replies made here: their payload bytes (``type`` + ``data``), the table's own
  bytes with its primary-key index (SQLite ``dbstat``, PostgreSQL ``pg_total_relation_size``) per event, and the
  whole database's growth per event while the finished replies were made (their turns and ledger rows included).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .. import stats
from ..client import ANTHROPIC_VERSION, direct_body, http_client, post_json
from ..runner import FakeSpec, Run

ORDER = ("replay", "live", "direct")


@dataclass
class Read:
    ok: bool = False
    first_event: float | None = None  # seconds from sending the request to the first event
    total: float = 0.0
    events: int = 0
    tokens: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    seqs_in_order: bool = True
    reply_id: str | None = None
    error: str | None = None
    ended: bool = False
    names: list[str] = field(default_factory=list)


async def read_sse(url: str, *, method: str = "GET", body: dict | None = None, headers: dict[str, str] | None = None,
                   stop_after: int | None = None, timeout: float = 60) -> Read:
    """One SSE response read on a fresh connection: every event counted, its ``id:`` checked to go up by one; with
    ``stop_after``, the connection is dropped after that many events (a client that goes away)."""
    parts = urlsplit(url)
    payload = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1", f"Host: {parts.netloc}",
            "Accept: text/event-stream", "Connection: close", f"Content-Length: {len(payload)}",
            *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body is not None:
        head.append("Content-Type: application/json")
    result = Read()
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            status = await reader.readline()
            if b" 200 " not in status:
                result.error = f"HTTP {status.decode(errors='replace').strip()}"
                return result
            chunked = False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                chunked = chunked or line.lower().startswith(b"transfer-encoding: chunked")
            buffer = b""
            while True:
                if chunked:
                    size_line = await reader.readline()
                    if not size_line:
                        break
                    size = int(size_line.split(b";", 1)[0], 16)
                    if size == 0:
                        break
                    data = await reader.readexactly(size + 2)
                    chunk = data[:-2]
                else:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                now = time.perf_counter()
                *events, buffer = (buffer + chunk).split(b"\n\n")
                for event in events:
                    if _event(result, event, now - started) and stop_after is not None and result.events >= stop_after:
                        result.total = time.perf_counter() - started
                        result.ok = True
                        return result
                if result.ended:
                    break
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if writer is not None:
            writer.close()
    result.total = time.perf_counter() - started
    if result.error is None and not result.ended:
        result.error = "stream ended without its end event"
    result.ok = result.error is None
    return result


def _event(result: Read, raw: bytes, at: float) -> bool:
    """Account one event; False for a comment (a ping)."""
    seq, name, data = None, None, None
    for line in raw.split(b"\n"):
        if line.startswith(b"id: "):
            seq = int(line[4:])
        elif line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: "):
            data = line[6:]
    if name is None:
        return False
    if result.first_event is None:
        result.first_event = at
    result.events += 1
    result.tokens += name in ("token", "content_block_delta")
    if seq is not None:
        if result.first_seq is None:
            result.first_seq = seq
        elif result.last_seq is not None and seq != result.last_seq + 1:
            result.seqs_in_order = False
        result.last_seq = seq
    if name == "start" and data is not None and result.reply_id is None:
        result.reply_id = json.loads(data).get("reply_id")
    if name in ("done", "message_stop", "cancelled"):
        result.ended = True
    elif name == "error":
        result.error = data.decode(errors="replace")[:200] if data else "error event"
        result.ended = True
    return True


def _events_sql(kind: str) -> str:
    size = ("length(CAST(data AS BLOB)) + length(type)" if kind == "sqlite"
            else "octet_length(data) + octet_length(type)")
    return f"SELECT count(*), coalesce(sum({size}), 0) FROM reply_events"


async def _make_finished(run: Run, client, url: str, count: int, tokens: int, fake_url: str) -> list[str]:
    ids = []
    for index in range(count):
        await client.post(f"{fake_url}/_fake/script", json={"behaviours": [{"n_tokens": tokens, "token_delay": 0}]})
        result = await post_json(client, f"{url}/agent", {"message": f"a long answer, please ({index})"},
                                 run.auth)
        if not result.ok or not (result.data or {}).get("reply_id"):
            raise RuntimeError(f"a finished reply could not be made: {result.error or result.data}")
        ids.append(result.data["reply_id"])
        run.progress.update(f"finished replies: {index + 1}/{count}")
    return ids


async def run(run: Run) -> dict:
    plan = run.plan
    run.progress.section("resume", f"{plan.resume_replies} finished replies of {plan.resume_tokens} tokens replayed "
                                   f"{plan.resume_samples} times, {plan.resume_reconnects} reconnects")
    stack = run.stack("resume", FakeSpec(0.0, 0.0, plan.resume_tokens), proxy=False)
    server, fake, db, name = stack.server, stack.fake, stack.backend, next(iter(stack.databases))
    auth = run.auth
    replays: dict[str, list[Read]] = {key: [] for key in ORDER}
    reconnects: list[dict] = []
    try:
        async with http_client(plan.request_timeout) as client:
            await _make_finished(run, client, server.url, 1, 20, fake.url)  # warm-up
            events0, bytes0 = db.rows(name, _events_sql(db.kind))[0]
            size0 = db.storage(name)["bytes"]
            ids = await _make_finished(run, client, server.url, plan.resume_replies, plan.resume_tokens, fake.url)
            events1, bytes1 = db.rows(name, _events_sql(db.kind))[0]
            size1 = db.storage(name)["bytes"]
            table_bytes = db.table_bytes(name, "reply_events")
            all_events = db.scalar(name, "SELECT count(*) FROM reply_events")
            direct_headers = {"x-api-key": run.upstream_key, "anthropic-version": ANTHROPIC_VERSION}
            for index in range(plan.resume_samples + 1):  # the first round is a warm-up
                reply_id = ids[index % len(ids)]
                reads = {
                    "replay": await read_sse(f"{server.url}/replies/{reply_id}/events?after=0", headers=auth,
                                             timeout=plan.request_timeout),
                    "live": await read_sse(f"{server.url}/agent/stream", method="POST", headers=auth,
                                           body={"message": f"live {index}"},
                                           timeout=plan.request_timeout),
                    "direct": await read_sse(f"{fake.url}/v1/messages", method="POST", headers=direct_headers,
                                             body=direct_body(f"direct {index}", 4096, stream=True),
                                             timeout=plan.request_timeout),
                }
                if index:
                    for key, read in reads.items():
                        replays[key].append(read)
                run.progress.update(f"replay round {index}/{plan.resume_samples}")
            for index in range(plan.resume_reconnects):
                await client.post(f"{fake.url}/_fake/script", json={"behaviours": [
                    {"n_tokens": plan.resume_live_tokens, "token_delay": plan.resume_token_delay}]})
                first = await read_sse(f"{server.url}/agent/stream", method="POST", headers=auth,
                                       body={"message": f"reconnect {index}"},
                                       stop_after=plan.resume_read_before, timeout=plan.request_timeout)
                if not first.ok or first.reply_id is None or first.last_seq is None:
                    reconnects.append({"error": first.error or "no reply id / no event id"})
                    continue
                again = await read_sse(f"{server.url}/replies/{first.reply_id}/events",
                                       headers={**auth, "Last-Event-ID": str(first.last_seq)},
                                       timeout=plan.request_timeout)
                reconnects.append({
                    "ok": again.ok, "error": again.error, "first_event_s": again.first_event,
                    "continuous": again.first_seq == first.last_seq + 1 and again.seqs_in_order,
                    "events_before": first.events, "events_after": again.events,
                    "tokens": first.tokens + again.tokens,
                })
                run.progress.update(f"reconnect {index + 1}/{plan.resume_reconnects}")
    finally:
        run.release(stack)
    made_events = events1 - events0
    result: dict = {
        "config": {"tokens": plan.resume_tokens, "finished_replies": plan.resume_replies,
                   "replays": plan.resume_samples, "reconnects": plan.resume_reconnects,
                   "live_tokens": plan.resume_live_tokens, "live_token_delay_ms": plan.resume_token_delay * 1000,
                   "read_before_drop": plan.resume_read_before, "database": db.kind,
                   "note": "server = GET /replies/{id}/events of a finished reply (from storage); baseline column: "
                           "the same reply streamed live through agent_server; reference: the fake's own stream"},
    }
    for key in ORDER:
        reads = replays[key]
        good = [r for r in reads if r.ok]
        events = sum(r.events for r in good)
        seconds = sum(r.total for r in good)
        result[key] = {
            "events_per_s": round(events / seconds, 1) if seconds else None,
            "events_per_read": round(events / len(good), 1) if good else None,
            "first_event": stats.latency_summary([r.first_event for r in good if r.first_event is not None]),
            "read": stats.latency_summary([r.total for r in good]),
            "errors": len(reads) - len(good), "first_errors": [r.error for r in reads if not r.ok][:3],
        }
        if key != "direct":
            result[key]["in_order"] = all(r.seqs_in_order for r in good)
    result["replay"]["vs_live"] = stats.ratio(result["replay"]["events_per_s"], result["live"]["events_per_s"])
    result["replay"]["vs_direct"] = stats.ratio(result["replay"]["events_per_s"], result["direct"]["events_per_s"])
    good = [r for r in reconnects if r.get("ok")]
    result["reconnect"] = {
        "first_event": stats.latency_summary([r["first_event_s"] for r in good]),
        "continuous": all(r["continuous"] for r in good) if good else None,
        "complete": all(r["tokens"] == plan.resume_live_tokens for r in good) if good else None,
        "errors": len(reconnects) - len(good),
        "first_errors": [r.get("error") for r in reconnects if not r.get("ok")][:3],
    }
    result["storage"] = {
        "events": made_events,
        "payload_bytes_per_event": round((bytes1 - bytes0) / made_events, 1) if made_events else None,
        "table_bytes_per_event": round(table_bytes / all_events, 1) if all_events else None,
        "db_growth_bytes_per_event": round((size1 - size0) / made_events, 1) if made_events else None,
        "note": "payload: type + data of the rows; table: reply_events with its primary-key index, all rows "
                "(whole pages); growth: the whole database while the finished replies were made (their turns, "
                "ledger and reply rows too), over their events",
    }
    return result
