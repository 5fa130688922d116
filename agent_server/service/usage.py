"""``GET /usage``: what a key spent, from the ledger rows (so it equals their sums, deleted conversations and
server-tool fees included), grouped by UTC day, model, conversation or (admin keys) owner."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select

from .. import errors
from ..db.base import Database
from ..db.models import UpstreamCall, utcnow
from ..db.reads import TOTAL_COLUMNS

GROUPS = ("day", "model", "conversation", "owner")


@dataclass(frozen=True)
class UsageRow:
    group: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    server_tool_uses: int
    cost_nano_usd: int


@dataclass(frozen=True)
class UsageReport:
    owner: str
    since: date
    until: date
    groups: list[UsageRow]
    totals: UsageRow


_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_day(raw: str | None, name: str, default: date) -> date:
    """A UTC date written YYYY-MM-DD (``date.fromisoformat`` alone also takes 20261201, 2026-W48-2 and more)."""
    if raw is None or raw == "":
        return default
    try:
        if not _DAY.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise errors.ValidationFailed(f"Invalid request: {name} must be a date like 2026-12-01.") from None


def _sums():  # type: ignore[no-untyped-def]
    return [func.count(UpstreamCall.id),
            *(func.coalesce(func.sum(getattr(UpstreamCall, name)), 0) for name in TOTAL_COLUMNS),
            func.coalesce(func.sum(UpstreamCall.cost_nano_usd), 0)]


class UsageService:
    def __init__(self, db: Database, *, admin_keys: tuple[str, ...], clock=utcnow):  # type: ignore[no-untyped-def]
        self.db = db
        self.admin_keys = set(admin_keys)
        self.clock = clock

    async def report(self, *, caller: str, since: str | None, until: str | None, group_by: str | None,
                     owner: str | None) -> UsageReport:
        today = self.clock().date()
        first = parse_day(since, "since", today.replace(day=1))
        last = parse_day(until, "until", today)
        if last < first:
            raise errors.ValidationFailed("Invalid request: until is before since.")
        group = group_by or "day"
        if group not in GROUPS:
            raise errors.ValidationFailed(f"Invalid request: group_by must be one of {', '.join(GROUPS)}.")
        if owner is not None and caller not in self.admin_keys:
            raise errors.ValidationFailed("Invalid request: owner is for admin keys only (AGENT_ADMIN_KEYS).")
        whose = owner or caller
        if group == "owner" and whose != "*":
            raise errors.ValidationFailed("Invalid request: group_by=owner needs owner=* (admin keys).")
        start = datetime.combine(first, datetime.min.time())
        end = datetime.combine(last, datetime.min.time()) + timedelta(days=1) if last < date.max else None
        key = {"day": func.date(UpstreamCall.created_at), "model": UpstreamCall.model,
               "conversation": UpstreamCall.conversation_id, "owner": UpstreamCall.owner}[group]
        where = [UpstreamCall.created_at >= start]
        if end is not None:  # until=9999-12-31: there is no day after it
            where.append(UpstreamCall.created_at < end)
        if whose != "*":
            where.append(UpstreamCall.owner == whose)
        async with self.db.read() as conn:
            rows = list(await conn.execute(select(key, *_sums()).where(*where).group_by(key).order_by(key)))
            total = (await conn.execute(select(*_sums()).where(*where))).one()
        groups = [UsageRow(_label(row[0]), *(int(v) for v in row[1:])) for row in rows]
        return UsageReport(whose, first, last, groups, UsageRow(None, *(int(v) for v in total)))


def _label(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (date, datetime)):
        return value.isoformat()[:10]
    return str(value)
