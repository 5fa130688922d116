"""Persisted throughput driven by wrk: ``POST /agent`` exchanges per second at ``wrk_connections`` keep-alive
connections of one wrk thread (``bench/wrk.py``), agent_server (which stores the user turn, the reply, its ledger
row and its events) against the in-memory baseline proxy, with the CPU each process tree spent per exchange.

Slices of ``wrk_seconds`` alternate server, baseline, server... The server's figure counts only exchanges wrk saw
answered 2xx *and* that its database holds afterwards (``requests`` rows of route ``agent``, status ``ok``). CPU per
exchange: user + system time of the target's process tree (``/proc``, before and after each slice) over its
completed exchanges; wrk's own CPU is reported beside it, to show the load generator is not the bottleneck.
"""

from __future__ import annotations

import asyncio

from .. import stats, sysinfo
from .. import wrk as wrk_tool
from ..client import histogram_delta, http_client, post_json, server_histograms
from ..runner import FakeSpec, Run
from .throughput import persisted


async def alternate(run: Run, targets: dict, *, rounds: int, connections: int, seconds: float) -> dict:
    """``targets``: name -> (child, url, authorization header value, count or None). For each target its totals over
    ``rounds`` slices, the slices going round-robin over the targets; ``count()``, when given, says how many
    exchanges the target's database holds (its figure counts only those)."""
    async with http_client(run.plan.request_timeout) as client:
        for name, (_, url, auth, _) in targets.items():  # warm-up: connections, imports, caches
            headers = {"authorization": auth} if auth else {}
            await asyncio.gather(*(post_json(client, url, {"message": "warm-up"}, headers) for _ in range(4)))
        totals = {name: {"requests": 0, "errors": 0, "seconds": 0.0, "cpu_s": 0.0, "wrk_cpu_s": 0.0, "slices": [],
                         "persisted": 0, "views": []} for name in targets}
        for index in range(rounds):
            for name, (child, url, auth, count) in targets.items():
                run.progress.update(f"slice {index + 1}/{rounds}: {name}", force=True)
                rows0 = count() if count is not None else 0
                before = await server_histograms(client, child.url, run.auth) if count is not None else {}
                cpu0 = sysinfo.cpu_seconds(child.pid)
                part = await wrk_tool.slice(url, auth=auth, connections=connections, seconds=seconds,
                                            message=f"{name} slice {index}: hello")
                total = totals[name]
                total["cpu_s"] += sysinfo.cpu_seconds(child.pid) - cpu0
                if count is not None:
                    total["persisted"] += count() - rows0
                    total["views"].append(histogram_delta(before, await server_histograms(client, child.url,
                                                                                          run.auth)))
                total["requests"] += part["requests"]
                total["errors"] += part["errors"]
                total["seconds"] += part["seconds"]
                total["wrk_cpu_s"] += part["wrk_cpu_s"]
                total["slices"].append(part)
    out = {}
    for name, total in totals.items():
        answered = total["requests"] - total["errors"]
        completed = min(answered, total["persisted"]) if targets[name][3] is not None else answered
        slices = total["slices"]

        def median(key: str, slices=slices) -> float | None:
            values = sorted(part["latency_ms"][key] for part in slices)
            return values[len(values) // 2] if values else None

        out[name] = {
            "completed": completed, "answered_2xx": answered, "errors": total["errors"],
            "per_second": round(completed / total["seconds"], 2) if total["seconds"] else None,
            "seconds": round(total["seconds"], 3),
            "latency": {"p50_ms": median("p50"), "p90_ms": median("p90"), "p99_ms": median("p99"),
                        "note": "the median over slices of each slice's percentile (wrk's)"},
            "cpu_s": round(total["cpu_s"], 3),
            "cpu_ms_per_exchange": round(1000 * total["cpu_s"] / completed, 3) if completed else None,
            "wrk_cpu_s": round(total["wrk_cpu_s"], 3),
            "wrk_cpu_share": round(total["wrk_cpu_s"] / total["seconds"], 3) if total["seconds"] else None,
            "slices": slices,
        }
        if targets[name][3] is not None:
            out[name]["persisted_rows"] = total["persisted"]
            out[name]["server_view"] = total["views"]
    return out


async def run(run: Run) -> dict:
    plan = run.plan
    if wrk_tool.find() is None:
        run.progress.section("wrk", "skipped: wrk is not installed")
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    run.progress.section("wrk", f"wrk, 1 thread x {plan.wrk_connections} connections, {plan.wrk_rounds} x "
                                f"{plan.wrk_seconds:g}s slices per target, fake latency "
                                f"{plan.wrk_upstream * 1000:.0f} ms")
    stack = run.stack("wrk", FakeSpec(plan.wrk_upstream, 0.0, plan.wrk_tokens))
    assert stack.proxy is not None
    targets = {
        "server": (stack.server, f"{stack.server.url}/agent", run.auth["authorization"], lambda: persisted(stack)),
        "baseline": (stack.proxy, f"{stack.proxy.url}/agent", "", None),
    }
    try:
        with run.profiler("wrk", stack) as profile:
            measured = await alternate(run, targets, rounds=plan.wrk_rounds, connections=plan.wrk_connections,
                                       seconds=plan.wrk_seconds)
    finally:
        run.release(stack)
    spec = stack.spec
    result: dict = {"config": {"connections": plan.wrk_connections, "threads": 1, "seconds_per_slice": plan.wrk_seconds,
                               "rounds": plan.wrk_rounds, "reply_tokens": spec.n_tokens,
                               "fake_latency_ms": (spec.ttft + spec.token_delay * max(spec.n_tokens - 1, 0)) * 1000,
                               "database": stack.backend.kind},
                    **measured}
    result["ratio"] = stats.ratio(result["server"]["per_second"], result["baseline"]["per_second"])
    result["cpu_ratio"] = stats.ratio(result["server"]["cpu_ms_per_exchange"],
                                      result["baseline"]["cpu_ms_per_exchange"])
    if profile.summary is not None:
        result["profile"] = profile.summary
    return result
