"""The load generator's primitives: one SSE stream timed token by token, one JSON POST, one WS session.

Parsing is kept to the minimum a benchmark needs (split on blank lines, look at the event name), because
the client shares two cores with the processes it measures. Every call is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import ClientConnection, connect

ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class Target:
    """One thing to measure: where to POST, with which headers, and how its SSE events are named."""

    name: str
    url: str
    headers: dict[str, str]
    token_event: bytes = b"event: token\n"
    end_event: bytes = b"event: done\n"


def direct_body(message: str, max_tokens: int = 1024, *, stream: bool) -> dict:
    """A Messages API request, as agent_server would send it upstream for a new conversation."""
    return {"model": "claude-sonnet-5-5", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": message}]}


def direct_target(name: str, fake_url: str, upstream_key: str) -> Target:
    headers = {"x-api-key": upstream_key, "anthropic-version": ANTHROPIC_VERSION}
    return Target(name, f"{fake_url}/v1/messages", headers, b"event: content_block_delta\n", b"event: message_stop\n")


def http_client(timeout: float) -> httpx.AsyncClient:
    # No pool limits: the concurrency is the benchmark's to choose. trust_env=False: never a proxy on loopback.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout), trust_env=False,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=60),
    )


def without_id(event: bytes) -> bytes:
    """An SSE event without its leading ``id:`` line (agent_server's events carry one since version 2; the
    baseline's and the fake's do not), so that events are told apart by their ``event:`` line alone."""
    if event.startswith(b"id:"):
        end = event.find(b"\n")
        return event[end + 1:] if end >= 0 else b""
    return event


@dataclass
class StreamResult:
    ok: bool
    ttft: float | None = None  # seconds from sending the request to the first token event
    total: float = 0.0
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)  # seconds between consecutive token events
    error: str | None = None


async def sse_stream(client: httpx.AsyncClient, target: Target, body: dict, *, gaps: bool = False,
                     expect_tokens: int | None = None) -> StreamResult:
    """POST ``body`` and read the event stream to its end event, timing every token event's arrival.

    Events that arrive in one read share its timestamp (their gaps are 0): that is what the client saw.
    """
    result = StreamResult(ok=False)
    started = time.perf_counter()
    last = 0.0
    try:
        async with client.stream("POST", target.url, json=body, headers=target.headers) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"HTTP {response.status_code}"
                return result
            buffer = b""
            ended = False
            async for chunk in response.aiter_raw():
                now = time.perf_counter()
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    event = without_id(event)
                    if event.startswith(target.token_event):
                        if result.tokens == 0:
                            result.ttft = now - started
                        elif gaps:
                            result.gaps.append(now - last)
                        last = now
                        result.tokens += 1
                    elif event.startswith(target.end_event):
                        ended = True
                    elif event.startswith(b"event: error"):
                        result.error = event.decode(errors="replace")[:200]
            result.total = time.perf_counter() - started
            if result.error is None and not ended:
                result.error = "stream ended without its end event"
            elif result.error is None and expect_tokens is not None and result.tokens != expect_tokens:
                result.error = f"{result.tokens} tokens, expected {expect_tokens}"
            result.ok = result.error is None
    except (httpx.HTTPError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    return result


@dataclass
class PostResult:
    ok: bool
    latency: float
    data: dict | None = None
    error: str | None = None


async def post_json(client: httpx.AsyncClient, url: str, body: dict, headers: dict[str, str]) -> PostResult:
    started = time.perf_counter()
    try:
        response = await client.post(url, json=body, headers=headers)
        latency = time.perf_counter() - started
        if response.status_code != 200:
            return PostResult(False, latency, error=f"HTTP {response.status_code}: {response.text[:200]}")
        return PostResult(True, latency, response.json())
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return PostResult(False, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}"[:200])


async def ws_open(url: str, headers: dict[str, str], *, compression: str | None, timeout: float) -> ClientConnection:
    """A WebSocket session that has received its first (``session``) frame."""
    async with asyncio.timeout(timeout):
        conn = await connect(url, additional_headers=headers, compression=compression, ping_interval=None,
                             open_timeout=timeout, close_timeout=2, max_queue=None)
        first = json.loads(await conn.recv())
    if first.get("type") != "session":
        await conn.close()
        raise RuntimeError(f"first frame is not a session frame: {str(first)[:200]}")
    return conn


async def ws_reply(conn: ClientConnection, message: str, *, timeout: float) -> PostResult:
    """Send one message and wait for its ``done`` frame (pings and tokens are read and skipped)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await conn.send(json.dumps({"type": "message", "message": message}))
            while True:
                frame = json.loads(await conn.recv())
                if frame.get("type") == "done":
                    return PostResult(True, time.perf_counter() - started)
                if frame.get("type") == "error":
                    return PostResult(False, time.perf_counter() - started, error=str(frame)[:200])
    except Exception as exc:  # timeouts, closed connections (websockets' ConnectionClosed), bad JSON
        return PostResult(False, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}"[:200])


# The server's own view, from GET /metrics: (sum, count) pairs of these histograms, summed over labels.
SERVER_HISTOGRAMS = {
    "db_write": "agent_db_write_seconds",
    "upstream_ttft": "agent_upstream_ttft_seconds",
    "upstream_latency": "agent_upstream_latency_seconds",
}


async def server_histograms(client: httpx.AsyncClient, base_url: str, headers: dict[str, str]) -> dict:
    """{"db_write": (sum_s, count), ...} from the server's Prometheus text; {} when it cannot be read."""
    try:
        response = await client.get(f"{base_url}/metrics", headers=headers)
        response.raise_for_status()
    except httpx.HTTPError:
        return {}
    totals = {key: [0.0, 0] for key in SERVER_HISTOGRAMS}
    for line in response.text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        for key, metric in SERVER_HISTOGRAMS.items():
            if name == f"{metric}_sum":
                totals[key][0] += float(value)
            elif name == f"{metric}_count":
                totals[key][1] += int(float(value))
    return {key: tuple(v) for key, v in totals.items()}


def histogram_delta(before: dict, after: dict) -> dict:
    """Mean (ms) and count of each histogram between two scrapes (a server's view of one phase)."""
    out = {}
    for key in SERVER_HISTOGRAMS:
        if key in before and key in after:
            total, count = after[key][0] - before[key][0], after[key][1] - before[key][1]
            out[key] = {"count": count, "mean_ms": round(1000 * total / count, 3) if count else None}
    return out
