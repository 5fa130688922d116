"""The only module that talks to the anthropic SDK: one client per process, errors mapped to ours.

Streamed replies: the SDK makes the request and ``upstream_events`` reads the response's events (see
there why). Failures are mapped by their kind (``error.type``), not by exception class or status: an
``event: error`` inside a 200 stream carries the real kind; a connection dropped mid-stream is an
``httpx2`` transport error, not an anthropic one; a stream that ends before ``message_stop`` is a failure.

The SDK retries 408/409/429/5xx and connection errors before a response starts, honouring any
``retry-after`` with no cap, so the whole call (its retries included) is bounded by our own deadline.
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

from . import errors
from .fake_upstream.stub_transport import OfflineStubTransport
from .pricing import Usage
from .upstream_events import (
    ErrorEvent, EventDecoder, MessageState, UnreadableEvent, text_deltas, usage_from_wire,
)

log = logging.getLogger(__name__)

# Transient overloads inside a 200 stream, before any text reached the client, are retried by us.
MIDSTREAM_RETRY_DELAYS = (0.5, 1.0, 2.0)
_current_call: contextvars.ContextVar[CallStats | None] = contextvars.ContextVar("claude_call", default=None)


@dataclass
class UpstreamRequest:
    model: str
    max_tokens: int
    messages: list[dict]
    system: str | None = None

    def encode(self, *, stream: bool) -> bytes:
        """The Messages API request body, encoded exactly as the SDK encodes a ``body`` (compact UTF-8 JSON).

        Handed to the SDK as ``content``: given a ``body`` dict, the SDK deep-copies it before encoding it,
        which on a 1,000-message history was 0.9 of its 2.0 ms of CPU per call (measured through the SDK
        with a mock transport); the bytes on the wire are the same.
        """
        body: dict = {"model": self.model, "max_tokens": self.max_tokens, "messages": self.messages}
        if self.system:
            body["system"] = self.system
        if stream:
            body["stream"] = True
        return _JSON.encode(body).encode()


# The SDK's own JSON settings (anthropic/_utils/_json.py); our bodies hold only str, int, list and dict.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass
class CallStats:
    """What one reply cost and how it went: filled in while the call runs, read whatever its outcome."""

    started: float = field(default_factory=time.perf_counter)
    attempts: int = 0
    request_id: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    ttft_ms: int | None = None
    finished: float | None = None
    retry_after: int | None = None

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
    if isinstance(exc, anthropic.APIResponseValidationError):
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
    (the spans then go nowhere): ~40-80 µs per call, on the way to every first token. This server reports its
    calls through its own metrics, logs and audit rows; set ``ANTHROPIC_OPEN_TELEMETRY=true`` under an
    OpenTelemetry setup to get the SDK's spans as well.
    """
    return None if os.environ.get("ANTHROPIC_OPEN_TELEMETRY") else False


async def _count_attempt(_request: httpx2.Request) -> None:
    stats = _current_call.get()
    if stats is not None:
        stats.attempts += 1


class Claude:
    """The process's one ``AsyncAnthropic`` client, or the offline stub behind the same SDK."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        max_retries: int,
        timeout_seconds: float,
        stub_token_delay: float = 0.02,
    ):
        self.offline_stub = api_key is None
        self.deadline_seconds = timeout_seconds
        transport = OfflineStubTransport(token_delay=stub_token_delay) if self.offline_stub else None
        http_client = anthropic.DefaultAsyncHttpxClient(
            transport=transport,
            timeout=httpx2.Timeout(timeout_seconds, connect=5.0),
            event_hooks={"request": [_count_attempt]},
        )
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key or "offline-stub",
            base_url=None if self.offline_stub else base_url,
            max_retries=max_retries,
            http_client=http_client,
            open_telemetry=sdk_tracing_option(),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, request: UpstreamRequest, stats: CallStats) -> str:
        """The whole reply at once (POST /agent).

        Through ``client.post`` (the SDK's documented call for raw requests, parsed into its ``Message``)
        rather than ``messages.create``, which refuses ``max_tokens`` above ~21,000 with a ValueError when
        the client's timeout is the SDK's default 10 minutes: our deadline bounds every call instead. It
        also skips the walk over the typed parameters (~0.7 ms on a 1,000-turn history).
        """
        token = _current_call.set(stats)
        try:
            async with asyncio.timeout(self.deadline_seconds):
                message = await self._client.post(
                    "/v1/messages", content=request.encode(stream=False), cast_to=anthropic.types.Message
                )
        except BaseException as exc:
            stats.finished = time.perf_counter()
            if isinstance(exc, asyncio.CancelledError):
                raise
            _record_failure(stats, exc)
            raise map_error(exc) from exc
        finally:
            _current_call.reset(token)
        stats.finished = time.perf_counter()
        stats.request_id = message._request_id
        stats.model = message.model
        stats.stop_reason = message.stop_reason
        stats.usage = usage_from_wire(message.usage.model_dump()) if message.usage else Usage()
        return "".join(block.text for block in message.content if block.type == "text")

    async def stream(
        self, request: UpstreamRequest, stats: CallStats, on_open: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[str]:
        """Text deltas as the model writes them; ``stats`` holds the usage when it ends or is cancelled.

        ``on_open`` is awaited once, when the upstream has accepted the call (its response headers are in),
        before any text: work done there overlaps the model's time to first token.
        Closing this generator early (the client left) closes the upstream response, which stops the
        generation upstream.
        """
        deadline = asyncio.get_running_loop().time() + self.deadline_seconds
        sent_text = False
        opened = on_open is None

        async def open_once() -> None:  # a retried attempt opens again: tell the caller only the first time
            nonlocal opened
            if not opened:
                opened = True
                await on_open()

        for retry_delay in (*MIDSTREAM_RETRY_DELAYS, None):
            try:
                async for text in self._stream_once(request, stats, deadline, open_once):
                    sent_text = True
                    yield text
                return
            except ErrorEvent as exc:
                if sent_text or exc.kind != "overloaded_error" or retry_delay is None:
                    raise map_error(exc) from exc
                log.info("upstream overloaded before the first token; retrying in %.1fs", retry_delay)
                await asyncio.sleep(min(retry_delay, max(deadline - asyncio.get_running_loop().time(), 0)))
            except (anthropic.APIError, httpx2.TransportError, TimeoutError, UnreadableEvent) as exc:
                _record_failure(stats, exc)
                raise map_error(exc) from exc
            finally:
                stats.finished = time.perf_counter()

    async def _stream_once(
        self, request: UpstreamRequest, stats: CallStats, deadline: float,
        on_open: Callable[[], Awaitable[None]],
    ) -> AsyncIterator[str]:
        """One streamed attempt: the SDK makes the request, ``upstream_events`` reads the events.

        Through ``client.post`` (the SDK's documented call for raw requests) rather than ``messages.create``:
        the same request, headers, retries and status errors, without the walk over the typed parameters and
        the response wrapper that we would not use. Measured: 0.15-0.3 ms less before each first token.
        """
        token = _current_call.set(stats)
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.post(
                    "/v1/messages", content=request.encode(stream=True), cast_to=httpx2.Response,
                    stream=True,
                )
        finally:
            _current_call.reset(token)
        stats.request_id = response.headers.get("request-id")
        decoder, state = EventDecoder(), MessageState()
        loop = asyncio.get_running_loop()
        try:
            await on_open()
            # No timeout context per chunk (it showed in the fan-out profile): a stalled stream is ended by the
            # HTTP read timeout, a slow-dripping one by this check. Worst case: deadline + one read timeout.
            async for chunk in response.aiter_bytes():
                if loop.time() > deadline:
                    raise TimeoutError("upstream deadline passed mid-stream")
                for text in text_deltas(decoder, state, chunk):
                    if stats.ttft_ms is None:
                        stats.ttft_ms = round((time.perf_counter() - stats.started) * 1000)
                    yield text
            if not state.stopped:
                raise UnreadableEvent("the stream ended before message_stop")
            stats.stop_reason = state.stop_reason
        finally:
            # Finished, cancelled or failed: keep the usage known so far (input tokens from message_start).
            stats.model = state.model or stats.model
            stats.usage = state.usage_record()
            await response.aclose()


def _record_failure(stats: CallStats, exc: BaseException) -> None:
    if isinstance(exc, anthropic.APIStatusError):
        stats.request_id = exc.request_id or stats.request_id
