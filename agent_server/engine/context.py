"""The context window: send the newest history that fits the model's window less ``max_tokens``.

No extra upstream round trip on the common path: each message's size is estimated from its stored JSON
(``blocks.estimate_tokens``) and the estimate is calibrated by the previous call of the conversation (its real
input tokens against what we estimated for it). Older units (whole replies: a ``tool_use`` never loses its
``tool_result``) are left out, oldest first, and the cut moves in steps: once history must be cut, it is cut down
to ``LOW_WATER`` of the budget and the cut stays put (``conversations.context_from_seq``) until the window is full
again, so most replies keep the same prefix, and the prompt cache keeps serving it. The current reply's own
messages (its prompt, an unfinished tool loop with its thinking) are never left out. The stored history never
changes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .history import Unit

SAFETY = 0.9  # of the budget: what the estimate may use, for the estimate's own error
LOW_WATER = 0.6  # once history must be cut, it is cut to this share of the budget
_TOO_LONG = re.compile(r"prompt is too long: (\d+) tokens > (\d+) maximum")


@dataclass(frozen=True)
class Fit:
    units: list[Unit]
    from_seq: int | None  # the first stored seq sent (None: from the start)
    turns_sent: int
    turns_omitted: int
    estimate: int  # calibrated tokens of the whole request


def calibration(previous_actual: int | None, previous_estimate: int | None) -> float:
    """How many real tokens one estimated token turned out to be, from the previous call (1 without one)."""
    if not previous_actual or not previous_estimate:
        return 1.0
    return min(max(previous_actual / previous_estimate, 0.5), 3.0)


def fit(units: list[Unit], *, fixed_tokens: int, window: int, max_tokens: int, ratio: float,
        from_seq: int | None, squeeze: float = 1.0) -> Fit:
    """Choose the units to send. ``fixed_tokens``: the estimate of everything always sent (tools, system, the
    current reply's messages). ``from_seq``: where the conversation's window starts now. ``squeeze`` < 1 asks
    for a smaller request (after the upstream said "prompt is too long")."""
    budget = (window - max_tokens) * SAFETY * squeeze
    first = 0 if from_seq is None else next((i for i, u in enumerate(units) if u.first_seq >= from_seq), len(units))
    kept, omitted = units[first:], units[:first]

    def size(chosen: list[Unit]) -> int:
        return math.ceil((fixed_tokens + sum(unit.tokens for unit in chosen)) * ratio)

    if size(kept) > budget:
        target = budget * LOW_WATER
        while kept and size(kept) > target:
            omitted.append(kept.pop(0))  # (a few hundred units at most: a list is fine)
    start = kept[0].first_seq if kept else None
    if start is None and units:
        start = units[-1].first_seq + 1  # everything left out: the next unit starts the window
    return Fit(kept, start if omitted else from_seq, sum(u.turns for u in kept), sum(u.turns for u in omitted),
               size(kept))


def too_long_ratio(message: str, estimate: int) -> float | None:
    """From the upstream's "prompt is too long: N tokens > M maximum": the real tokens per estimated one."""
    match = _TOO_LONG.search(message)
    if not match or not estimate:
        return None
    return int(match.group(1)) / estimate
