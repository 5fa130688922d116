"""The ``tool_result`` event's cut: at most 64 KiB of UTF-8, never inside a character."""

from __future__ import annotations

import pytest

from agent_server.engine.toolrun import EVENT_LIMIT, ToolResult, cut_utf8


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"])
def test_an_event_holds_at_most_64_kib_of_utf8_and_whole_characters(char: str) -> None:
    text = char * (EVENT_LIMIT // len(char.encode()) + 10)
    shown, truncated = ToolResult("toolu_1", text, False, 5, "ok").event_content()
    size = len(shown.encode("utf-8"))
    assert truncated is True
    assert EVENT_LIMIT - len(char.encode()) < size <= EVENT_LIMIT
    assert text.startswith(shown) and set(shown) == {char}


def test_text_under_the_limit_is_shown_whole_even_when_its_characters_are_wide() -> None:
    text = "€" * (EVENT_LIMIT // 3)
    assert cut_utf8(text, EVENT_LIMIT) == (text, False)
    assert cut_utf8(text + "€", EVENT_LIMIT) == (text, True)
