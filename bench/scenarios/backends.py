"""More than one machine: the same figures on SQLite and on PostgreSQL, side by side in one run.

Two agent-servers on one fake, one on a SQLite file and one on a database of the run's throwaway PostgreSQL
cluster (``bench/postgres.py``), beside the baseline proxy:

- TTFT overhead at 1 and at ``ttft_streams`` streams, the targets interleaved round by round exactly as in the ttft
  section (the same fake settings: ``--ttft-upstream``, ``--ttft-token-delay``, ``--ttft-tokens``), with each
  backend's comparison to the baseline and its 95% interval;
- persisted ``POST /agent`` throughput with wrk (the wrk section's driver and knobs) and CPU per exchange, with 1 and
  with 2 workers (servers and baseline alike; the servers are restarted on fresh databases for each count). The
  PostgreSQL server's CPU is its own process tree's; PostgreSQL's backends' CPU (a separate tree) is reported
  beside it, per exchange, since on one machine it competes for the same cores.
"""

from __future__ import annotations

from .. import stats, sysinfo
from .. import wrk as wrk_tool
from ..client import Target, direct_target, http_client
from ..runner import FakeSpec, Run
from . import ttft as ttft_scenario
from .throughput import persisted
from .wrk import alternate

KINDS = ("sqlite", "postgres")
ORDER = ("sqlite", "postgres", "baseline", "direct")


def _names(workers: int) -> dict[str, str]:
    return {kind: f"backend_{kind}_w{workers}" for kind in KINDS}


async def _ttft(run: Run, stack, names: dict[str, str]) -> dict:
    plan = run.plan
    targets = {kind: Target(kind, f"{stack.servers[names[kind]].url}/agent/stream", run.auth) for kind in KINDS}
    targets["baseline"] = Target("baseline", f"{stack.proxy.url}/agent/stream", {})
    targets["direct"] = direct_target("direct", stack.fake.url, run.upstream_key)
    levels = {}
    async with http_client(plan.request_timeout) as client:
        for streams, rounds in ((1, plan.backends_ttft_samples), (plan.ttft_streams, plan.backends_ttft_rounds)):
            levels[str(streams)] = await ttft_scenario._level(
                run, client, targets, streams=streams, rounds=rounds, warmup=plan.ttft_warmup,
                tokens=stack.spec.n_tokens, fake_url=stack.fake.url, order=list(ORDER))
    return {name: {level: data[name] for level, data in levels.items()} for name in ORDER}


async def _throughput(run: Run, stack, names: dict[str, str], pg_pid: int | None) -> dict:
    plan = run.plan
    targets = {kind: (stack.servers[names[kind]], f"{stack.servers[names[kind]].url}/agent",
                      run.auth["authorization"], lambda name=names[kind]: persisted(stack, name)) for kind in KINDS}
    targets["baseline"] = (stack.proxy, f"{stack.proxy.url}/agent", "", None)
    pg0 = sysinfo.cpu_seconds(pg_pid) if pg_pid else None
    measured = await alternate(run, targets, rounds=plan.wrk_rounds, connections=plan.wrk_connections,
                               seconds=plan.wrk_seconds)
    if pg_pid:
        # PostgreSQL's CPU over the whole phase, charged to the PostgreSQL server's exchanges (only it uses it).
        pg_cpu = sysinfo.cpu_seconds(pg_pid) - (pg0 or 0.0)
        done = measured["postgres"]["completed"]
        measured["postgres"]["postgres_cpu_s"] = round(pg_cpu, 3)
        measured["postgres"]["postgres_cpu_ms_per_exchange"] = round(1000 * pg_cpu / done, 3) if done else None
        own = measured["postgres"]["cpu_ms_per_exchange"]
        measured["postgres"]["cpu_ms_per_exchange_with_postgres"] = (
            round(own + 1000 * pg_cpu / done, 3) if done and own is not None else None)
    for kind in KINDS:
        measured[kind]["ratio"] = stats.ratio(measured[kind]["per_second"], measured["baseline"]["per_second"])
    return measured


async def run(run: Run) -> dict:
    plan = run.plan
    from ..postgres import find_bin

    if find_bin() is None:
        run.progress.section("backends", "skipped: PostgreSQL is not installed")
        return {"skipped": "PostgreSQL is not installed (initdb/postgres not found; set AGENT_BENCH_PG_BIN)"}
    if wrk_tool.find() is None:
        run.progress.section("backends", "skipped: wrk is not installed")
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    counts = sorted({1, plan.backends_workers})
    run.progress.section("backends", f"SQLite and PostgreSQL: TTFT at 1 and {plan.ttft_streams} streams, wrk "
                                     f"throughput with {' and '.join(map(str, counts))} worker(s)")
    spec = FakeSpec(plan.ttft_upstream, plan.ttft_token_delay, plan.ttft_tokens, plan.ttft_fake_clock)
    result: dict = {"config": {
        "ttft": {"fake_ttft_ms": spec.ttft * 1000, "fake_token_delay_ms": spec.token_delay * 1000,
                 "tokens": spec.n_tokens, "levels": {"1": plan.backends_ttft_samples,
                                                     str(plan.ttft_streams): plan.backends_ttft_rounds}},
        "throughput": {"connections": plan.wrk_connections, "seconds_per_slice": plan.wrk_seconds,
                       "rounds": plan.wrk_rounds, "reply_tokens": plan.wrk_tokens, "workers": counts},
        "sqlite": run.backend("sqlite").describe(), "postgres": run.backend("postgres").describe(),
        "note": "TTFT levels map concurrent streams to measured rounds, at 1 worker; throughput per worker count"},
        "throughput": {}}
    pg_pid = run.backend("postgres").cluster.child.pid  # type: ignore[union-attr]
    wrk_spec = FakeSpec(plan.wrk_upstream, 0.0, plan.wrk_tokens)
    # Each phase on fresh processes and databases: the TTFT phase wants the ttft section's fake, wrk the wrk one's.
    phases = [("ttft", 1, spec), *(("wrk", workers, wrk_spec) for workers in counts)]
    for phase, workers, fake in phases:
        names = _names(workers)
        stack = run.stack(f"backends-{phase}-w{workers}", fake, list(names.values()), workers=workers,
                          backend={names[kind]: kind for kind in KINDS})
        try:
            if phase == "ttft":
                result["ttft"] = await _ttft(run, stack, names)
            else:
                result["throughput"][str(workers)] = await _throughput(run, stack, names, pg_pid)
        finally:
            run.release(stack)
    return result
