"""End-to-end fixtures: `agent-server serve` as a real subprocess on 127.0.0.1, against the fake upstream.

`ServerProcess` starts the server with a clean environment, waits on `/readyz` (polling a socket is the
only readiness signal a separate process gives), and can stop it with SIGTERM or SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALICE, BOB, UPSTREAM_KEY

pytestmark = pytest.mark.e2e
METRICS_TOKEN = "e2e-metrics-token-0123456789"


def metrics_auth() -> dict[str, str]:
    """The operator's credential for GET /metrics (client keys are not enough: metrics show every tenant)."""
    return {"Authorization": f"Bearer {METRICS_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, *, env: dict[str, str], workdir: Path, args: tuple[str, ...] = (), port: int | None = None):
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/agent/ws"
        self.env = env
        self.workdir = workdir
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"server-{self.port}-{time.monotonic_ns()}.log"

    def start(self, *, wait: bool = True, timeout: float = 60) -> ServerProcess:
        command = [sys.executable, "-m", "agent_server", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   *self.args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, env=self.env, cwd=self.workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()


def server_env(database_url: str, fake=None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENT_", "ANTHROPIC_")) and k not in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(
        DATABASE_URL=database_url,
        AGENT_API_KEYS=f"alice:{ALICE},bob:{BOB}",
        AGENT_LOG_FORMAT="json",
        AGENT_SHUTDOWN_GRACE_SECONDS="3",
        AGENT_RATE_LIMIT="100000/minute",
        AGENT_MAX_CONCURRENT_REPLIES="1000",
        AGENT_METRICS_TOKEN=METRICS_TOKEN,
        PYTHONUNBUFFERED="1",
    )
    if fake is not None:
        env.update(ANTHROPIC_API_KEY=UPSTREAM_KEY, ANTHROPIC_BASE_URL=fake.base_url)
    env.update(extra)
    return env


@pytest.fixture
def e2e_database_url(empty_database_url: str) -> str:
    """An empty database of the test's backend (tests/conftest.py): `agent-server serve` migrates it itself."""
    return empty_database_url


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Factory: start_server(env, args=(...), wait=True) -> ServerProcess; all are stopped at the end."""
    servers: list[ServerProcess] = []

    def start(env: dict[str, str], *, args: tuple[str, ...] = (), wait: bool = True, port: int | None = None):
        server = ServerProcess(env=env, workdir=tmp_path, args=args, port=port)
        servers.append(server)
        return server.start(wait=wait)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server, e2e_database_url, fake) -> ServerProcess:
    """One running server on a fresh database, talking to the fake upstream."""
    return start_server(server_env(e2e_database_url, fake))
