"""Streaming fan-out: N concurrent SSE streams of M tokens, the fake pausing ``fanout_delay`` between tokens.

Per target: tokens delivered per second (all streams' tokens over the wave's wall time), CPU seconds per
1,000 tokens of the target's process tree, and the added inter-token delay: every client-observed gap
between two tokens of a stream minus the fake's configured delay. Waves go server, baseline, direct, ...
``direct`` is the fake itself: the floor that the client, the fake and the machine impose. The streams are
read with ``rawsse`` (httpx's parser would make the load generator the bottleneck; see that module).
"""

from __future__ import annotations

import asyncio
import time

from .. import stats, sysinfo
from ..client import direct_body, histogram_delta, http_client, server_histograms
from ..rawsse import sse_stream
from ..runner import FakeSpec, Run

ORDER = ("server", "baseline", "direct")


async def _wave(run: Run, target, body: dict, *, streams: int, tokens: int) -> dict:
    done = 0

    async def one():
        nonlocal done
        result = await sse_stream(target, body, timeout=run.plan.request_timeout, gaps=True, expect_tokens=tokens)
        done += 1
        run.progress.update(f"{target.name}: {done}/{streams} streams finished")
        return result

    started = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(streams)))
    return {"seconds": time.perf_counter() - started, "results": results}


async def run(run: Run) -> dict:
    plan = run.plan
    run.progress.section("fanout", f"{plan.fanout_streams} streams x {plan.fanout_tokens} tokens, "
                                   f"{plan.fanout_delay * 1000:.0f} ms apart, {plan.fanout_rounds} wave(s) per target")
    stack = run.stack("fanout", FakeSpec(0.01, plan.fanout_delay, plan.fanout_tokens))
    spec = stack.spec
    targets = run.stream_targets(stack)
    pids = {"server": stack.server.pid, "baseline": stack.proxy.pid, "direct": stack.fake.pid}
    totals = {name: {"seconds": 0.0, "tokens": 0, "gaps": [], "errors": [], "cpu_s": 0.0, "fake_cpu_s": 0.0,
                     "client_cpu_s": 0.0, "streams_ok": 0} for name in ORDER}
    bodies = {"server": {"message": "fan out"}, "baseline": {"message": "fan out"},
              "direct": direct_body("fan out", stream=True)}
    try:
        async with http_client(plan.request_timeout) as client:
            for name in ORDER:  # warm-up
                await asyncio.gather(*(sse_stream(targets[name], bodies[name], timeout=plan.request_timeout)
                                       for _ in range(4)))
            with run.profiler("fanout", stack) as profile:
                for _ in range(plan.fanout_rounds):
                    for name in ORDER:
                        if name == "server":
                            before = await server_histograms(client, stack.server.url, run.auth)
                        cpu0, fake0 = sysinfo.cpu_seconds(pids[name]), sysinfo.cpu_seconds(stack.fake.pid)
                        own0 = sysinfo.own_cpu_seconds()
                        wave = await _wave(run, targets[name], bodies[name], streams=plan.fanout_streams,
                                           tokens=spec.n_tokens)
                        total = totals[name]
                        total["cpu_s"] += sysinfo.cpu_seconds(pids[name]) - cpu0
                        if name == "server":
                            view = histogram_delta(before, await server_histograms(client, stack.server.url, run.auth))
                            total.setdefault("views", []).append(view)
                        total["fake_cpu_s"] += sysinfo.cpu_seconds(stack.fake.pid) - fake0
                        total["client_cpu_s"] += sysinfo.own_cpu_seconds() - own0
                        total["seconds"] += wave["seconds"]
                        for result in wave["results"]:
                            total["tokens"] += result.tokens
                            total["gaps"] += result.gaps
                            total["streams_ok"] += result.ok
                            if not result.ok:
                                total["errors"].append(result.error)
    finally:
        run.release(stack)
    delay = spec.token_delay
    result: dict = {"config": {"streams": plan.fanout_streams, "tokens_per_stream": spec.n_tokens,
                               "token_delay_ms": delay * 1000, "waves_per_target": plan.fanout_rounds,
                               "ideal_tokens_per_s": round(plan.fanout_streams / delay, 1) if delay else None}}
    for name, total in totals.items():
        added = [gap - delay for gap in total["gaps"]]
        tokens = total["tokens"]
        result[name] = {
            "tokens": tokens,
            "streams_ok": total["streams_ok"],
            "errors": len(total["errors"]),
            "first_errors": total["errors"][:3],
            "seconds": round(total["seconds"], 3),
            "tokens_per_s": round(tokens / total["seconds"], 1) if total["seconds"] else None,
            "cpu_s": round(total["cpu_s"], 3),
            "cpu_s_per_1k_tokens": round(1000 * total["cpu_s"] / tokens, 4) if tokens else None,
            "added_gap_p50_ms": stats.ms(stats.percentile(added, 50)),
            "added_gap_p99_ms": stats.ms(stats.percentile(added, 99)),
            "added_gap_max_ms": stats.ms(max(added)) if added else None,
            "fake_cpu_s": round(total["fake_cpu_s"], 3),
            "client_cpu_s": round(total["client_cpu_s"], 3),
        }
    result["server"]["server_view"] = totals["server"].get("views", [])
    result["direct"]["note"] = "the fake upstream itself: cpu_s is the fake's; the floor of client + fake"
    if profile.summary is not None:
        result["profile"] = profile.summary
    return result
