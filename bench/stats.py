"""Percentiles and latency summaries. Samples are seconds; summaries are milliseconds."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linearly interpolated between the closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def latency_summary(samples: Sequence[float]) -> dict:
    """n, p50, p90, p99, mean and max of ``samples`` (seconds), in ms."""
    return {
        "n": len(samples),
        "p50_ms": ms(percentile(samples, 50)),
        "p90_ms": ms(percentile(samples, 90)),
        "p99_ms": ms(percentile(samples, 99)),
        "mean_ms": ms(sum(samples) / len(samples)) if samples else None,
        "max_ms": ms(max(samples)) if samples else None,
    }


def diff(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return None if a is None or b is None else round(a - b, digits)


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, digits)


def bootstrap_intervals(
    rounds: dict[str, Sequence[Sequence[float]]],
    statistics: dict[str, Callable[[dict[str, list[float]]], float | None]],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float] | None]:
    """Percentile-bootstrap confidence intervals of each of ``statistics``, resampling whole rounds.

    ``rounds[target][i]`` holds the samples ``target`` gave in round ``i`` (every target has the same
    rounds); a statistic gets each target's samples pooled over the drawn rounds. Rounds, not samples, are
    drawn with replacement, so the noise the targets shared within a round stays together and an interval
    says how far the comparison itself would move if the run were repeated on this machine. Seeded: the
    same samples always give the same intervals. An interval is None with fewer than two rounds.
    """
    counts = {len(per_round) for per_round in rounds.values()}
    if len(counts) != 1:
        raise ValueError("every target must have the same rounds")
    count = counts.pop()
    values: dict[str, list[float]] = {name: [] for name in statistics}
    rng = random.Random(seed)
    for _ in range(resamples if count >= 2 else 0):
        picked = [rng.randrange(count) for _ in range(count)]
        pooled = {name: [x for i in picked for x in per_round[i]] for name, per_round in rounds.items()}
        if not all(pooled.values()):
            continue
        for name, statistic in statistics.items():
            value = statistic(pooled)
            if value is not None:
                values[name].append(value)
    tail = (1 - confidence) / 2 * 100
    return {name: (percentile(found, tail), percentile(found, 100 - tail)) if found else None
            for name, found in values.items()}
