"""Shared fixtures: the fake upstream on loopback, migrated SQLite files, the app with its real lifespan.

Every test gets a fresh database built by the real Alembic migrations and a reset fake upstream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

# In-process apps keep their metrics in memory: prometheus_client reads this when it is first imported
# (below, through the app), so a developer's shared-metrics folder must not leak into the tests.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

from agent_server.app import AgentServerApp  # noqa: E402
from agent_server.config import Settings, get_settings  # noqa: E402
from agent_server.db.migrations import upgrade_to_head  # noqa: E402
from agent_server.fake_upstream import FakeConfig, FakeUpstream  # noqa: E402

ALICE = "alice-secret-0123456789"
BOB = "bob-secret-0123456789abc"
UPSTREAM_KEY = "sk-test-upstream-key-never-logged-42"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's environment or .env file."""
    for name in list(os.environ):
        if name.startswith(("AGENT_", "ANTHROPIC_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(FakeConfig()) as fake:
        yield fake


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.reset()
    return fake_upstream


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'agent.db'}"
    upgrade_to_head(url)
    return url


def make_settings(database_url: str, fake: FakeUpstream | None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "DATABASE_URL": database_url,
        "AGENT_API_KEYS": f"alice:{ALICE},bob:{BOB}",
        "AGENT_UPSTREAM_MAX_RETRIES": 2,
        "AGENT_UPSTREAM_TIMEOUT_SECONDS": 10,
        "AGENT_LOG_FORMAT": "json",
        # Generous limits: the tests of the limits themselves set their own.
        "AGENT_RATE_LIMIT": "100000/minute",
        "AGENT_MAX_CONCURRENT_REPLIES": 1000,
    }
    if fake is not None:
        values.update(ANTHROPIC_API_KEY=UPSTREAM_KEY, ANTHROPIC_BASE_URL=fake.base_url)
    values.update(overrides)
    return Settings(_env_file=None, **{k: v for k, v in values.items() if v is not None})


@asynccontextmanager
async def lifespan(app: AgentServerApp) -> AsyncIterator[AgentServerApp]:
    """Run the app's real ASGI lifespan around the block (what uvicorn does)."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        await task
        raise RuntimeError(started.get("message", "startup failed"))
    try:
        yield app
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


def auth(secret: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = AgentServerApp(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=30) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def client(database_url: str, fake: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a migrated database, talking to the fake upstream with the real SDK; alice's key."""
    async with app_client(make_settings(database_url, fake)) as http:
        http.headers.update(auth())
        yield http
