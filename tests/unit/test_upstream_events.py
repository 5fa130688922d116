"""Decoding the Messages API's event stream: SSE framing rules, the content blocks rebuilt from the events, what a
reply keeps of them, and what a broken upstream gets (an unreadable-event error, never a stored bad count)."""

from __future__ import annotations

import json

import pytest

from agent_server.fake_upstream import wire
from agent_server.money.prices import Usage
from agent_server.upstream.decoder import (
    ErrorEvent, EventDecoder, MessageAssembler, UnreadableEvent, safe_usage, stream_deltas, usage_from_wire,
)

USAGE = {"input_tokens": 12, "cache_creation_input_tokens": 50, "cache_read_input_tokens": 100,
         "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 20}, "output_tokens": 1}


def reply_bytes(tokens: list[str], usage: dict = USAGE) -> bytes:
    """A whole streamed reply exactly as the fake upstream puts it on the wire."""
    return b"".join(wire.stream_chunks(message_id="msg_1", model="claude-sonnet-5-5", tokens=tokens, usage=usage,
                                       stop_reason="end_turn"))


def decode(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    decoder = EventDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def read_reply(chunks: list[bytes]) -> tuple[list[str], MessageAssembler]:
    decoder, state = EventDecoder(), MessageAssembler()
    deltas = [delta for chunk in chunks for delta in stream_deltas(decoder, state, chunk)]
    return [value for kind, value in deltas if kind == "text"], state


def test_a_whole_reply_in_one_chunk_and_byte_by_byte_decode_alike() -> None:
    raw = reply_bytes(["Hel", "lo", " there"])
    whole = decode([raw])
    assert decode([raw[i:i + 1] for i in range(len(raw))]) == whole
    names = [name for name, _ in whole]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_delta") == 3


def test_the_reply_keeps_text_model_stop_reason_and_usage() -> None:
    texts, state = read_reply([reply_bytes(["Hel", "lo"])])
    assert texts == ["Hel", "lo"]
    assert (state.model, state.stop_reason, state.stopped) == ("claude-sonnet-5-5", "end_turn", True)
    record = state.usage_record()
    assert (record.input_tokens, record.cache_read_input_tokens, record.cache_creation_input_tokens) == (12, 100, 50)
    assert (record.cache_write_5m_tokens, record.cache_write_1h_tokens) == (30, 20)


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_every_line_ending_and_a_crlf_split_across_chunks(newline: bytes) -> None:
    raw = reply_bytes(["a", "b"]).replace(b"\n", newline)
    assert decode([raw]) == decode([reply_bytes(["a", "b"])])
    # Cut every CRLF between two chunks: the CR alone must not end an extra, empty line.
    cuts = [i + 1 for i in range(len(raw) - 1) if raw[i:i + 2] == b"\r\n"]
    chunks = [raw[start:end] for start, end in zip([0, *cuts], [*cuts, len(raw)])]
    assert decode(chunks) == decode([reply_bytes(["a", "b"])])


def test_comments_multiline_data_spacing_unknown_fields_and_a_bom() -> None:
    raw = (b"\xef\xbb\xbf: a comment\n"
           b"event:first\ndata:{\"a\":\ndata: 1}\nid: 7\nretry: 10\nnonsense\n\n"
           b"data: unnamed\n\n"
           b"event: empty\n\n")
    events = decode([raw[:2], raw[2:]])
    assert events == [("first", b'{"a":\n1}'), ("message", b"unnamed")]  # an event with no data is not dispatched
    assert json.loads(events[0][1]) == {"a": 1}


def test_message_delta_usage_replaces_the_start_values_instead_of_adding() -> None:
    state = MessageAssembler()
    state.apply("message_start", json.dumps({"type": "message_start", "message": {
        "model": "m", "usage": {"input_tokens": 12, "cache_read_input_tokens": 4, "output_tokens": 1}}}).encode())
    state.apply("message_delta", json.dumps({"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                                             "usage": {"input_tokens": 12, "output_tokens": 6}}).encode())
    assert state.usage_record() == Usage(input_tokens=12, output_tokens=6, cache_read_input_tokens=4)
    assert state.stop_reason == "max_tokens"


def _event(state: MessageAssembler, kind: str, payload: dict):  # type: ignore[no-untyped-def]
    return state.apply(kind, json.dumps(payload).encode())


def test_blocks_are_rebuilt_verbatim_text_tool_input_thinking_and_signature() -> None:
    state = MessageAssembler()
    _event(state, "content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "",
                                                                          "signature": ""}})
    delta = {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me"}}
    assert _event(state, "content_block_delta", delta) == ("thinking", "Let me")
    _event(state, "content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": " see."}})
    _event(state, "content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}})
    assert _event(state, "content_block_stop", {"index": 0}) == ("block", 0)
    _event(state, "content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}})
    assert _event(state, "content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "x"}}) == (
        "text", "x")
    _event(state, "content_block_stop", {"index": 1})
    _event(state, "content_block_start", {"index": 2, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                                          "name": "calc", "input": {}}})
    for part in ('{"expr', 'ession": "1', '+1"}'):
        assert _event(state, "content_block_delta", {"index": 2, "delta": {"type": "input_json_delta",
                                                                            "partial_json": part}}) is None
    _event(state, "content_block_stop", {"index": 2})
    assert state.blocks == [
        {"type": "thinking", "thinking": "Let me see.", "signature": "c2ln"},
        {"type": "text", "text": "x"},
        {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"expression": "1+1"}},
    ]


def test_a_cut_reply_keeps_finished_blocks_and_open_text_but_never_a_half_tool_call() -> None:
    state = MessageAssembler()
    _event(state, "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    _event(state, "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Par"}})
    _event(state, "content_block_stop", {"index": 0})
    _event(state, "content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "n",
                                                                          "input": {}}})
    _event(state, "content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"a'}})
    assert state.partial_blocks() == [{"type": "text", "text": "Par"}]


def test_unknown_events_with_json_are_ignored_and_pings_are_skipped() -> None:
    state = MessageAssembler()
    assert state.apply("ping", b"not even json") is None
    assert state.apply("some_future_event", b"{}") is None


def test_an_unknown_event_whose_data_is_not_json_is_unreadable() -> None:
    with pytest.raises(UnreadableEvent):
        MessageAssembler().apply("mystery_event", b"not json")


@pytest.mark.parametrize("usage", [
    {"input_tokens": "12"}, {"output_tokens": -5}, {"output_tokens": 10**20}, {"input_tokens": True},
    {"cache_creation": {"ephemeral_5m_input_tokens": -1}}, {"server_tool_use": {"web_search_requests": "2"}},
])
def test_usage_that_no_real_call_reports_is_unreadable_and_the_valid_counts_are_kept(usage: dict) -> None:
    with pytest.raises(UnreadableEvent):
        usage_from_wire({"input_tokens": 3, "output_tokens": 4, **usage})
    kept = safe_usage({"input_tokens": 3, "output_tokens": 4, **usage})
    assert kept.input_tokens >= 0 and kept.output_tokens >= 0 and kept.output_tokens <= 10**12


def test_server_tool_uses_are_counted() -> None:
    assert usage_from_wire({"input_tokens": 1, "server_tool_use": {"web_search_requests": 2}}).web_search_requests == 2


def test_an_error_event_raises_with_its_kind_and_message() -> None:
    with pytest.raises(ErrorEvent) as caught:
        head = wire.stream_head(message_id="msg_1", model="claude-sonnet-5-5", usage=USAGE)
        read_reply([*head, wire.error_event("overloaded_error", "Overloaded")])
    assert (caught.value.kind, caught.value.message) == ("overloaded_error", "Overloaded")


@pytest.mark.parametrize("event, data", [
    ("content_block_delta", b"{not json"),
    ("content_block_delta", b'{"type":"content_block_delta"}'),
    ("message_start", b'{"message": 3}'),
    ("message_delta", b"\xff\xfe"),
])
def test_events_that_are_not_the_documented_json_are_unreadable(event: str, data: bytes) -> None:
    with pytest.raises(UnreadableEvent):
        MessageAssembler().apply(event, data)
