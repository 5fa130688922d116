"""Everything one process needs, built from Settings in the lifespan and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from . import __version__
from .claude import Claude
from .config import Settings
from .db.engine import Database
from .db.migrations import schema_problem
from .http.schemas import Limits
from .metrics import Metrics
from .ratelimit import RateLimiter
from .pricing import PriceTable
from .service import ConversationService

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A reason not to start, said in one line."""


@dataclass
class Runtime:
    settings: Settings
    db: Database
    claude: Claude
    prices: PriceTable
    service: ConversationService
    limits: Limits
    metrics: Metrics
    limiter: RateLimiter
    version: str = __version__
    _tasks: list[asyncio.Task] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        try:
            prices = PriceTable.load(settings.prices_file)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot read AGENT_PRICES_FILE: {exc}") from None
        if settings.default_model not in prices:
            raise StartupError(f"AGENT_DEFAULT_MODEL {settings.default_model!r} is not in the price table")
        metrics = Metrics()
        db = Database(settings.database_url, on_write=metrics.db_write.observe)
        problem = await schema_problem(db)
        if problem is not None:
            await db.dispose()
            raise StartupError(problem)
        claude = Claude(
            api_key=settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None,
            base_url=settings.anthropic_base_url,
            max_retries=settings.upstream_max_retries,
            timeout_seconds=settings.upstream_timeout_seconds,
            stub_token_delay=settings.stub_token_delay,
        )
        service = ConversationService(
            db=db, claude=claude, prices=prices, default_model=settings.default_model,
            default_max_tokens=min(settings.max_tokens, settings.max_tokens_limit),
            max_replies_per_owner=settings.max_concurrent_replies, metrics=metrics,
        )
        limits = Limits(
            models=prices.models, max_tokens=settings.max_tokens_limit, max_message_chars=settings.max_message_chars
        )
        limiter = RateLimiter(settings.rate_limit, settings.rate_limit_storage)
        runtime = cls(
            settings=settings, db=db, claude=claude, prices=prices, service=service, limits=limits,
            metrics=metrics, limiter=limiter,
        )
        runtime._tasks.append(asyncio.create_task(service.keep_locks_alive(), name="renew-reply-locks"))
        if claude.offline_stub:
            log.warning(
                "OFFLINE STUB: ANTHROPIC_API_KEY is not set, replies come from a built-in canned stub, not Claude"
            )
        return runtime

    async def drain(self) -> None:
        await self.service.drain(self.settings.shutdown_grace_seconds)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.claude.aclose()
        await self.db.dispose()
