"""Throughput: completed POST /agent exchanges per second at N concurrent clients, agent-server (which
commits the user turn, the assistant turn and the audit row of each) against the in-memory baseline proxy.

Each client loops on new conversations. Slices of ``tp_seconds`` alternate server, baseline, server... The
server's figure counts only exchanges it answered 200 *and* that are in its database afterwards.
"""

from __future__ import annotations

import asyncio
import time

from .. import stats, sysinfo
from ..client import histogram_delta, http_client, post_json, server_histograms
from ..runner import FakeSpec, Run


async def _slice(run: Run, client, url: str, headers: dict, *, clients: int, seconds: float, cap: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(index: int) -> None:
        n = 0
        while time.perf_counter() < deadline and len(latencies) + len(errors) < cap:
            result = await post_json(client, url, {"message": f"client {index} says hello #{n}"}, headers)
            n += 1
            if result.ok and result.data and result.data.get("conversation_id"):
                latencies.append(result.latency)
            else:
                errors.append(result.error or "no conversation_id")

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - started
            run.progress.update(f"{url.split('/')[2]}: {len(latencies)} done, {len(latencies) / elapsed:.0f}/s")

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(worker(i) for i in range(clients)))
    finally:
        reporter.cancel()
    return {"seconds": time.perf_counter() - started, "latencies": latencies, "errors": errors}


PERSISTED = "SELECT count(*) FROM requests WHERE route = 'agent' AND status = 'ok'"


def persisted(stack, name: str | None = None) -> int:  # type: ignore[no-untyped-def]
    """Answered exchanges the server's database holds: ``requests`` rows of ``POST /agent`` that ended ``ok``."""
    name = name or next(iter(stack.databases))
    return int(stack.backends[name].scalar(name, PERSISTED))


async def run(run: Run) -> dict:
    plan = run.plan
    run.progress.section("throughput", f"{plan.tp_clients} clients, {plan.tp_rounds} x {plan.tp_seconds}s slices "
                                       f"per target, fake latency {plan.tp_upstream * 1000:.0f} ms")
    stack = run.stack("throughput", FakeSpec(plan.tp_upstream, 0.0, plan.tp_tokens))
    server, proxy, spec = stack.server, stack.proxy, stack.spec
    targets = {
        "server": (server, f"{server.url}/agent", run.auth),
        "baseline": (proxy, f"{proxy.url}/agent", {}),
    }
    totals = {name: {"seconds": 0.0, "latencies": [], "errors": [], "cpu_s": 0.0, "client_cpu_s": 0.0}
              for name in targets}
    try:
        async with http_client(plan.request_timeout) as client:
            for name, (_, url, headers) in targets.items():  # warm-up: connections, imports, caches
                await asyncio.gather(*(post_json(client, url, {"message": "warm-up"}, headers) for _ in range(4)))
            warm_rows = persisted(stack)
            with run.profiler("throughput", stack) as profile:
                for _ in range(plan.tp_rounds):
                    for name, (child, url, headers) in targets.items():
                        if name == "server":
                            before = await server_histograms(client, server.url, run.auth)
                        cpu0, own0 = sysinfo.cpu_seconds(child.pid), sysinfo.own_cpu_seconds()
                        part = await _slice(run, client, url, headers, clients=plan.tp_clients,
                                            seconds=plan.tp_seconds, cap=plan.tp_max)
                        if name == "server":
                            view = histogram_delta(before, await server_histograms(client, server.url, run.auth))
                            totals[name].setdefault("views", []).append(view)
                        total = totals[name]
                        total["cpu_s"] += sysinfo.cpu_seconds(child.pid) - cpu0
                        total["client_cpu_s"] += sysinfo.own_cpu_seconds() - own0
                        total["seconds"] += part["seconds"]
                        total["latencies"] += part["latencies"]
                        total["errors"] += part["errors"]
        persisted_rows = persisted(stack) - warm_rows
    finally:
        run.release(stack)
    result: dict = {"config": {"clients": plan.tp_clients, "seconds_per_slice": plan.tp_seconds,
                               "rounds": plan.tp_rounds,
                               "fake_latency_ms": (spec.ttft + spec.token_delay * max(spec.n_tokens - 1, 0)) * 1000,
                               "reply_tokens": spec.n_tokens}}
    for name, total in totals.items():
        completed = len(total["latencies"])
        if name == "server":
            completed = min(completed, persisted_rows)  # answered 200 and found in the database
        result[name] = {
            "completed": completed,
            "answered_200": len(total["latencies"]),
            "errors": len(total["errors"]),
            "first_errors": total["errors"][:3],
            "seconds": round(total["seconds"], 3),
            "per_second": round(completed / total["seconds"], 2) if total["seconds"] else None,
            "latency": stats.latency_summary(total["latencies"]),
            "cpu_s": round(total["cpu_s"], 3),
            "cpu_ms_per_exchange": round(1000 * total["cpu_s"] / completed, 3) if completed else None,
            "client_cpu_s": round(total["client_cpu_s"], 3),
        }
    result["server"]["persisted_rows"] = persisted_rows
    result["server"]["server_view"] = totals["server"].get("views", [])
    result["ratio"] = stats.ratio(result["server"]["per_second"], result["baseline"]["per_second"])
    if profile.summary is not None:
        result["profile"] = profile.summary
    return result
