"""The context window's choice (engine/context.py) and the units it leaves out whole (engine/history.py)."""

from __future__ import annotations

import json

import pytest

from agent_server.db.reads import HistoryRow
from agent_server.engine import context
from agent_server.engine.history import Message, Unit, encode_messages, units_of


def unit(first_seq: int, tokens: int, turns: int = 2, last_seq: int | None = None) -> Unit:
    per = tokens // turns
    messages = [Message("user" if n % 2 == 0 else "assistant", "[]", per) for n in range(turns)]
    return Unit(first_seq, messages, last_seq if last_seq is not None else first_seq + turns - 1)


def exchanges(count: int, tokens: int = 100) -> list[Unit]:
    """``count`` plain exchanges (a prompt and its answer) of ``tokens`` each, seqs 1, 3, 5, ..."""
    return [unit(1 + 2 * n, tokens) for n in range(count)]


def fit(units, *, fixed=0, window=2000, max_tokens=0, ratio=1.0, from_seq=None, squeeze=1.0, keep=0):  # type: ignore[no-untyped-def]
    return context.fit(units, fixed_tokens=fixed, window=window, max_tokens=max_tokens, ratio=ratio,
                       from_seq=from_seq, squeeze=squeeze, keep=keep)


def test_everything_goes_when_it_fits() -> None:
    units = exchanges(5)
    chosen = fit(units, fixed=100)
    assert chosen.units == units and chosen.from_seq is None
    assert (chosen.turns_sent, chosen.turns_omitted, chosen.estimate) == (10, 0, 600)


def test_over_the_budget_history_is_cut_to_the_low_water_mark_oldest_first() -> None:
    units = exchanges(20)  # 2,000 tokens; budget 2,000 * 0.9 = 1,800; low water 1,080
    chosen = fit(units)
    assert chosen.estimate <= 2000 * context.SAFETY * context.LOW_WATER
    assert chosen.units == units[-len(chosen.units):]  # the newest, whole
    assert len(chosen.units) == 10
    assert chosen.from_seq == units[10].first_seq == 21
    assert (chosen.turns_sent, chosen.turns_omitted) == (20, 20)


def test_the_cut_stays_put_until_the_window_fills_again() -> None:
    units = exchanges(20)
    first = fit(units)
    grown = units + exchanges(30)[20:]  # ten more exchanges after the cut
    for count in range(21, 31):
        again = fit(grown[:count], from_seq=first.from_seq)
        if again.from_seq != first.from_seq:
            break
        assert again.units == grown[10:count]  # the same first unit: the cached prefix still serves
    else:
        pytest.fail("the window never filled again")
    assert count > 22  # several replies kept the prefix before it moved
    assert again.from_seq > first.from_seq  # then it moved forward, in one step
    assert again.estimate <= 2000 * context.SAFETY * context.LOW_WATER


def test_a_stored_window_start_leaves_out_everything_before_it() -> None:
    units = exchanges(5)
    chosen = fit(units, from_seq=5)
    assert [u.first_seq for u in chosen.units] == [5, 7, 9]
    assert chosen.turns_omitted == 4 and chosen.from_seq == 5


def test_the_calibrated_ratio_and_a_squeeze_shrink_what_fits() -> None:
    units = exchanges(15)  # 1,500 tokens: fits as it is
    assert fit(units).turns_omitted == 0
    assert fit(units, ratio=1.5).turns_omitted > 0
    assert fit(units, squeeze=0.5).turns_omitted > 0
    assert fit(units, max_tokens=600).turns_omitted > 0  # the answer's room comes off the window


def test_fixed_tokens_alone_over_the_budget_leave_out_all_history_after_its_last_turn() -> None:
    units = [unit(1, 100), unit(3, 100, turns=4, last_seq=6)]  # the last one: a tool exchange, seqs 3..6
    chosen = fit(units, fixed=5000)
    assert chosen.units == [] and chosen.turns_omitted == 6
    # The next window starts after the whole last unit, not inside it (seq 4 is its tool_use).
    assert chosen.from_seq == 7


def test_no_history_no_cut() -> None:
    chosen = fit([], fixed=10)
    assert chosen.units == [] and chosen.from_seq is None and chosen.turns_omitted == 0


@pytest.mark.parametrize(("actual", "estimate", "ratio"), [
    (None, 100, 1.0), (100, None, 1.0), (0, 100, 1.0), (150, 100, 1.5), (1000, 100, 3.0), (10, 100, 0.5),
])
def test_calibration_is_bounded(actual, estimate, ratio) -> None:
    assert context.calibration(actual, estimate) == ratio


def test_after_too_long_uses_the_upstreams_count_and_maximum() -> None:
    message = "prompt is too long: 2168 tokens > 2048 maximum"
    assert context.too_long_maximum(message) == 2048
    ratio, window, squeeze = context.after_too_long(message, estimate=1000, ratio=1.2, window=8192)
    assert ratio == pytest.approx(1.2 * 2168 / 1000) and window == 2048 and squeeze == 1.0
    # Never a smaller ratio than the one that already failed; never a larger window than the server's.
    ratio, window, _ = context.after_too_long("prompt is too long: 500 tokens > 100000 maximum", estimate=1000,
                                              ratio=1.0, window=4096)
    assert ratio == 1.0 and window == 4096
    # A message that does not say: a guess that still shrinks the request.
    assert context.after_too_long("prompt is too long", estimate=1000, ratio=1.0, window=4096) == (1.5, 4096, 0.5)
    assert context.too_long_maximum("something else") is None


def test_after_too_long_the_retry_fits_the_upstreams_window() -> None:
    units = exchanges(20)
    chosen = fit(units, window=8192)
    assert chosen.turns_omitted == 0  # the server thought it fitted
    ratio, window, squeeze = context.after_too_long("prompt is too long: 2100 tokens > 2048 maximum",
                                                    estimate=chosen.estimate, ratio=1.0, window=8192)
    retry = fit(units, window=window, ratio=ratio, squeeze=squeeze)
    assert retry.turns_omitted > 0
    assert retry.estimate <= 2048 * context.SAFETY  # what the upstream will count, with room to spare


# -- units: what is left out whole -------------------------------------------------------------------------------


def row(seq: int, role: str, blocks: list, *, reply: str | None, step: int | None, status: str = "complete"):  # type: ignore[no-untyped-def]
    return HistoryRow(seq, role, status, json.dumps(blocks), 10, reply, "complete", step)


def text(value: str) -> list:
    return [{"type": "text", "text": value}]


def test_a_tool_exchange_is_one_unit_and_an_answered_pause_joins_it() -> None:
    rows = [
        row(1, "user", text("q1"), reply="r1", step=0),
        row(2, "assistant", text("a1"), reply="r1", step=1),
        row(3, "user", text("q2"), reply="r2", step=0),
        row(4, "assistant", [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}], reply="r2", step=1),
        row(5, "user", [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}], reply="r2", step=1),
        row(6, "assistant", [{"type": "tool_use", "id": "t2", "name": "y", "input": {}}], reply="r2", step=2),
        # r2 paused for approval; r3 answered it
        row(7, "user", [{"type": "tool_result", "tool_use_id": "t2", "content": "approved"}], reply="r3", step=2),
        row(8, "assistant", text("done"), reply="r3", step=3),
        row(9, "user", text("q4"), reply="r4", step=0),
        row(10, "assistant", text("partial"), reply="r4", step=1, status="incomplete"),
    ]
    units = units_of(rows)
    assert [(u.first_seq, u.last_seq, u.turns) for u in units] == [(1, 2, 2), (3, 8, 6)]  # r4 left out whole
    # Whatever the window keeps, each tool_use goes with its tool_result.
    for start in range(len(units)):
        sent = "".join(encode_messages([m for u in units[start:] for m in u.messages]))
        assert sent.count('"tool_use"') == sent.count('"tool_result"')


def test_a_continuation_keeps_the_paused_unit_whatever_it_costs() -> None:
    """A reply that answers a paused one sends its results after the tool_use they answer: ``keep=1``."""
    units = exchanges(5)
    assert fit(units, fixed=5000).units == []
    chosen = fit(units, fixed=5000, keep=1)
    assert chosen.units == units[-1:] and chosen.from_seq == units[-1].first_seq and chosen.turns_omitted == 8


def test_answers_whose_paused_reply_is_outside_what_was_read_are_left_out() -> None:
    """Read from a seq after the paused reply (a window stored by an older version), the answers have no tool_use
    to go with: they are left out whole, never sent first."""
    rows = [
        row(7, "user", [{"type": "tool_result", "tool_use_id": "t2", "content": "approved"}], reply="r3", step=2),
        row(8, "assistant", text("done"), reply="r3", step=3),
        row(9, "user", text("q4"), reply="r4", step=0),
        row(10, "assistant", text("a4"), reply="r4", step=1),
    ]
    units = units_of(rows)
    assert [(u.first_seq, u.last_seq) for u in units] == [(9, 10)]
    assert encode_messages(units[0].messages)[0].startswith('{"role":"user"')
