"""uvicorn, taught to drain before it shuts down.

Plain uvicorn, on SIGTERM, closes WebSockets at once (code 1012) and only later runs the lifespan
shutdown. Here the first signal starts our drain while connections stay open: new replies are refused,
replies in flight get the grace period, the rest are interrupted with a final ``shutdown`` event after
their partial turns are stored. Then uvicorn shuts down as usual. A second signal exits at once.

With several workers, each writes its metrics to a shared folder so that any of them can answer a scrape
with the server's figures (``metrics.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from uvicorn.supervisors import multiprocess
from uvicorn.supervisors.multiprocess import Process

log = logging.getLogger("agent_server")
# Where the workers' metric values are added up (read by prometheus_client when each worker imports it).
METRICS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"


class DrainingServer(uvicorn.Server):
    _drain_task: asyncio.Task | None = None
    _drain_requested = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything alive once the app has started (modules, the SDK's and pydantic's schemas, the runtime)
        # lives as long as the process: freezing it keeps it out of every later full garbage collection, whose
        # pauses otherwise grow with it (they showed as ~90 ms p99 outliers on 1,000-turn replies).
        gc.collect()
        gc.freeze()

    def handle_exit(self, sig: int, frame) -> None:  # type: ignore[no-untyped-def]
        if self._drain_requested:
            self.force_exit = True
            self.should_exit = True
            return
        self._drain_requested = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and not self.should_exit:
            if self._drain_task is None:
                self._drain_task = asyncio.create_task(self._drain())
            if self._drain_task.done():
                self.should_exit = True
        return await super().on_tick(counter)

    async def _drain(self) -> None:
        runtime = self.lifespan.state.get("runtime") if hasattr(self, "lifespan") else None
        if runtime is None:
            return
        try:
            await runtime.drain()
        except Exception:
            log.exception("drain failed")


class _DrainingProcess(Process):
    """A uvicorn worker process whose server is a ``DrainingServer``."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server

    def join(self) -> None:
        # The supervisor reaps a worker here, whether it stopped or died: its gauges stop counting.
        super().join()
        if self.pid is not None and METRICS_DIRECTORY in os.environ:
            from prometheus_client import multiprocess as shared_metrics

            shared_metrics.mark_process_dead(self.pid)


@contextlib.contextmanager
def metrics_shared_by_workers() -> Iterator[Path]:
    """A folder where the workers write their metric values, so that a scrape adds up all of them.

    The operator's ``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of an earlier run's files first, as
    prometheus_client requires); otherwise a temporary folder, removed at exit.
    """
    given = os.environ.get(METRICS_DIRECTORY)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="agent-server-metrics-"))
    os.environ[METRICS_DIRECTORY] = str(folder)
    try:
        yield folder
    finally:
        del os.environ[METRICS_DIRECTORY]
        shutil.rmtree(folder, ignore_errors=True)


def run(config: uvicorn.Config) -> bool:
    """Serve ``config`` (one process, or a supervisor and ``config.workers`` processes); True if it started."""
    if config.workers <= 1:
        # One process needs no shared folder; if the operator set one anyway, it is prepared the same way.
        with metrics_shared_by_workers() if METRICS_DIRECTORY in os.environ else contextlib.nullcontext():
            server = DrainingServer(config)
            server.run()
        return server.started
    sock = config.bind_socket()
    # uvicorn's supervisor builds its workers from this module-level name; the child processes unpickle
    # our subclass by its qualified name, so each worker runs a DrainingServer.
    multiprocess.Process = _DrainingProcess
    with metrics_shared_by_workers() as folder:
        log.info("%d workers; their metrics are added up from %s", config.workers, folder)
        multiprocess.Multiprocess(config, sockets=[sock]).run()
    return True
