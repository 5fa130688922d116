"""The only module that talks to the anthropic SDK: one client per process, errors mapped to ours.

Every call streams (a whole reply for ``POST /agent`` is the same stream, collected): one code path, and the
request's deadline covers the generation, not only the wait for the first byte. The SDK makes the request —
authentication, retries before the response starts, status errors — and ``decoder`` reads the events.

Failures are mapped by their kind (``error.type``), not by exception class or status: an ``event: error`` inside a
200 stream carries the real kind; a connection dropped mid-stream is an ``httpx2`` transport error, not an
anthropic one; a body that is not an event stream, or ends before ``message_stop``, is an upstream failure.

The SDK retries 408/409/429/5xx and connection errors before a response starts, honouring any ``retry-after`` with
no cap, so the whole call (its retries included) is bounded by our own deadline. The deadline is also given to the
SDK as its timeout: a client-level ``httpx2`` timeout equal to httpx's default (5 s) is ignored by the SDK, which
then waits 600 s.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anthropic
import httpx2

from .. import errors
from ..fake_upstream.stub_transport import OfflineStubTransport
from ..money.prices import Usage
from .decoder import Delta, ErrorEvent, EventDecoder, MessageAssembler, UnreadableEvent, safe_usage, stream_deltas

log = logging.getLogger(__name__)

# Transient overloads inside a 200 stream, before anything reached the client, are retried by us.
MIDSTREAM_RETRY_DELAYS = (0.5, 1.0, 2.0)
_current_call: contextvars.ContextVar[CallStats | None] = contextvars.ContextVar("upstream_call", default=None)
# The SDK's own JSON settings (anthropic/_utils/_json.py).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass
class UpstreamRequest:
    """One Messages API request. ``messages`` are already-encoded JSON texts, one per message: stored history is
    sent as it was stored, byte for byte, without being parsed and encoded again."""

    model: str
    max_tokens: int
    messages: list[str]
    system: list[dict] | str | None = None
    tools: list[dict] | None = None
    tool_choice: dict | None = None
    thinking: dict | None = None

    def encode(self) -> bytes:
        """The request body, encoded as the SDK encodes a ``body`` (compact UTF-8 JSON).

        Handed to the SDK as ``content``: given a ``body`` dict, the SDK deep-copies it before encoding it (0.9 of
        2.0 ms of CPU per call on a 1,000-message history).
        """
        head: dict = {"model": self.model, "max_tokens": self.max_tokens, "stream": True}
        if self.system:
            head["system"] = self.system
        if self.tools:
            head["tools"] = self.tools
        if self.tool_choice:
            head["tool_choice"] = self.tool_choice
        if self.thinking:
            head["thinking"] = self.thinking
        return (_JSON.encode(head)[:-1] + ',"messages":[' + ",".join(self.messages) + "]}").encode()


@dataclass
class CallStats:
    """What one call cost and how it went: filled in while it runs, read whatever its outcome."""

    started: float = field(default_factory=time.perf_counter)
    attempts: int = 0
    request_id: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    ttft_ms: int | None = None
    finished: float | None = None

    @property
    def latency_ms(self) -> int:
        end = self.finished if self.finished is not None else time.perf_counter()
        return round((end - self.started) * 1000)


def _retry_after(exc: anthropic.APIStatusError) -> int:
    try:
        value = float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return 1
    return max(1, round(value))


def map_error(exc: BaseException) -> errors.AgentError:
    """Our error for any failure of an upstream call."""
    if isinstance(exc, errors.AgentError):
        return exc
    if isinstance(exc, ErrorEvent):
        return _map_kind(exc.kind, None, exc.message, retry_after=1)
    if isinstance(exc, UnreadableEvent):
        return errors.UpstreamFailed("The model provider sent a response that could not be read.")
    if isinstance(exc, anthropic.APIStatusError):
        return _map_kind(exc.type, exc.status_code, exc.api_message, retry_after=_retry_after(exc))
    if isinstance(exc, (anthropic.APITimeoutError, httpx2.TimeoutException, TimeoutError)):
        return errors.UpstreamTimeout("The model did not answer in time.")
    if isinstance(exc, (anthropic.APIConnectionError, httpx2.TransportError)):
        return errors.UpstreamFailed("The connection to the model provider failed.")
    if isinstance(exc, (anthropic.APIResponseValidationError, httpx2.HTTPError, httpx2.StreamError)):
        return errors.UpstreamFailed("The model provider sent a response that could not be read.")
    raise exc


def _map_kind(kind: str | None, status: int | None, message: str | None, *, retry_after: int) -> errors.AgentError:
    """Our error for an upstream error of type ``kind`` (status errors and ``event: error`` alike)."""
    if kind in ("overloaded_error", "rate_limit_error") or status in (429, 529):
        return errors.UpstreamOverloaded(
            "The model is overloaded or rate-limited upstream; try again shortly.", retry_after=retry_after
        )
    if kind in ("invalid_request_error", "request_too_large") or status in (400, 413, 422):
        detail = (message or "").strip()[:300]
        return errors.UpstreamInvalidRequest(f"The model rejected the request: {detail or 'invalid request'}")
    if kind == "timeout_error" or status in (408, 504):
        return errors.UpstreamTimeout("The model did not answer in time.")
    if kind in ("authentication_error", "permission_error") or status in (401, 403):
        log.error("upstream refused the server's credentials (%s)", kind or status)
        return errors.UpstreamFailed("The server could not authenticate with the model provider.")
    return errors.UpstreamFailed(f"The model provider failed ({kind or status}).")


def sdk_tracing_option() -> None | bool:
    """The SDK's OpenTelemetry spans: off unless ``ANTHROPIC_OPEN_TELEMETRY`` is set (then the SDK reads it).

    The SDK builds a span with a dozen attributes for every call even when no OpenTelemetry SDK is installed
    (~40-80 µs per call, on the way to every first token). This server reports its calls through its own metrics,
    logs and audit rows.
    """
    return None if os.environ.get("ANTHROPIC_OPEN_TELEMETRY") else False


async def _count_attempt(_request: httpx2.Request) -> None:
    stats = _current_call.get()
    if stats is not None:
        stats.attempts += 1


class Claude:
    """The process's one ``AsyncAnthropic`` client, or the offline stub behind the same SDK."""

    def __init__(self, *, api_key: str | None, base_url: str | None, max_retries: int, timeout_seconds: float,
                 stub_token_delay: float = 0.02):
        self.offline_stub = api_key is None
        self.base_url = None if self.offline_stub else base_url
        self.deadline_seconds = timeout_seconds
        transport = OfflineStubTransport(token_delay=stub_token_delay) if self.offline_stub else None
        timeout = httpx2.Timeout(timeout_seconds, connect=min(5.0, timeout_seconds))
        http_client = anthropic.DefaultAsyncHttpxClient(
            transport=transport, timeout=timeout, event_hooks={"request": [_count_attempt]},
        )
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key or "offline-stub",
            base_url=self.base_url,
            max_retries=max_retries,
            timeout=timeout,
            http_client=http_client,
            open_telemetry=sdk_tracing_option(),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: UpstreamRequest, stats: CallStats, assembler: MessageAssembler,
                     on_open: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[Delta]:
        """The deltas of one call as the model writes them; ``assembler`` holds the blocks, the stop reason and the
        usage (``stats`` the usage, when it ends, fails or is cancelled).

        ``on_open`` is awaited once, when the upstream has accepted the call, before any delta. Closing this
        generator early closes the upstream response, which stops the generation upstream.
        """
        deadline = asyncio.get_running_loop().time() + self.deadline_seconds
        sent = False
        opened = on_open is None

        async def open_once() -> None:  # a retried attempt opens again: tell the caller only the first time
            nonlocal opened
            if not opened:
                opened = True
                await on_open()

        body = request.encode()
        for retry_delay in (*MIDSTREAM_RETRY_DELAYS, None):
            try:
                async for delta in self._stream_once(body, stats, assembler, deadline, open_once):
                    sent = True
                    yield delta
                return
            except ErrorEvent as exc:
                if sent or exc.kind != "overloaded_error" or retry_delay is None:
                    raise map_error(exc) from exc
                log.info("upstream overloaded before the first token; retrying in %.1fs", retry_delay)
                await asyncio.sleep(min(retry_delay, max(deadline - asyncio.get_running_loop().time(), 0)))
                assembler.reset()  # the retried attempt starts from nothing
            except (anthropic.APIError, httpx2.HTTPError, httpx2.StreamError, TimeoutError, UnreadableEvent) as exc:
                if isinstance(exc, anthropic.APIStatusError):
                    stats.request_id = exc.request_id or stats.request_id
                raise map_error(exc) from exc
            finally:
                stats.finished = time.perf_counter()

    async def _stream_once(self, body: bytes, stats: CallStats, assembler: MessageAssembler, deadline: float,
                           on_open: Callable[[], Awaitable[None]]) -> AsyncIterator[Delta]:
        """One streamed attempt, through ``client.post`` (the SDK's documented call for raw requests): the same
        request, headers, retries and status errors as ``messages.create``, without the walk over the typed
        parameters and the response wrapper (0.15-0.3 ms less before each first token)."""
        token = _current_call.set(stats)
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.post("/v1/messages", content=body, cast_to=httpx2.Response,
                                                   stream=True)
        finally:
            _current_call.reset(token)
        stats.request_id = response.headers.get("request-id")
        decoder = EventDecoder()
        loop = asyncio.get_running_loop()
        try:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                raise UnreadableEvent(f"the provider answered with {response.headers.get('content-type')!r}, "
                                      "not an event stream")
            await on_open()
            # No timeout context per chunk (it showed in the fan-out profile): a stalled stream is ended by the
            # HTTP read timeout, a slow-dripping one by this check. Worst case: deadline + one read timeout.
            async for chunk in response.aiter_bytes():
                if loop.time() > deadline:
                    raise TimeoutError("upstream deadline passed mid-stream")
                for delta in stream_deltas(decoder, assembler, chunk):
                    if stats.ttft_ms is None and delta[0] != "block":
                        stats.ttft_ms = round((time.perf_counter() - stats.started) * 1000)
                    yield delta
            if not assembler.stopped:
                raise UnreadableEvent("the stream ended before message_stop")
            stats.stop_reason = assembler.stop_reason
            stats.usage = assembler.usage_record()  # raises on counts no real call reports
        finally:
            # Finished, cancelled or failed: keep the usage known so far (input tokens from message_start).
            stats.model = assembler.model or stats.model
            if stats.usage == Usage():
                stats.usage = safe_usage(assembler.usage)
            await response.aclose()
