"""Budgets (``AGENT_BUDGETS``): what a client key may spend per UTC day or month, checked before any upstream call
from the daily spend that every recorded call adds to (in the database, so the check holds across workers and
instances). The reply that crosses the line finishes; the next one is refused until the period ends."""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from .. import errors
from ..db import reads
from ..db.base import Database
from ..db.models import utcnow
from ..money.prices import from_nano, to_nano

_ENTRY = re.compile(r"^\s*([A-Za-z0-9_.@-]{1,64})\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(day|month)\s*$")


class BudgetExceeded(errors.AgentError):
    status, type = 429, "budget_exceeded_error"


@dataclass(frozen=True)
class Budget:
    usd: Decimal
    period: str  # day | month


def parse_budgets(raw: str) -> dict[str, Budget]:
    """``alice:20/month,bob:1.5/day``."""
    budgets: dict[str, Budget] = {}
    for item in (part for part in raw.split(",") if part.strip()):
        match = _ENTRY.match(item)
        if not match:
            raise ValueError(f"AGENT_BUDGETS entries look like name:20/month or name:1.5/day, not {item.strip()!r}")
        try:
            budgets[match.group(1)] = Budget(Decimal(match.group(2)), match.group(3))
        except InvalidOperation:
            raise ValueError(f"AGENT_BUDGETS: {item.strip()!r} has no valid amount") from None
    return budgets


def period_of(period: str, today: date) -> tuple[date, date]:
    """The first and last UTC day of the period containing ``today``."""
    if period == "day":
        return today, today
    last = calendar.monthrange(today.year, today.month)[1]
    return today.replace(day=1), today.replace(day=last)


class Budgets:
    def __init__(self, db: Database, budgets: dict[str, Budget], *, clock: Callable[[], datetime] = utcnow):
        self._db = db
        self.budgets = budgets
        self._clock = clock

    async def check(self, owner: str) -> None:
        budget = self.budgets.get(owner)
        if budget is None:
            return
        now = self._clock()
        first, last = period_of(budget.period, now.date())
        async with self._db.read() as conn:
            spent = await reads.spend_between(conn, owner=owner, first_day=first.isoformat(),
                                              last_day=last.isoformat())
        if spent >= (to_nano(budget.usd) or 0):
            ends = datetime.combine(last + timedelta(days=1), datetime.min.time())
            retry_after = max(1, math.ceil((ends - now).total_seconds()))
            raise BudgetExceeded(
                f"The budget of this client key (${budget.usd} per {budget.period}) is spent "
                f"(${from_nano(spent).normalize():f} this {budget.period}); it renews at {ends.isoformat()}Z.",
                retry_after=retry_after)
