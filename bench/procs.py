"""The child processes of a run: the fake upstream, agent-server and the baseline proxy.

Every child gets its own process group (a server with ``--workers N`` forks workers; stopping the group
stops them too) and is asked to die with this process (``PR_SET_PDEATHSIG``) in case we are killed
outright. ``Processes`` stops every child it started when it exits, whatever happened; each child is
stopped by its own process-group id, never by name.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would change the children's behaviour behind our back."""
    drop = ("AGENT_", "ANTHROPIC_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop) and k != "DATABASE_URL"}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    url: str = ""
    ready_path: str = ""
    extra: dict = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM  # PostgreSQL: SIGINT, its fast shutdown

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Starts children and guarantees they are stopped (``with Processes(workdir) as procs:``)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._children: list[Child] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(*self._children)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], *, url: str = "", ready_path: str = "",
              cwd: Path | None = None, stop_signal: int = signal.SIGTERM, **popen: object) -> Child:
        """``popen``: more ``subprocess.Popen`` arguments (``user``, ``group``: PostgreSQL refuses to run as root)."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd or self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent, **popen,  # type: ignore[arg-type]
            )
        child = Child(name, proc, log_path, url=url, ready_path=ready_path, stop_signal=stop_signal)
        self._children.append(child)
        return child

    def stop(self, *children: Child, timeout: float = 15) -> None:
        """SIGTERM each child's process group, then SIGKILL what is left after ``timeout`` seconds."""
        alive = [c for c in children if c.proc.poll() is None]
        for child in alive:
            _signal_group(child, child.stop_signal)
        deadline = time.monotonic() + timeout
        for child in alive:
            try:
                child.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        for child in alive:
            _signal_group(child, signal.SIGKILL)  # a child that ignored SIGTERM, or workers that outlived it
            if child.proc.poll() is None:
                child.proc.wait(10)
        for child in children:
            if child in self._children:
                self._children.remove(child)

    def wait_ready(self, *children: Child, timeout: float = 60) -> None:
        """Poll each child's readiness URL until it answers 200; fail with its log if it exits or hangs."""
        deadline = time.monotonic() + timeout
        pending = [c for c in children if c.ready_path]
        while pending:
            for child in list(pending):
                if child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
                try:
                    with urllib.request.urlopen(child.url + child.ready_path, timeout=2) as response:
                        if response.status == 200:
                            pending.remove(child)
                except (OSError, urllib.error.URLError):
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise TimeoutError(f"not ready after {timeout}s: {names}\n{pending[0].log_tail()}")
            if pending:
                time.sleep(0.05)


def _signal_group(child: Child, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)  # the group we created for this child (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _harness_first() -> str:
    """A PYTHONPATH that imports this harness's code first (the fake, the baseline proxy), also with ``--rev``."""
    return os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


def start_fake(procs: Processes, name: str, *, ttft: float, token_delay: float, n_tokens: int,
               ttft_from: str = "accepted", module: str = "agent_server.fake_upstream", extra_args: tuple = (),
               timeout: float = 30) -> Child:
    """The fake Messages API on a port of its choosing; returns once it printed its address.

    Always this harness's fake, also with ``--rev``: it is part of the measuring apparatus, like the
    baseline proxy, so two revisions are measured against the same upstream. ``module``: another entry point
    that prints the same line (``bench.fake_agent``: the fake with a model that asks for tools)."""
    argv = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0",
            "--ttft", str(ttft), "--token-delay", str(token_delay), "--n-tokens", str(n_tokens),
            "--ttft-from", ttft_from, "--log-level", "warning", *map(str, extra_args)]
    child = procs.spawn(name, argv, clean_env(PYTHONPATH=_harness_first()))
    deadline = time.monotonic() + timeout
    marker = "fake-upstream listening on "
    while time.monotonic() < deadline:
        for line in child.log_path.read_text(errors="replace").splitlines():
            if line.startswith(marker):
                child.url = line[len(marker):].strip()
                return child
        if child.proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {child.proc.returncode}:\n{child.log_tail()}")
        time.sleep(0.02)
    raise TimeoutError(f"{name} did not announce its port in {timeout}s:\n{child.log_tail()}")


def server_env(*, fake_url: str, database_url: str, secret: str, upstream_key: str, **extra: str) -> dict[str, str]:
    """agent-server's environment. ``GET /metrics`` takes the client key's secret as its operator token
    (``AGENT_METRICS_TOKEN``, version 2) and as a client key (version 1, which ignores the token), so one header
    reads the metrics of both. ``extra``: more settings (``AGENT_TOOLS_FILE``, ``AGENT_PROMPT_CACHE``, ...)."""
    return clean_env(
        DATABASE_URL=database_url,
        AGENT_METRICS_TOKEN=secret,
        AGENT_API_KEYS=f"bench:{secret}",
        ANTHROPIC_API_KEY=upstream_key,
        ANTHROPIC_BASE_URL=fake_url,
        AGENT_RATE_LIMIT="1000000/minute",
        AGENT_MAX_CONCURRENT_REPLIES="100000",
        AGENT_MAX_WS_SESSIONS_PER_KEY="100000",  # the ws section opens 1,000 sessions on the one key
        AGENT_LOG_LEVEL="warning",
        AGENT_SHUTDOWN_GRACE_SECONDS="2",
        **extra,
    )


def start_server(procs: Processes, name: str, *, env: dict[str, str], workers: int) -> Child:
    """``agent-server serve`` on a free port (call ``procs.wait_ready`` before using it)."""
    port = free_port()
    argv = [sys.executable, "-m", "agent_server", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers)]
    return procs.spawn(name, argv, env, url=f"http://127.0.0.1:{port}", ready_path="/readyz")


def start_proxy(procs: Processes, name: str, *, fake_url: str, upstream_key: str, workers: int) -> Child:
    """The baseline proxy (``bench/baseline_proxy.py``) under uvicorn, same worker count as the server."""
    port = free_port()
    env = clean_env(ANTHROPIC_API_KEY=upstream_key, ANTHROPIC_BASE_URL=fake_url, PYTHONPATH=_harness_first())
    argv = [sys.executable, "-m", "bench.baseline_proxy", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers)]
    return procs.spawn(name, argv, env, url=f"http://127.0.0.1:{port}", ready_path="/healthz")


def migrate(database_urls: list[str], workdir: Path, timeout: float = 120) -> None:
    """``python -m agent_server migrate`` on each database, in parallel."""
    running = []
    for url in database_urls:
        env = clean_env(DATABASE_URL=url)
        running.append(subprocess.Popen([sys.executable, "-m", "agent_server", "migrate"], env=env, cwd=workdir,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for proc in running:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"agent_server migrate failed:\n{out.decode(errors='replace')[-2000:]}")
