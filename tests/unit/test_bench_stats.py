"""The benchmark's confidence intervals: resampling whole rounds keeps the noise targets share paired."""

from __future__ import annotations

import random

import pytest

from bench import stats
from bench.scenarios.ttft import compare, fake_view


def _rounds(count: int, *, extra: dict[str, float], shared_noise: float, seed: int = 1) -> dict[str, list]:
    """``count`` rounds of one sample per target: a 20 ms upstream plus each target's ``extra`` seconds, plus
    noise common to every target of a round (the machine was busy then) and a little of each sample's own."""
    rng = random.Random(seed)
    rounds: dict[str, list] = {name: [] for name in extra}
    for _ in range(count):
        common = rng.uniform(0, shared_noise)
        for name, added in extra.items():
            rounds[name].append([0.020 + added + common + rng.uniform(0, 0.0002)])
    return rounds


def test_noise_shared_within_a_round_does_not_widen_the_interval_of_a_difference() -> None:
    extra = {"server": 0.003, "baseline": 0.002, "direct": 0.0}
    quiet = _rounds(200, extra=extra, shared_noise=0.0)
    busy = _rounds(200, extra=extra, shared_noise=0.010)  # 10 ms of noise, 10x the difference measured

    for rounds in (quiet, busy):
        low, high = compare(rounds, "server", "baseline")["p50"]["overhead_diff_ci_ms"]
        assert 0.8 < low <= high < 1.2  # the 1 ms difference, told apart from zero despite the noise


def test_an_interval_covers_a_difference_that_is_not_there() -> None:
    rounds = _rounds(200, extra={"server": 0.002, "baseline": 0.002, "direct": 0.0}, shared_noise=0.005)

    low, high = compare(rounds, "server", "baseline")["p50"]["overhead_diff_ci_ms"]

    assert low < 0 < high


def test_the_ratio_interval_is_of_overheads_over_the_direct_time() -> None:
    rounds = _rounds(200, extra={"server": 0.004, "baseline": 0.002, "direct": 0.0}, shared_noise=0.0)

    p50 = compare(rounds, "server", "baseline")["p50"]

    low, high = p50["overhead_ratio_ci"]
    assert 1.8 < low <= p50["overhead_ratio"] <= high < 2.2  # 4 ms of overhead against 2 ms, not 24 against 22


def test_intervals_are_reproducible() -> None:
    rounds = _rounds(50, extra={"a": 0.001, "b": 0.0}, shared_noise=0.004)
    statistic = {"d": lambda pooled: stats.percentile(pooled["a"], 50) - stats.percentile(pooled["b"], 50)}

    assert stats.bootstrap_intervals(rounds, statistic) == stats.bootstrap_intervals(rounds, statistic)


def test_rounds_must_line_up_and_one_round_gives_no_interval() -> None:
    statistic = {"d": lambda pooled: 0.0}

    with pytest.raises(ValueError):
        stats.bootstrap_intervals({"a": [[1.0], [2.0]], "b": [[1.0]]}, statistic)
    assert stats.bootstrap_intervals({"a": [[1.0]], "b": [[2.0]]}, statistic) == {"d": None}


def test_rounds_where_a_target_had_no_sample_are_drawn_but_never_pooled_empty() -> None:
    rounds = {"a": [[1.0], [], [3.0]], "b": [[1.0], [2.0], [3.0]]}

    interval = stats.bootstrap_intervals(rounds, {"n": lambda pooled: float(len(pooled["a"]))})["n"]

    assert interval is not None and 1 <= interval[0] <= interval[1] <= 3


def test_the_fakes_stream_records_are_attributed_to_targets_by_round_order() -> None:
    """Rounds run one target at a time, so the fake's records come in blocks of ``streams`` per target and
    round; warm-up rounds are left out; when a request never reached the fake, there is no view."""
    order, streams, warmup, rounds = ["server", "baseline", "direct"], 2, 1, 2
    records = []
    for round_index in range(warmup + rounds):
        for offset, _name in enumerate(order):
            for _ in range(streams):
                head = 1000.0 if round_index < warmup else float(offset)
                records.append({"head_ms": head, "first_delta_ms": 20.0 + head})
    view = fake_view(records, order, streams=streams, warmup=warmup, rounds=rounds)
    assert {name: view[name]["head_ms"]["p50"] for name in order} == {"server": 0, "baseline": 1, "direct": 2}
    assert view["direct"]["first_delta_ms"] == {"p50": 22.0, "p99": 22.0}
    assert fake_view(records[:-1], order, streams=streams, warmup=warmup, rounds=rounds) == {}
