"""The replies this process runs: launched, found by id, cancelled (also when asked from another process through
the channel), their leases and slots renewed while they run, drained at shutdown; and the replies of processes
that died, found and closed as ``interrupted``."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..channel.base import Channel
from ..db import lease
from ..db.models import utcnow
from ..slots import Slots
from . import interrupted
from .plan import EngineContext, ReplyPlan
from .reply import ReplyProcess

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, ctx: EngineContext, *, slots: Slots, channel: Channel):
        self.ctx = ctx
        self.slots = slots
        self.channel = channel
        self.running: dict[str, ReplyProcess] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self._tasks: list[asyncio.Task] = []
        self._unsubscribe = channel.subscribe("cancel", self._cancel_heard)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._renew_forever(), name="renew-reply-leases"))

    async def close(self) -> None:
        self._unsubscribe()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def launch(self, plan: ReplyPlan) -> ReplyProcess:
        process = ReplyProcess(plan, self.ctx, on_finished=self._finished)
        self.running[plan.reply_id] = process
        self._idle.clear()
        self.ctx.metrics.in_flight.inc()
        process.start()
        return process

    def _finished(self, process: ReplyProcess) -> None:
        if self.running.pop(process.reply_id, None) is not None:
            self.ctx.metrics.in_flight.dec()
        self.slots.release(process.owner, process.reply_id)
        if not self.running:
            self._idle.set()

    def get(self, reply_id: str) -> ReplyProcess | None:
        return self.running.get(reply_id)

    def _cancel_heard(self, reply_id: str) -> None:
        process = self.running.get(reply_id)
        if process is not None:
            process.cancel("cancelled")

    async def _renew_forever(self) -> None:
        """Every few seconds: renew this process's leases and slots, close replies of dead processes."""
        while True:
            await asyncio.sleep(lease.RENEW_EVERY_SECONDS)
            held = [(p.conversation_id, p.plan.lease_token) for p in self.running.values()]
            try:
                if held:
                    await self.ctx.db.write(lease.renew, held=held, now=utcnow())
                    await self.slots.renew([(p.owner, p.reply_id) for p in self.running.values()])
                await self.sweep()
            except Exception as exc:
                log.warning("could not renew reply leases: %s", type(exc).__name__)

    async def sweep(self) -> list[str]:
        """Close the replies of processes that died (never this process's own)."""
        return await interrupted.find_and_close(self.ctx.db, exclude=set(self.running))

    async def drain(self, grace_seconds: float) -> None:
        """Refuse new replies, give those in flight ``grace_seconds`` to finish, then stop the rest (``shutdown``)."""
        self.draining = True
        if self.running:
            log.info("draining %d repl%s in flight (grace %.0fs)", len(self.running),
                     "y" if len(self.running) == 1 else "ies", grace_seconds)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_seconds)
        except TimeoutError:
            log.warning("grace period over: stopping %d repl%s", len(self.running),
                        "y" if len(self.running) == 1 else "ies")
            for process in list(self.running.values()):
                process.cancel("shutdown")
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=5)
            except TimeoutError:
                log.error("%d repl%s did not stop in time", len(self.running), "y" if len(self.running) == 1 else "ies")
