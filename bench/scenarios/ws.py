"""WebSocket sessions: resident memory per idle session, then replies/s and latency of active sessions.

Both servers get ``ws_idle`` sessions (each waits for its ``session`` frame); the growth of the server's
process-tree RSS divided by the count is the memory per session. Then ``ws_active`` of those sessions each
send one message at once and wait for ``done``; rounds alternate server, baseline, server...
"""

from __future__ import annotations

import asyncio
import time

from .. import stats, sysinfo
from ..client import histogram_delta, http_client, post_json, server_histograms, ws_open, ws_reply
from ..runner import FakeSpec, Run

MIB = 1024 * 1024


async def _open_many(run: Run, url: str, headers: dict, n: int, *, compression: str | None, timeout: float,
                     batch: int = 50) -> tuple[list, list[str]]:
    conns, errors = [], []
    for start in range(0, n, batch):
        results = await asyncio.gather(
            *(ws_open(url, headers, compression=compression, timeout=timeout) for _ in range(min(batch, n - start))),
            return_exceptions=True,
        )
        for item in results:
            if isinstance(item, BaseException):
                errors.append(f"{type(item).__name__}: {item}"[:200])
            else:
                conns.append(item)
        run.progress.update(f"{url.split('/')[2]}: {len(conns)}/{n} sessions open")
    return conns, errors


async def _close_all(conns: list) -> None:
    async def close(conn):
        try:
            async with asyncio.timeout(5):
                await conn.close()
        except Exception:
            pass

    for start in range(0, len(conns), 200):
        await asyncio.gather(*(close(c) for c in conns[start:start + 200]))


async def _warm_up(client, agent_url: str, ws_url: str, headers: dict, compression, timeout: float) -> None:
    """Serve a few sessions and replies first, so that one-time allocations are not charged to the sessions."""
    conns = [await ws_open(ws_url, headers, compression=compression, timeout=timeout) for _ in range(10)]
    await asyncio.gather(*(ws_reply(c, "warm-up", timeout=timeout) for c in conns))
    await _close_all(conns)
    await asyncio.gather(*(post_json(client, agent_url, {"message": "warm-up"}, headers) for _ in range(5)))
    await asyncio.sleep(0.5)


async def run(run: Run) -> dict:
    plan = run.plan
    compression = None if plan.ws_compression == "none" else plan.ws_compression
    run.progress.section("ws", f"{plan.ws_idle} idle sessions per target (compression {plan.ws_compression}), "
                               f"then {plan.ws_active} active x {plan.ws_rounds} round(s)")
    stack = run.stack("ws", FakeSpec(0.0, plan.ws_delay, plan.ws_tokens))
    children = {"server": stack.server, "baseline": stack.proxy}
    headers = {"server": run.auth, "baseline": {}}
    sessions: dict[str, list] = {}
    result: dict = {"config": {"idle_sessions": plan.ws_idle, "active_sessions": plan.ws_active,
                               "rounds": plan.ws_rounds, "reply_tokens": stack.spec.n_tokens,
                               "token_delay_ms": stack.spec.token_delay * 1000, "compression": plan.ws_compression}}
    try:
        async with http_client(plan.request_timeout) as client:
            for name, child in children.items():
                url = child.url.replace("http://", "ws://") + "/agent/ws"
                await _warm_up(client, f"{child.url}/agent", url, headers[name], compression, plan.request_timeout)
                rss0 = sysinfo.rss_bytes(child.pid)
                sessions[name], errors = await _open_many(run, url, headers[name], plan.ws_idle,
                                                          compression=compression, timeout=plan.request_timeout)
                await asyncio.sleep(1.0)  # let the server settle (tasks started, buffers allocated)
                rss1 = sysinfo.rss_bytes(child.pid)
                opened = len(sessions[name])
                result[name] = {
                    "idle_sessions": opened,
                    "open_errors": len(errors),
                    "first_errors": errors[:3],
                    "rss_before_mib": round(rss0 / MIB, 2),
                    "rss_after_mib": round(rss1 / MIB, 2),
                    "extra_mib": round((rss1 - rss0) / MIB, 2),
                    "rss_per_session_kib": round((rss1 - rss0) / 1024 / opened, 2) if opened else None,
                    "extra_mib_per_1000": round((rss1 - rss0) / MIB * 1000 / opened, 2) if opened else None,
                }
            latencies: dict[str, list[float]] = {name: [] for name in children}
            errors_by: dict[str, list[str]] = {name: [] for name in children}
            seconds = {name: 0.0 for name in children}
            views = []
            for index in range(plan.ws_rounds):
                for name in children:
                    active = sessions[name][: plan.ws_active]
                    if name == "server":
                        before = await server_histograms(client, children[name].url, run.auth)
                    started = time.perf_counter()
                    replies = await asyncio.gather(
                        *(ws_reply(conn, f"round {index}: hello", timeout=plan.request_timeout) for conn in active)
                    )
                    seconds[name] += time.perf_counter() - started
                    if name == "server":
                        after = await server_histograms(client, children[name].url, run.auth)
                        views.append(histogram_delta(before, after))
                    for reply in replies:
                        if reply.ok:
                            latencies[name].append(reply.latency)
                        else:
                            errors_by[name].append(reply.error)
                    run.progress.update(f"active round {index + 1}/{plan.ws_rounds}: {name} done")
            for name in children:
                ok = len(latencies[name])
                result[name].update({
                    "replies": ok,
                    "reply_errors": len(errors_by[name]),
                    "first_reply_errors": errors_by[name][:3],
                    "replies_per_s": round(ok / seconds[name], 2) if seconds[name] else None,
                    "latency": stats.latency_summary(latencies[name]),
                })
            result["server"]["server_view"] = views
    finally:
        for conns in sessions.values():
            await _close_all(conns)
        run.release(stack)
    return result
