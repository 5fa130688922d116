"""TTFT overhead: time to the first token through agent-server and through the baseline proxy, minus the
fake upstream's own time to first token measured by the same client, at 1 and at N concurrent streams.

A round sends ``streams`` simultaneous requests to one target and waits for all of them to finish; rounds
go server, baseline, direct, server, baseline, direct... so the machine's noise is shared by all three.
Overhead is reported per percentile: p50(target) - p50(direct), p99(target) - p99(direct).

``--ttft-client raw`` (the default) reads the streams with ``rawsse``, one connection per request: at 64
concurrent streams httpx's connection pool and h11 parser cost the client ~15 ms of CPU per request on a
2-core machine, and the client's own queueing then dominated every target (the fake's 20 ms TTFT read as
~600 ms). ``--ttft-client httpx`` keeps httpx (pooled keep-alive connections) for comparison.

The fake's time to first token runs from when it accepted the request (``--ttft-fake-clock accepted``), like
a real model's; and its tokens come ``--ttft-token-delay`` apart (5 ms), not all at once. Both matter on 2
shared cores. Started after the fake's response head, its clock counted the time the target spent handling
that head while holding the fake's core (each target's ``fake.head_ms``: ~0.4 ms for agent_server, which
sends ``start`` then, ~0.05 ms for the baseline). With the whole reply arriving with its first token, storing
the reply competed with the client's read of that token. ``--ttft-fake-clock head-sent --ttft-token-delay 0``
measures the way this harness did before. Each target's ``fake`` entry is what the fake saw of its streams.

``--ttft-against REV`` adds agent_server as of another revision (target ``against``, its own database) to
the same rounds: the two revisions then share every moment of the machine's noise, which full runs minutes
apart do not.
"""

from __future__ import annotations

import asyncio
import os

from .. import procs as p
from .. import stats, sysinfo
from .. import rawsse
from ..client import Target, direct_body, histogram_delta, http_client, server_histograms, sse_stream
from ..runner import FakeSpec, Run

ORDER = ("server", "baseline", "direct")
AGAINST = "against"


def _body(target: Target) -> dict:
    if target.name == "direct":
        return direct_body("hello", 64, stream=True)
    return {"message": "hello", "max_tokens": 64}


async def _level(run: Run, client, targets: dict[str, Target], *, streams: int, rounds: int, warmup: int,
                 tokens: int, fake_url: str, order: list[str] | None = None) -> dict:
    """One concurrency level, the targets interleaved round by round (``order``: default server, baseline, direct
    and against; the ``backends`` section passes its own, which must hold ``direct`` and ``baseline``)."""
    order = order or [name for name in (*ORDER, AGAINST) if name in targets]
    await client.post(f"{fake_url}/_fake/reset")  # its stream records become this level's, in order
    ttfts: dict[str, list[float]] = {name: [] for name in order}
    by_round: dict[str, list[list[float]]] = {name: [] for name in order}  # the same samples, round by round
    errors: dict[str, list[str]] = {name: [] for name in order}
    client_cpu = {name: 0.0 for name in order}
    for index in range(warmup + rounds):
        for name in order:
            target = targets[name]
            body = _body(target)
            own0 = sysinfo.own_cpu_seconds()
            if run.plan.ttft_client == "raw":
                streams_done = (rawsse.sse_stream(target, body, timeout=run.plan.request_timeout, expect_tokens=tokens)
                                for _ in range(streams))
            else:
                streams_done = (sse_stream(client, target, body, expect_tokens=tokens) for _ in range(streams))
            results = await asyncio.gather(*streams_done)
            if index < warmup:
                continue
            client_cpu[name] += sysinfo.own_cpu_seconds() - own0
            by_round[name].append([])
            for result in results:
                if result.ok and result.ttft is not None:
                    ttfts[name].append(result.ttft)
                    by_round[name][-1].append(result.ttft)
                else:
                    errors[name].append(result.error or "no token")
        run.progress.update(f"{streams} stream(s): round {index + 1}/{warmup + rounds}")
    out: dict[str, dict] = {}
    fake_views = fake_view((await client.get(f"{fake_url}/_fake/streams")).json()["streams"], order,
                           streams=streams, warmup=warmup, rounds=rounds)
    direct = stats.latency_summary(ttfts["direct"])
    for name in order:
        summary = stats.latency_summary(ttfts[name])
        per_request = round(1000 * client_cpu[name] / summary["n"], 3) if summary["n"] else None
        entry = {"ttft": summary, "errors": len(errors[name]), "first_errors": errors[name][:3],
                 "client_cpu_ms_per_request": per_request, "fake": fake_views.get(name)}
        if name != "direct":
            entry["overhead_p50_ms"] = stats.diff(summary["p50_ms"], direct["p50_ms"])
            entry["overhead_p99_ms"] = stats.diff(summary["p99_ms"], direct["p99_ms"])
        out[name] = entry
    for name in order:
        if name not in ("baseline", "direct", AGAINST):
            out[name]["vs_baseline"] = compare(by_round, name, "baseline")
    if AGAINST in out:
        out[AGAINST]["vs_server"] = compare(by_round, AGAINST, "server")
    return out


def fake_view(records: list[dict], order: list[str], *, streams: int, warmup: int, rounds: int) -> dict:
    """What the fake upstream saw of each target's measured streams: how long its response head took to send
    and when its first delta went out, in ms from accepting the reply, p50 and p99.

    The fake records streams in the order it accepted them, and rounds run one target at a time, so record
    ``i`` belongs to round ``i // (streams * targets)`` and target ``order[i // streams % targets]``. When a
    request never reached the fake (an error) that attribution is lost: no view then.
    """
    if len(records) != (warmup + rounds) * len(order) * streams:
        return {}
    picked: dict[str, dict[str, list[float]]] = {name: {"head_ms": [], "first_delta_ms": []} for name in order}
    for index, record in enumerate(records):
        if index // (streams * len(order)) < warmup:
            continue
        for key, values in picked[order[index // streams % len(order)]].items():
            if record.get(key) is not None:
                values.append(record[key])
    return {name: {key: {"p50": _round(stats.percentile(values, 50)), "p99": _round(stats.percentile(values, 99))}
                   for key, values in view.items()} for name, view in picked.items()}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def compare(rounds: dict[str, list[list[float]]], target: str, other: str) -> dict:
    """``target``'s overhead against ``other``'s, p50 and p99: difference and ratio, each with a 95% bootstrap
    interval over the rounds (how far the comparison would move on a rerun; see ``stats.bootstrap_intervals``).

    The difference of two overheads is the difference of the two TTFTs (the direct TTFT cancels out); the
    ratio, which the 64-stream target is stated in, needs the direct one.
    """
    def overhead(pooled: dict[str, list[float]], name: str, q: int) -> float:
        return stats.percentile(pooled[name], q) - stats.percentile(pooled["direct"], q)

    def ratio(q: int):
        def statistic(pooled: dict[str, list[float]]) -> float | None:
            base = overhead(pooled, other, q)
            return overhead(pooled, target, q) / base if base > 0 else None
        return statistic

    def difference(q: int):
        return lambda pooled: 1000 * (stats.percentile(pooled[target], q) - stats.percentile(pooled[other], q))

    picked = {name: rounds[name] for name in (target, other, "direct")}
    statistics = {f"{kind}_{q}": (difference if kind == "diff" else ratio)(q) for kind in ("diff", "ratio")
                  for q in (50, 99)}
    intervals = stats.bootstrap_intervals(picked, statistics)
    pooled = {name: [x for samples in per_round for x in samples] for name, per_round in picked.items()}
    result: dict = {"confidence": 0.95, "resampled_rounds": len(rounds[target])}
    for q in (50, 99):
        whole = {name: stats.percentile(values, q) for name, values in pooled.items()}
        result[f"p{q}"] = {
            "overhead_diff_ms": None if None in whole.values() else round(1000 * (whole[target] - whole[other]), 3),
            "overhead_diff_ci_ms": _rounded(intervals[f"diff_{q}"]),
            "overhead_ratio": _round(ratio(q)(pooled)) if all(pooled.values()) else None,
            "overhead_ratio_ci": _rounded(intervals[f"ratio_{q}"]),
        }
    return result


def _rounded(interval: tuple[float, float] | None) -> list[float | None] | None:
    return None if interval is None else [_round(bound) for bound in interval]


async def run(run: Run) -> dict:
    plan = run.plan
    run.progress.section("ttft", f"1 stream x {plan.ttft_samples} rounds, {plan.ttft_streams} streams x "
                                 f"{plan.ttft_rounds} rounds, targets interleaved")
    stack = run.stack("ttft", FakeSpec(plan.ttft_upstream, plan.ttft_token_delay, plan.ttft_tokens,
                                       plan.ttft_fake_clock))
    spec = stack.spec
    run.progress.note(f"fake TTFT {spec.ttft * 1000:.0f} ms from {spec.ttft_from}, {spec.n_tokens} tokens a reply "
                      f"{spec.token_delay * 1000:g} ms apart")
    against = None
    try:
        targets = run.stream_targets(stack)
        if plan.ttft_against_source:
            against = _start_against(run, stack)
            targets[AGAINST] = Target(AGAINST, f"{against.url}/agent/stream", run.auth)
        levels = {}
        async with http_client(plan.request_timeout) as client:
            with run.profiler("ttft", stack) as profile:
                for streams, rounds in ((1, plan.ttft_samples), (plan.ttft_streams, plan.ttft_rounds)):
                    before = await server_histograms(client, stack.server.url, run.auth)
                    levels[str(streams)] = await _level(run, client, targets, streams=streams, rounds=rounds,
                                                        warmup=plan.ttft_warmup, tokens=spec.n_tokens,
                                                        fake_url=stack.fake.url)
                    after = await server_histograms(client, stack.server.url, run.auth)
                    levels[str(streams)]["server"]["server_view"] = histogram_delta(before, after)
    finally:
        if against is not None:
            run.procs.stop(against)
        run.release(stack)
    result = {
        "config": {"fake_ttft_ms": spec.ttft * 1000, "fake_ttft_from": spec.ttft_from,
                   "fake_token_delay_ms": spec.token_delay * 1000,
                   "tokens": spec.n_tokens, "client": plan.ttft_client,
                   "levels": {"1": plan.ttft_samples, str(plan.ttft_streams): plan.ttft_rounds},
                   "note": "levels maps concurrent streams to measured rounds (each round = that many streams "
                           "per target); overhead = percentile(target) - percentile(direct)"},
    }
    for name in ORDER:
        result[name] = {level: data[name] for level, data in levels.items()}
    if against is not None:
        result[AGAINST] = {level: data[AGAINST] for level, data in levels.items()}
        result["config"]["against_revision"] = plan.ttft_against_commit
    if profile.summary is not None:
        result["profile"] = profile.summary
    return result


def _start_against(run: Run, stack) -> p.Child:
    """agent-server from the ``--ttft-against`` snapshot, on the section's fake, with a database of its own."""
    env = p.server_env(fake_url=stack.fake.url, database_url=run.database_url("ttft-against"), secret=run.secret,
                       upstream_key=run.upstream_key)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [run.plan.ttft_against_source, env.get("PYTHONPATH")]))
    child = p.start_server(run.procs, "ttft-against-server", env=env, workers=run.plan.workers)
    try:
        run.procs.wait_ready(child)
    except BaseException:
        run.procs.stop(child)
        raise
    return child
