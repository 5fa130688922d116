"""Runs the selected sections one after the other, each on its own fresh processes and databases."""

from __future__ import annotations

import asyncio
import secrets
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

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
    databases: dict[str, Path]
    proxy: p.Child
    children: list[p.Child] = field(default_factory=list)

    @property
    def server(self) -> p.Child:
        return next(iter(self.servers.values()))


@dataclass
class Run:
    plan: SimpleNamespace
    procs: p.Processes
    progress: Progress
    workdir: Path
    secret: str = field(default_factory=lambda: "bench-" + secrets.token_hex(12))
    upstream_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(8))
    _shared: Stack | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secret}"}

    def database_url(self, name: str) -> str:
        return f"sqlite+aiosqlite:///{self.workdir / (name + '.db')}"

    def stack(self, section: str, spec: FakeSpec, databases: list[str] | None = None) -> Stack:
        """Fresh processes for ``section`` (one server per database name); with --quick, one shared set."""
        if self.plan.quick and databases is None:
            if self._shared is None:
                clock = getattr(self.plan, "ttft_fake_clock", QUICK_FAKE.ttft_from)
                self._shared = self._start("quick", replace(QUICK_FAKE, ttft_from=clock), ["quick"])
            return self._shared
        return self._start(section, spec, databases or [section])

    def release(self, stack: Stack) -> None:
        if stack is not self._shared:
            self.procs.stop(*stack.children)

    def close(self) -> None:
        if self._shared is not None:
            self.procs.stop(*self._shared.children)
            self._shared = None

    def _start(self, section: str, spec: FakeSpec, databases: list[str]) -> Stack:
        """Start the fake, then the servers and the proxy, and wait until all of them answer."""
        self.progress.note("starting fake upstream, agent-server(s) and baseline proxy")
        fake = p.start_fake(self.procs, f"{section}-fake", ttft=spec.ttft, token_delay=spec.token_delay,
                            n_tokens=spec.n_tokens, ttft_from=spec.ttft_from)
        servers = {}
        for name in databases:
            env = p.server_env(fake_url=fake.url, database_url=self.database_url(name), secret=self.secret,
                               upstream_key=self.upstream_key)
            servers[name] = p.start_server(self.procs, f"{name}-server", env=env, workers=self.plan.workers)
        proxy = p.start_proxy(self.procs, f"{section}-proxy", fake_url=fake.url, upstream_key=self.upstream_key,
                              workers=self.plan.workers)
        children = [fake, *servers.values(), proxy]
        try:
            self.procs.wait_ready(*servers.values(), proxy)
        except BaseException:
            self.procs.stop(*children)
            raise
        paths = {name: self.workdir / f"{name}.db" for name in databases}
        return Stack(spec, fake, servers, paths, proxy, children)

    def stream_targets(self, stack: Stack) -> dict[str, Target]:
        """The three SSE targets: agent-server, the baseline proxy and the fake upstream itself."""
        return {
            "server": Target("server", f"{stack.server.url}/agent/stream", self.auth),
            "baseline": Target("baseline", f"{stack.proxy.url}/agent/stream", {}),
            "direct": direct_target("direct", stack.fake.url, self.upstream_key),
        }

    def profiler(self, section: str, stack: Stack) -> Profiler:
        """py-spy on the server and on the baseline while a section's load runs (only with --profile)."""
        return Profiler(self.plan.profile, section, {"server": stack.server.pid, "baseline": stack.proxy.pid},
                        self.progress)


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
