"""Runs the selected sections one after the other, each on its own fresh processes and databases."""

from __future__ import annotations

import asyncio
import secrets
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import dbs
from . import procs as p
from .client import Target, direct_target
from .profiling import Profiler
from .progress import Progress


@dataclass(frozen=True)
class FakeSpec:
    """How the fake upstream answers: seconds to the first token, seconds between tokens, tokens per reply, and
    when its time to first token starts (``agent_server/fake_upstream/replies.py: StreamedReply``)."""

    ttft: float
    token_delay: float
    n_tokens: int
    ttft_from: str = "accepted"


# --quick: every section but history shares one set of processes with this fake (starting them is the slow part).
QUICK_FAKE = FakeSpec(ttft=0.01, token_delay=0.002, n_tokens=5)


@dataclass
class Stack:
    """The processes of one section: one fake upstream, one or more agent-servers, one baseline proxy."""

    spec: FakeSpec
    fake: p.Child
    servers: dict[str, p.Child]
    databases: dict[str, str]  # server name -> its database's name (``run.db``: URLs, counts, storage)
    proxy: p.Child | None
    children: list[p.Child] = field(default_factory=list)
    backends: dict[str, Any] = field(default_factory=dict)  # server name -> the dbs backend of its database

    @property
    def server(self) -> p.Child:
        return next(iter(self.servers.values()))

    @property
    def backend(self) -> Any:
        """The first server's database backend (every server's, unless a section asked for several kinds)."""
        return next(iter(self.backends.values()))


@dataclass
class Run:
    plan: SimpleNamespace
    procs: p.Processes
    progress: Progress
    workdir: Path
    secret: str = field(default_factory=lambda: "bench-" + secrets.token_hex(12))
    upstream_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(8))
    _shared: Stack | None = None
    _backends: dict = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secret}"}

    @property
    def db(self) -> dbs.Sqlite | dbs.Postgres:
        """The database backend of this run (``--database``)."""
        return self.backend(getattr(self.plan, "database", "sqlite"))

    def backend(self, kind: str) -> dbs.Sqlite | dbs.Postgres:
        """SQLite files in the work folder, or the run's PostgreSQL cluster (started on first use)."""
        if kind not in self._backends:
            if kind == "postgres":
                self.progress.note("starting a throwaway PostgreSQL cluster")
            settings = tuple(getattr(self.plan, "pg_setting", None) or ())
            self._backends[kind] = dbs.open_backend(kind, workdir=self.workdir, procs=self.procs, settings=settings)
        return self._backends[kind]

    def database_url(self, name: str) -> str:
        return self.db.url(name)

    def stack(self, section: str, spec: FakeSpec, databases: list[str] | None = None, *,
              env: dict[str, str] | None = None, fake_module: str = "agent_server.fake_upstream",
              fake_args: tuple = (), proxy: bool = True, backend: str | dict[str, str] | None = None,
              workers: int | None = None, fresh: bool = True) -> Stack:
        """Fresh processes for ``section`` (one server per database name); with --quick and nothing special asked
        for, one shared set. ``env``: more server settings, for every server, or per server name when a value is
        a dict; ``backend``: this section's database kind instead of the run's (or one per server name)."""
        special = databases is not None or env or fake_module != "agent_server.fake_upstream" or fake_args \
            or not proxy or backend is not None or workers is not None
        if self.plan.quick and not special:
            if self._shared is None:
                clock = getattr(self.plan, "ttft_fake_clock", QUICK_FAKE.ttft_from)
                self._shared = self._start("quick", replace(QUICK_FAKE, ttft_from=clock), ["quick"])
            return self._shared
        return self._start(section, spec, databases or [section], env=env, fake_module=fake_module,
                           fake_args=fake_args, proxy=proxy, backend=backend, workers=workers, fresh=fresh)

    def release(self, stack: Stack) -> None:
        if stack is not self._shared:
            self.procs.stop(*stack.children)

    def close(self) -> None:
        if self._shared is not None:
            self.procs.stop(*self._shared.children)
            self._shared = None
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    def _start(self, section: str, spec: FakeSpec, databases: list[str], *, env: dict | None = None,
               fake_module: str = "agent_server.fake_upstream", fake_args: tuple = (), proxy: bool = True,
               backend: str | dict[str, str] | None = None, workers: int | None = None,
               fresh: bool = True) -> Stack:
        """Start the fake, then the servers and the proxy, and wait until all of them answer."""
        self.progress.note("starting fake upstream, agent-server(s)" + (" and baseline proxy" if proxy else ""))
        workers = workers or self.plan.workers
        backends = {name: self.db if backend is None else self.backend(backend[name] if isinstance(backend, dict)
                                                                       else backend) for name in databases}
        fake = p.start_fake(self.procs, f"{section}-fake", ttft=spec.ttft, token_delay=spec.token_delay,
                            n_tokens=spec.n_tokens, ttft_from=spec.ttft_from, module=fake_module,
                            extra_args=fake_args)
        children = [fake]
        try:
            servers = {}
            for name in databases:
                extra = {k: v for k, v in (env or {}).items() if not isinstance(v, dict)}
                extra.update((env or {}).get(name, {}) if isinstance((env or {}).get(name), dict) else {})
                url = backends[name].create(name) if fresh else backends[name].url(name)
                server_env = p.server_env(fake_url=fake.url, database_url=url, secret=self.secret,
                                          upstream_key=self.upstream_key, **extra)
                servers[name] = p.start_server(self.procs, f"{name}-server", env=server_env, workers=workers)
                children.append(servers[name])
            baseline = None
            if proxy:
                baseline = p.start_proxy(self.procs, f"{section}-proxy", fake_url=fake.url,
                                         upstream_key=self.upstream_key, workers=workers)
                children.append(baseline)
            self.procs.wait_ready(*children[1:])
        except BaseException:
            self.procs.stop(*children)
            raise
        return Stack(spec, fake, servers, {name: name for name in databases}, baseline, children, backends)

    def stream_targets(self, stack: Stack) -> dict[str, Target]:
        """The three SSE targets: agent-server, the baseline proxy and the fake upstream itself."""
        assert stack.proxy is not None
        return {
            "server": Target("server", f"{stack.server.url}/agent/stream", self.auth),
            "baseline": Target("baseline", f"{stack.proxy.url}/agent/stream", {}),
            "direct": direct_target("direct", stack.fake.url, self.upstream_key),
        }

    def profiler(self, section: str, stack: Stack) -> Profiler:
        """py-spy on the server and on the baseline while a section's load runs (only with --profile)."""
        pids = {"server": stack.server.pid}
        if stack.proxy is not None:
            pids["baseline"] = stack.proxy.pid
        return Profiler(self.plan.profile, section, pids, self.progress)


Section = Callable[[Run], Awaitable[dict]]


async def run_sections(run: Run, sections: dict[str, Section]) -> tuple[dict, bool]:
    """Each section's result (or its error); True when every section succeeded."""
    results: dict[str, dict] = {}
    ok = True
    try:
        for name, section in sections.items():
            try:
                results[name] = await asyncio.wait_for(section(run), run.plan.section_timeout)
            except (Exception, TimeoutError) as exc:
                ok = False
                detail = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                run.progress.note(f"FAILED: {detail}")
                results[name] = {"error": detail, "traceback": traceback.format_exc()[-4000:]}
    finally:
        run.close()
    return results, ok
