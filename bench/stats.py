"""Percentiles and latency summaries. Samples are seconds; summaries are milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence


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
