"""Everything one process needs, built from Settings in the lifespan and closed at shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .channel import Channel, open_channel
from .config import Settings
from .db import Database, StorageError, open_database, writes
from .db.lease import this_machine
from .db.migrations import schema_problem
from .db.models import utcnow
from .engine.journal import EventStore
from .engine.plan import EngineContext, EngineSettings
from .engine.request import CachePolicy
from .engine.supervisor import Supervisor
from .http.schemas import Limits
from .metrics import Metrics
from .money.prices import PriceTable
from .ratelimit import RateLimiter
from .service.budgets import Budgets
from .service.conversations import ConversationService
from .service.lifecycle import Lifecycle
from .service.usage import UsageService
from .service.replies import ReplyService
from .slots import open_slots
from .tools.base import ToolConfigError
from .tools.registry import ToolRegistry
from .upstream.client import Claude

log = logging.getLogger(__name__)
EXAMPLE_TOOLS = Path(__file__).resolve().parent / "tools" / "example.toml"


class StartupError(Exception):
    """A reason not to start, said in one line."""


class SessionCounter:
    """WebSocket sessions per client key in this process (``AGENT_MAX_WS_SESSIONS_PER_KEY``)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open: dict[str, int] = {}

    def enter(self, owner: str) -> bool:
        if self.open.get(owner, 0) >= self.limit:
            return False
        self.open[owner] = self.open.get(owner, 0) + 1
        return True

    def leave(self, owner: str) -> None:
        self.open[owner] -= 1
        if not self.open[owner]:
            del self.open[owner]


def load_tools(settings: Settings, offline_stub: bool) -> ToolRegistry:
    """The tools file; with none and the offline stub, the example tools (so a newcomer sees a loop)."""
    path = settings.tools_file
    if path is None and offline_stub:
        path = EXAMPLE_TOOLS
    if path is None:
        return ToolRegistry.empty()
    try:
        return ToolRegistry.load(path)
    except ToolConfigError as exc:
        raise StartupError(f"AGENT_TOOLS_FILE: {exc}") from None


@dataclass
class Runtime:
    settings: Settings
    db: Database
    claude: Claude
    prices: PriceTable
    tools: ToolRegistry
    events: EventStore
    channel: Channel
    supervisor: Supervisor
    replies: ReplyService
    conversations: ConversationService
    lifecycle: Lifecycle
    usage: UsageService
    limits: Limits
    metrics: Metrics
    limiter: RateLimiter
    ws_sessions: SessionCounter
    version: str = __version__
    _closers: list = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        try:
            prices = PriceTable.load(settings.prices_file)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot read AGENT_PRICES_FILE: {exc}") from None
        if settings.default_model not in prices:
            raise StartupError(f"AGENT_DEFAULT_MODEL {settings.default_model!r} is not in the price table")
        metrics = Metrics()
        try:
            db = open_database(settings.database_url, on_write=metrics.db_write.observe)
        except StorageError as exc:
            raise StartupError(f"database: {exc.message}") from None
        problem = await schema_problem(db.reader)
        if problem is not None:
            await db.dispose()
            raise StartupError(problem)
        claude = Claude(
            api_key=settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None,
            base_url=settings.anthropic_base_url, max_retries=settings.upstream_max_retries,
            timeout_seconds=settings.upstream_timeout_seconds, stub_token_delay=settings.stub_token_delay,
        )
        try:
            tools = load_tools(settings, claude.offline_stub)
        except StartupError:
            await claude.aclose()
            await db.dispose()
            raise
        await tools.start()
        channel = open_channel(db, workers=settings.workers)
        await channel.start()

        async def events_stored(reply_ids: set[str]) -> None:
            if channel.cross_process:
                await channel.publish("events", ",".join(sorted(reply_ids)))

        events = EventStore(db, on_stored=events_stored)
        events.start()
        engine = EngineSettings(max_steps=settings.max_tool_steps, tool_timeout=settings.tool_timeout_seconds,
                                tool_output_limit=settings.tool_output_max_chars,
                                cache=CachePolicy(settings.cache_ttl))
        ctx = EngineContext(db=db, claude=claude, prices=prices, tools=tools, events=events, metrics=metrics,
                            settings=engine)
        slots = open_slots(settings.max_concurrent_replies, settings.rate_limit_storage)
        supervisor = Supervisor(ctx, slots=slots, channel=channel)
        budgets = Budgets(db, settings.budgets)
        replies = ReplyService(ctx, supervisor, channel, budgets, default_model=settings.default_model,
                               default_max_tokens=min(settings.max_tokens, settings.max_tokens_limit),
                               poll_seconds=0.25 if channel.cross_process and db.dialect == "sqlite" else 1.0)
        limits = Limits(models=prices.models, max_tokens=settings.max_tokens_limit,
                        max_message_chars=settings.max_message_chars,
                        default_max_tokens=min(settings.max_tokens, settings.max_tokens_limit),
                        tools=tools.live_names())
        runtime = cls(
            settings=settings, db=db, claude=claude, prices=prices, tools=tools, events=events, channel=channel,
            supervisor=supervisor, replies=replies, conversations=ConversationService(db),
            lifecycle=Lifecycle(db, replies, retention_days=settings.retention_days,
                                events_hours=settings.reply_events_hours),
            usage=UsageService(db, admin_keys=settings.admin_keys), limits=limits,
            metrics=metrics, limiter=RateLimiter(settings.rate_limit, settings.rate_limit_storage),
            ws_sessions=SessionCounter(settings.max_ws_sessions_per_key),
        )
        try:
            closed = await supervisor.sweep()
        except StorageError as exc:
            log.warning("could not look for interrupted replies at start-up: %s", exc.message)
            closed = []
        if closed:
            log.warning("closed %d repl%s interrupted by a process that died", len(closed),
                        "y" if len(closed) == 1 else "ies")
        supervisor.start()
        runtime.lifecycle.start()
        runtime._describe()
        return runtime

    def _describe(self) -> None:
        settings = self.settings
        if self.claude.offline_stub:
            log.warning("OFFLINE STUB: ANTHROPIC_API_KEY is not set, replies come from a built-in canned stub, "
                        "not Claude")
            if settings.anthropic_base_url:
                log.warning("ANTHROPIC_BASE_URL is set but ignored: without ANTHROPIC_API_KEY the offline stub answers")
        path = settings.database_path
        log.info("agent_server %s ready", self.version, extra={
            "event": "startup",
            "database": str(path.resolve()) if path else _without_password(settings.database_url),
            "upstream": "offline stub" if self.claude.offline_stub else (settings.anthropic_base_url or
                                                                         "https://api.anthropic.com"),
            "client_keys": len(settings.client_keys),
            "tools": len(self.tools.tools),
            "machine": this_machine().split("/")[0],
        })

    async def probe_write(self) -> str | None:
        """A write that needs room (a row of 8,000 characters, deleted in the same transaction), for readiness:
        it fails like a reply's writes would when the disk is full or the file read-only. The reason, or None."""
        try:
            await self.db.write(_probe, now=utcnow())
        except StorageError as exc:
            return f"writes fail: {exc.message}"
        return None

    async def drain(self) -> None:
        await self.supervisor.drain(self.settings.shutdown_grace_seconds)

    async def close(self) -> None:
        await self.lifecycle.close()
        await self.supervisor.close()
        await self.events.stop()
        await self.channel.close()
        await self.tools.close()
        await self.supervisor.slots.close()
        await self.claude.aclose()
        await self.db.dispose()


async def _probe(conn, *, now) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import delete

    from .db.models import Notification

    await writes.apply(conn, ops=[writes.insert_notification(topic="probe", payload="." * 8000, now=now)])
    await conn.execute(delete(Notification).where(Notification.topic == "probe"))


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
