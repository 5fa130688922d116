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
    """How many real tokens one estimated token turned out to be, from the previous call (1 without one).

    ``previous_estimate`` must estimate the same things ``previous_actual`` counts: the tools and the system prompt
    as well as the history (a long system prompt left out of it made every reply leave out all its history)."""
    if not previous_actual or not previous_estimate:
        return 1.0
    return min(max(previous_actual / previous_estimate, 0.5), 3.0)


def fit(units: list[Unit], *, fixed_tokens: int, window: int, max_tokens: int, ratio: float,
        from_seq: int | None, squeeze: float = 1.0, keep: int = 0) -> Fit:
    """Choose the units to send. ``fixed_tokens``: the estimate of everything always sent (tools, system, the
    current reply's messages). ``from_seq``: where the conversation's window starts now. ``squeeze`` < 1 asks
    for a smaller request (after the upstream said "prompt is too long"). ``keep``: the newest units that are
    never left out (1 for a reply that continues a paused one: its answers go with the tool_use they answer)."""
    budget = (window - max_tokens) * SAFETY * squeeze
    first = 0 if from_seq is None else next((i for i, u in enumerate(units) if u.first_seq >= from_seq), len(units))
    kept, omitted = units[first:], units[:first]

    def size(chosen: list[Unit]) -> int:
        return math.ceil((fixed_tokens + sum(unit.tokens for unit in chosen)) * ratio)

    if size(kept) > budget:
        target = budget * LOW_WATER
        while len(kept) > keep and size(kept) > target:
            omitted.append(kept.pop(0))  # (a few hundred units at most: a list is fine)
    start = kept[0].first_seq if kept else None
    if start is None and units:
        # Everything left out: the window starts after the last unit's last turn (its first turn + 1 would start
        # it inside that unit, and the next reply would send a tool_use's result without the tool_use).
        last = units[-1]
        start = (last.last_seq if last.last_seq is not None else last.first_seq) + 1
    return Fit(kept, start if omitted else from_seq, sum(u.turns for u in kept), sum(u.turns for u in omitted),
               size(kept))


def too_long_ratio(message: str, estimate: int) -> float | None:
    """From the upstream's "prompt is too long: N tokens > M maximum": how many real tokens the request held per
    token of ``estimate`` (the estimate ``fit`` made of that request, calibrated: multiply the ratio it used)."""
    match = _TOO_LONG.search(message)
    if not match or not estimate:
        return None
    return int(match.group(1)) / estimate


def too_long_maximum(message: str) -> int | None:
    """The upstream's window M from "prompt is too long: N tokens > M maximum": what to fit into from now on
    (the server's own ``context_window`` is then known to be too large)."""
    match = _TOO_LONG.search(message)
    return int(match.group(2)) if match else None


def after_too_long(message: str, *, estimate: int, ratio: float, window: int) -> tuple[float, int, float]:
    """``(ratio, window, squeeze)`` to fit with again after the upstream answered "prompt is too long": the
    ratio corrected by the real count, the upstream's maximum as the window; only when the message does not say
    them, a guess (half the budget, 1.5 times the ratio)."""
    measured = too_long_ratio(message, estimate)
    maximum = too_long_maximum(message)
    if measured is None or maximum is None:
        return ratio * 1.5, window, 0.5
    return max(ratio * measured, ratio), min(window, maximum), 1.0
