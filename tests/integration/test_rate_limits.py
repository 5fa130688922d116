"""This server's own limits: a moving-window rate limit per client key (per address when anonymous) on every
model call, and a cap on the replies one key may have in flight at once.

Most tests run the app in-process; the proxy-header and Redis tests run `agent-server serve` processes,
since uvicorn applies ``X-Forwarded-For`` and only separate processes can show a limit shared through Redis.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from agent_server.app import AgentServerApp
from agent_server.fake_upstream import Behaviour
from tests.conftest import ALICE, BOB, auth, lifespan, make_settings
from tests.e2e.conftest import free_port, server_env, start_server  # noqa: F401  (start_server is a fixture)

RATE = "3/minute"
LIMIT = 3
WINDOW_SECONDS = 60
HTTP_BASE = "http://127.0.0.1"


@asynccontextmanager
async def started_app(settings) -> AsyncIterator[AgentServerApp]:
    app = AgentServerApp(settings)
    async with lifespan(app):
        yield app


def client_from(app: AgentServerApp, ip: str, **headers: str) -> httpx.AsyncClient:
    """A client whose requests arrive from ``ip`` (the ASGI scope's client address)."""
    transport = httpx.ASGITransport(app=app, client=(ip, 40123))
    return httpx.AsyncClient(transport=transport, base_url=HTTP_BASE, headers=headers, timeout=30)


def seconds(value: str) -> int:
    assert value.isdigit(), f"not a whole number of seconds: {value!r}"
    return int(value)


def assert_quota_headers(response: httpx.Response, *, remaining: int) -> None:
    assert seconds(response.headers["RateLimit-Limit"]) == LIMIT
    assert seconds(response.headers["RateLimit-Remaining"]) == remaining
    assert 1 <= seconds(response.headers["RateLimit-Reset"]) <= WINDOW_SECONDS


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= seconds(response.headers["Retry-After"]) <= WINDOW_SECONDS
    assert_quota_headers(response, remaining=0)


async def ask(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post("/agent", json={"message": "hello"}, headers=headers)


# -- per key ---------------------------------------------------------------------------------------------


async def test_the_call_over_the_limit_is_429_with_retry_after(database_url, fake):
    async with started_app(make_settings(database_url, fake, AGENT_RATE_LIMIT=RATE)) as app:
        async with client_from(app, "127.0.0.1", **auth(ALICE)) as alice, \
                client_from(app, "127.0.0.1", **auth(BOB)) as bob:
            for used in range(1, LIMIT + 1):
                response = await ask(alice)
                assert response.status_code == 200, response.text
                assert_quota_headers(response, remaining=LIMIT - used)

            assert_rate_limited(await ask(alice))
            assert_rate_limited(await ask(alice))
            assert len(fake.requests()) == LIMIT  # refused calls never reach the upstream

            other = await ask(bob)
            assert other.status_code == 200, other.text
            assert_quota_headers(other, remaining=LIMIT - 1)


async def test_requests_refused_before_a_model_call_do_not_use_the_quota(database_url, fake):
    async with started_app(make_settings(database_url, fake, AGENT_RATE_LIMIT=RATE)) as app:
        async with client_from(app, "127.0.0.1", **auth(ALICE)) as alice:
            for _ in range(LIMIT + 2):
                invalid = await alice.post("/agent", json={"message": ""})
                assert invalid.status_code == 422, invalid.text
                unauthenticated = await alice.post("/agent", json={"message": "x"}, headers={"Authorization": ""})
                assert unauthenticated.status_code == 401, unauthenticated.text
            for _ in range(LIMIT):
                assert (await ask(alice)).status_code == 200


# -- per address when anonymous ------------------------------------------------------------------------


async def test_anonymous_callers_are_limited_per_address(database_url, fake):
    settings = make_settings(database_url, fake, AGENT_RATE_LIMIT=RATE, AGENT_API_KEYS="")
    async with started_app(settings) as app:
        async with client_from(app, "1.2.3.4") as first, client_from(app, "5.6.7.8") as second:
            for _ in range(LIMIT):
                assert (await ask(first)).status_code == 200
            assert_rate_limited(await ask(first))
            response = await ask(second)
            assert response.status_code == 200, response.text
            assert_quota_headers(response, remaining=LIMIT - 1)


async def test_proxy_headers_are_ignored_unless_trusted(database_url, fake):
    settings = make_settings(database_url, fake, AGENT_RATE_LIMIT=RATE, AGENT_API_KEYS="")
    async with started_app(settings) as app:
        async with client_from(app, "1.2.3.4") as client:
            for n in range(LIMIT):
                spoofed = {"Fly-Client-IP": f"198.51.100.{n}", "X-Forwarded-For": f"203.0.113.{n}"}
                assert (await ask(client, **spoofed)).status_code == 200
            assert_rate_limited(await ask(client, **{"Fly-Client-IP": "198.51.100.99",
                                                    "X-Forwarded-For": "203.0.113.99"}))


async def test_fly_client_ip_is_the_caller_behind_a_trusted_proxy(database_url, fake):
    settings = make_settings(
        database_url, fake, AGENT_RATE_LIMIT=RATE, AGENT_API_KEYS="", AGENT_TRUST_PROXY_HEADERS="1"
    )
    async with started_app(settings) as app:
        # Every request comes from the proxy's address; the header names the real caller.
        async with client_from(app, "10.0.0.1") as proxy:
            for _ in range(LIMIT):
                assert (await ask(proxy, **{"Fly-Client-IP": "198.51.100.7"})).status_code == 200
            assert_rate_limited(await ask(proxy, **{"Fly-Client-IP": "198.51.100.7"}))
            response = await ask(proxy, **{"Fly-Client-IP": "198.51.100.8"})
            assert response.status_code == 200, response.text


@pytest.mark.e2e
def test_x_forwarded_for_counts_only_when_trusted(start_server, tmp_path, fake):  # noqa: F811
    common = {"AGENT_RATE_LIMIT": RATE, "AGENT_API_KEYS": ""}
    trusting = start_server(server_env(f"sqlite+aiosqlite:///{tmp_path / 'trusting.db'}", fake,
                                       AGENT_TRUST_PROXY_HEADERS="1", **common), wait=False)
    plain = start_server(server_env(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}", fake, **common), wait=False)
    trusting.wait_ready()
    plain.wait_ready()

    def ask_via(server, forwarded_for: str) -> httpx.Response:
        return httpx.post(f"{server.base_url}/agent", json={"message": "hi"},
                          headers={"X-Forwarded-For": forwarded_for}, timeout=10)

    for _ in range(LIMIT):
        assert ask_via(trusting, "203.0.113.7").status_code == 200
    assert_rate_limited(ask_via(trusting, "203.0.113.7"))
    assert ask_via(trusting, "203.0.113.8").status_code == 200

    for n in range(LIMIT):
        assert ask_via(plain, f"203.0.113.{n}").status_code == 200
    assert_rate_limited(ask_via(plain, "203.0.113.99"))
    stop_together(trusting, plain)


def stop_together(*servers) -> None:
    """SIGTERM every server first, then wait: their shutdowns overlap instead of adding up."""
    for server in servers:
        server.signal(signal.SIGTERM)
    for server in servers:
        server.wait(30)


# -- the window ------------------------------------------------------------------------------------------


async def test_the_window_moves_on(database_url, fake):
    """Time itself is the behaviour here, so this test waits on the clock."""
    async with started_app(make_settings(database_url, fake, AGENT_RATE_LIMIT="1/second")) as app:
        async with client_from(app, "127.0.0.1", **auth(ALICE)) as alice:
            first = await ask(alice)
            counted_by = time.monotonic()  # the call was counted before its response arrived
            assert first.status_code == 200, first.text
            refused = await ask(alice)
            assert refused.status_code == 429
            assert seconds(refused.headers["Retry-After"]) == 1
            await asyncio.sleep(max(0.0, counted_by + 1.05 - time.monotonic()))
            again = await ask(alice)
            assert again.status_code == 200, again.text


# -- every model call counts -----------------------------------------------------------------------------


def ws_exchange(ws, message: str) -> list[dict]:
    """Send one message frame; the frames up to its ``done`` or ``error``."""
    ws.send_json({"type": "message", "message": message})
    frames = []
    while True:
        frame = ws.receive_json()
        if frame["type"] == "ping":
            continue
        frames.append(frame)
        if frame["type"] in ("done", "error"):
            return frames


def test_post_stream_and_websocket_messages_share_one_quota(database_url, fake):
    settings = make_settings(database_url, fake, AGENT_RATE_LIMIT=RATE)
    with TestClient(AgentServerApp(settings), base_url=HTTP_BASE, headers=auth(ALICE)) as client:
        first = client.post("/agent", json={"message": "one"})
        assert first.status_code == 200
        assert_quota_headers(first, remaining=LIMIT - 1)
        streamed = client.post("/agent/stream", json={"message": "two"})
        assert streamed.status_code == 200 and "event: done" in streamed.text
        assert_quota_headers(streamed, remaining=LIMIT - 2)  # the stream's headers carry the quota too
        with client.websocket_connect("ws://127.0.0.1/agent/ws", headers=auth(ALICE)) as ws:
            assert ws.receive_json()["type"] == "session"
            assert ws_exchange(ws, "three")[-1]["type"] == "done"

            for response in (client.post("/agent", json={"message": "four"}),
                             client.post("/agent/stream", json={"message": "four"})):
                assert response.headers["content-type"].startswith("application/json")
                assert_rate_limited(response)

            refused = ws_exchange(ws, "four")
            assert [f["type"] for f in refused] == ["error"]
            error = refused[0]["error"]
            assert error["type"] == "rate_limit_error"
            assert isinstance(error["retry_after"], int) and 1 <= error["retry_after"] <= WINDOW_SECONDS
            # The session survives the refusal: it still answers the next frame.
            ws.send_text("not json")
            assert ws.receive_json()["error"]["type"] == "invalid_request_error"
        assert len(fake.requests()) == LIMIT


# -- replies in flight per key -----------------------------------------------------------------------------


async def test_one_key_may_have_only_so_many_replies_in_flight(database_url, fake):
    settings = make_settings(database_url, fake, AGENT_MAX_CONCURRENT_REPLIES=1)
    fake.script(Behaviour(hang=True))  # the first reply does not finish until we let go of it
    async with started_app(settings) as app:
        async with client_from(app, "127.0.0.1", **auth(ALICE)) as alice, \
                client_from(app, "127.0.0.1", **auth(BOB)) as bob:
            # A client that goes away with on_disconnect "cancel" stops its reply (Part 1's behaviour).
            slow = asyncio.create_task(alice.post("/agent", json={"message": "hello", "on_disconnect": "cancel"}))
            await asyncio.to_thread(fake.wait_for_requests, 1)  # alice's reply is now in flight

            for refused in (await ask(alice), await alice.post("/agent/stream", json={"message": "hi"})):
                assert refused.status_code == 429, refused.text
                assert refused.json()["error"]["type"] == "rate_limit_error"
                assert seconds(refused.headers["Retry-After"]) >= 1
            other = await ask(bob)
            assert other.status_code == 200, other.text

            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            after = await ask(alice)
            assert after.status_code == 200, after.text


# -- across processes, through Redis ---------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free loopback port, without persistence; ready once it says so."""

    def __init__(self, binary: str, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.output: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.decode(errors="replace"))
            if "Ready to accept connections" in self.output[-1]:
                self._ready.set()
        self._ready.set()  # it exited: wake the waiter

    def wait_ready(self, timeout: float = 15) -> None:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError("redis-server did not start:\n" + "".join(self.output))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed: CI must run the shared rate-limit test "
                        "(apt-get install -y redis-server)")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    redis = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    try:
        redis.wait_ready()
        yield redis.url
    finally:
        redis.stop()


@pytest.mark.e2e
def test_two_servers_share_one_limit_through_redis(start_server, tmp_path, fake, redis_url):  # noqa: F811
    shared = {"AGENT_RATE_LIMIT": "4/minute", "AGENT_RATE_LIMIT_STORAGE": redis_url}
    servers = [
        start_server(server_env(f"sqlite+aiosqlite:///{tmp_path / f'worker{n}.db'}", fake, **shared), wait=False)
        for n in (1, 2)
    ]
    for server in servers:
        server.wait_ready()

    def ask_server(server, secret: str = ALICE) -> httpx.Response:
        return httpx.post(f"{server.base_url}/agent", json={"message": "hi"}, headers=auth(secret), timeout=10)

    for n, server in enumerate([servers[0], servers[1], servers[0], servers[1]]):
        response = ask_server(server)
        assert response.status_code == 200, response.text
        assert response.headers["RateLimit-Remaining"] == str(4 - n - 1)  # one count, shared by both

    for server in servers:
        refused = ask_server(server)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert seconds(refused.headers["Retry-After"]) >= 1
    assert ask_server(servers[1], BOB).status_code == 200
    stop_together(*servers)
