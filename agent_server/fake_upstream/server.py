"""Run the fake upstream on loopback: in a background thread for tests, or in the foreground.

`FakeUpstream` gives tests and benchmarks a real HTTP server (so the real SDK, its retries and
its connection handling all run) plus a small synchronous client for the control API. It uses
urllib because this module ships in the product package, which does not depend on httpx.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import uvicorn

from .app import FakeConfig, create_fake_app
from .script import Behaviour


class ReadyServer(uvicorn.Server):
    """A uvicorn server that reports its bound port once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[int], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_ready(self.servers[0].sockets[0].getsockname()[1])


def build_server(
    config: FakeConfig, *, host: str, port: int, on_ready: Callable[[int], None], log_level: str = "warning"
) -> ReadyServer:
    uvicorn_config = uvicorn.Config(
        create_fake_app(config),
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,
        access_log=False,
        lifespan="on",
        # A hung request must not hold shutdown for ever.
        timeout_graceful_shutdown=1,
    )
    return ReadyServer(uvicorn_config, on_ready)


class FakeUpstream:
    """The fake Messages API on 127.0.0.1, an ephemeral port, in a thread with its own loop.

    Use as `with FakeUpstream(FakeConfig(...)) as fake:` and point the SDK at `fake.base_url`.
    The control methods block; from async tests wrap the long waits in `asyncio.to_thread`.
    """

    def __init__(self, config: FakeConfig | None = None, *, start_timeout: float = 10.0) -> None:
        self.config = config or FakeConfig()
        self.port: int | None = None
        self._start_timeout = start_timeout
        self._ready = threading.Event()
        self._server: ReadyServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeUpstream is not running")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeUpstream:
        self._server = build_server(self.config, host="127.0.0.1", port=0, on_ready=self._bound)
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        self._ready.wait(self._start_timeout)
        if self.port is None:
            self.stop()
            raise RuntimeError("fake upstream failed to start")
        return self

    def _bound(self, port: int) -> None:
        self.port = port
        self._ready.set()

    def _run(self) -> None:
        assert self._server is not None
        try:
            # A fresh loop per server, whatever loop policy the caller's thread uses.
            asyncio.run(self._server.serve())
        finally:
            self._ready.set()  # wake start() if startup failed

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
        self.port = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Control API client

    def _call(self, method: str, path: str, payload: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"null")

    def script(self, *behaviours: Behaviour | dict[str, Any]) -> None:
        """Append behaviours, consumed one per upstream attempt."""
        items = [Behaviour.model_validate(b).model_dump(exclude_unset=True) for b in behaviours]
        status, body = self._call("POST", "/_fake/script", {"behaviours": items})
        if status != 200:
            raise ValueError(f"fake upstream refused the script: {body}")

    def reset(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def violations(self) -> list[dict[str, Any]]:
        """Every request refused with a 400 since the last reset: {"request_id", "status", "type", "message"}."""
        return self._call("GET", "/_fake/violations")[1]["violations"]

    def set_models(self, models: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """Merge `{"<model>": {"context_window": N, "cache_minimum": N}}` into the model table (until reset)."""
        status, body = self._call("POST", "/_fake/models", models)
        if status != 200:
            raise ValueError(f"fake upstream refused the models: {body}")
        return body["models"]

    def advance_clock(self, seconds: float) -> float:
        """Move the prompt cache's clock forward; returns the total offset from real time."""
        status, body = self._call("POST", "/_fake/clock", {"advance": seconds})
        if status != 200:
            raise ValueError(f"fake upstream refused the clock change: {body}")
        return body["offset"]

    def requests(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_fake/requests")[1]["requests"]

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the Messages requests the fake received, oldest first."""
        return [request["body"] for request in self.requests() if request["path"] == "/v1/messages"]

    def streams(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_fake/streams")[1]["streams"]

    def wait_for(self, outcome: str = "completed", count: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        """Block until `count` streams ended with `outcome`; raise TimeoutError otherwise."""
        query = urllib.parse.urlencode({"outcome": outcome, "count": count, "timeout": timeout})
        return self._wait(query, timeout)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> dict[str, Any]:
        """Block until at least `n` attempts were recorded; raise TimeoutError otherwise."""
        return self._wait(urllib.parse.urlencode({"requests": n, "timeout": timeout}), timeout)

    def _wait(self, query: str, timeout: float) -> dict[str, Any]:
        status, body = self._call("GET", f"/_fake/wait?{query}", timeout=timeout + 5)
        if status != 200:
            raise TimeoutError(f"fake upstream wait timed out: {body}; streams={self.streams()}")
        return body
