"""How the one SDK client is configured, and how its requests are encoded."""

from __future__ import annotations

import json

import httpx2
import pytest
from anthropic._utils._json import openapi_dumps

from agent_server.engine import blocks
from agent_server.upstream.client import Claude, UpstreamRequest


@pytest.mark.parametrize("env, spans", [(None, False), ("true", True), ("false", False)])
async def test_sdk_spans_are_off_unless_the_sdks_own_variable_asks(monkeypatch, env, spans) -> None:
    if env is None:
        monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    else:
        monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", env)
    claude = Claude(api_key="sk-test", base_url="http://127.0.0.1:9", max_retries=0, timeout_seconds=5)
    try:
        assert claude._client.open_telemetry["traces"]["enabled"] is spans
    finally:
        await claude.aclose()


@pytest.mark.parametrize("seconds", [5, 20, 600])
async def test_the_configured_upstream_timeout_is_the_sdks_for_every_value(seconds) -> None:
    """httpx's default timeout is 5 s, and the SDK ignores a client timeout equal to it (then it waits 600 s):
    our deadline is given to the SDK itself."""
    claude = Claude(api_key="sk-test", base_url="http://127.0.0.1:9", max_retries=0, timeout_seconds=seconds)
    try:
        timeout = claude._client.timeout
        assert isinstance(timeout, httpx2.Timeout) and timeout.read == seconds
    finally:
        await claude.aclose()


@pytest.mark.parametrize("system", [None, "Réponds en français."])
@pytest.mark.parametrize("tools", [None, [{"name": "t", "description": "d", "input_schema": {"type": "object"}}]])
def test_the_request_body_is_encoded_exactly_as_the_sdk_encodes_one(system, tools) -> None:
    """We hand the SDK encoded bytes (``content``) built from stored JSON instead of a dict (``body``), which it
    would deep-copy first; the bytes must be the ones it would have sent for the same request."""
    messages = [{"role": "user", "content": [{"type": "text", "text": 'quote " back\\slash \n \u2028 🦀 中文'}]},
                {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                {"role": "user", "content": [{"type": "text", "text": "again"}]}]
    encoded = [blocks.message_json(m["role"], blocks.encode(m["content"])) for m in messages]
    request = UpstreamRequest(model="claude-sonnet-5-5", max_tokens=64, messages=encoded, system=system, tools=tools)
    as_the_sdk: dict = {"model": "claude-sonnet-5-5", "max_tokens": 64, "stream": True}
    if system:
        as_the_sdk["system"] = system
    if tools:
        as_the_sdk["tools"] = tools
    as_the_sdk["messages"] = messages
    assert request.encode() == openapi_dumps(as_the_sdk)
    assert json.loads(request.encode())["messages"] == messages
