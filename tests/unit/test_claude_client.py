"""How the one SDK client is configured."""

from __future__ import annotations

import pytest
from anthropic._utils._json import openapi_dumps

from agent_server.claude import Claude, UpstreamRequest


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


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("system", [None, "Réponds en français."])
def test_the_request_body_is_encoded_exactly_as_the_sdk_encodes_one(stream, system) -> None:
    """We hand the SDK encoded bytes (``content``) instead of a dict (``body``), which it would deep-copy
    first; the bytes must be the ones it would have sent."""
    messages = [{"role": "user", "content": 'quote " back\\slash \n \u2028 🦀 中文'},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]
    request = UpstreamRequest(model="claude-sonnet-5-5", max_tokens=64, messages=messages, system=system)
    as_the_sdk = {"model": "claude-sonnet-5-5", "max_tokens": 64, "messages": messages}
    if system:
        as_the_sdk["system"] = system
    if stream:
        as_the_sdk["stream"] = True
    assert request.encode(stream=stream) == openapi_dumps(as_the_sdk)
