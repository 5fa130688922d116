"""Shared fixtures: the fake upstream on loopback, migrated SQLite files, the app with its real lifespan.

Every test gets a fresh database built by the real Alembic migrations and a reset fake upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

# In-process apps keep their metrics in memory: prometheus_client reads this when it is first imported
# (below, through the app), so a developer's shared-metrics folder must not leak into the tests.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from agent_server.app import AgentServerApp  # noqa: E402
from agent_server.config import Settings, get_settings  # noqa: E402
from agent_server.db.migrations import upgrade_to_head  # noqa: E402
from agent_server.fake_upstream import FakeConfig, FakeUpstream  # noqa: E402
from tests.servers import PostgresServer, RedisServer, find_postgres_bin  # noqa: E402

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


# -- databases: SQLite always, PostgreSQL when asked for (--databases / AGENT_TEST_DATABASES) ---------------------

BACKENDS = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--databases", default=os.environ.get("AGENT_TEST_DATABASES", "sqlite"),
        help="comma-separated databases that the tests of `database_url` run on: sqlite, postgresql "
             "(default: $AGENT_TEST_DATABASES, else sqlite)")


def selected_backends(config: pytest.Config) -> list[str]:
    chosen = [name.strip() for name in str(config.getoption("--databases")).split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BACKENDS))
    if unknown or not chosen:
        raise pytest.UsageError(f"--databases: unknown {', '.join(unknown) or 'nothing'}; choose from "
                                f"{', '.join(BACKENDS)}")
    return list(dict.fromkeys(chosen))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that needs a database (directly or through a fixture) runs once per selected backend."""
    if "database_backend" in metafunc.fixturenames:
        metafunc.parametrize("database_backend", selected_backends(metafunc.config), indirect=True)


def _missing(what: str, install: str) -> None:
    """A server the tests need is not installed: a skip on a bare machine, a failure in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed, and CI must run the tests that need it ({install})", pytrace=False)
    pytest.skip(f"{what} is not installed ({install})")


@pytest.fixture
def database_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``; a test marked ``sqlite_only`` is skipped on PostgreSQL."""
    backend = getattr(request, "param", "sqlite")
    marker = request.node.get_closest_marker("sqlite_only")
    if backend != "sqlite" and marker is not None:
        pytest.skip(f"SQLite only: {marker.args[0] if marker.args else 'looks at the SQLite file itself'}")
    return backend


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway cluster for the session (tests/servers.py)."""
    bindir = find_postgres_bin()
    if bindir is None:
        _missing("PostgreSQL (initdb, postgres)", "apt-get install -y postgresql")
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> str:
    """A database migrated once by the real Alembic history; every test's database is a copy of it."""
    url = postgres_server.create_database("agent_template")
    upgrade_to_head(url)  # a sync fixture: no event loop is running here (env.py runs its own)
    return "agent_template"


_DATABASE_NUMBERS = itertools.count(1)


@pytest.fixture
def new_postgres_database(postgres_server: PostgresServer) -> Iterator:
    """Factory: ``new_postgres_database(template=None)`` -> the URL of a new database, dropped after the test."""
    names: list[str] = []

    def create(template: str | None = None) -> str:
        name = f"test_{next(_DATABASE_NUMBERS)}"
        names.append(name)
        return postgres_server.create_database(name, template=template)

    yield create
    for name in names:
        postgres_server.drop_database(name)


@pytest.fixture
def database_url(database_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database migrated to head, of the test's backend: a SQLite file, or a copy of the PostgreSQL template."""
    if database_backend == "postgresql":
        template = request.getfixturevalue("postgres_template")
        return request.getfixturevalue("new_postgres_database")(template=template)
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'agent.db'}"
    upgrade_to_head(url)
    return url


@pytest.fixture
def empty_database_url(database_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database with nothing in it (not even the schema), of the test's backend: for what migrates by itself."""
    if database_backend == "postgresql":
        return request.getfixturevalue("new_postgres_database")()
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'agent.db'}"


# -- Redis ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server", "apt-get install -y redis-server")
    server = RedisServer(binary)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT`` of the session's redis-server; emptied before each test that uses it."""
    return redis_server.url


@pytest.fixture(autouse=True)
def _fresh_redis(request: pytest.FixtureRequest) -> None:
    """Each test that uses ``redis_url`` starts on an empty Redis (no other test starts the server)."""
    if "redis_url" in request.fixturenames and "redis_server" in request.fixturenames:
        request.getfixturevalue("redis_server").flush()


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


def plain_messages(messages: list[dict]) -> list[dict]:
    """Messages as the tests of text conversations write them: a message of text blocks becomes its text (the
    server sends content blocks, with prompt-cache markers; the API reads both forms alike)."""
    plain = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list) and all(block.get("type") == "text" for block in content):
            content = "".join(block["text"] for block in content)
        plain.append({"role": message["role"], "content": content})
    return plain


def plain_text(value) -> str | None:  # type: ignore[no-untyped-def]
    """A system prompt (or content) as text, whether sent as a string or as text blocks."""
    if value is None or isinstance(value, str):
        return value
    return "".join(block["text"] for block in value if block.get("type") == "text")


def sync_url(url: str):  # type: ignore[no-untyped-def]
    """The same database through a synchronous driver (sqlite3 or psycopg), for tests that poke at it directly."""
    backend = make_url(url).get_backend_name()
    return make_url(url).set(drivername="sqlite+pysqlite" if backend == "sqlite" else "postgresql+psycopg")


def run_sql(url: str, statement: str) -> None:
    """Run one statement on the test's database, SQLite or PostgreSQL, committed."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()
