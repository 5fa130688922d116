"""How the one SDK client is configured."""

from __future__ import annotations

import pytest

from agent_server.claude import Claude


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
