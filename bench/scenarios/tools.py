"""The agent: a reply of ``tools_steps`` steps (``tools_steps - 1`` calls of a no-op tool, then the text) through
agent_server, beside the same reply through the anthropic SDK's own tool runner (``client.beta.messages.tool_runner``
with a no-op ``@beta_async_tool``, in memory, no persistence: ``POST /agent/tools`` of the baseline proxy), on the
same fake upstream (``bench.fake_agent``: the model asks for the tool until the reply has made its calls).

agent_server runs the tool from ``bench/tools_noop.toml`` (``AGENT_TOOLS_FILE``) and stores every step: the call's
ledger row, the assistant message, the tool run and its result, the events. Its added time per step is its reply
time minus the SDK runner's, divided by the number of steps, per percentile (p50 - p50, p99 - p99), with a 95%
bootstrap interval over the rounds like the ttft section's. A round sends ``n`` replies at once to one target and
waits for all of them; rounds alternate server, baseline, server... at 1 and at ``tools_concurrency`` replies.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from .. import stats
from ..client import histogram_delta, http_client, post_json, server_histograms
from ..procs import REPO_ROOT
from ..runner import FakeSpec, Run

ORDER = ("server", "baseline")
TOOL_FILE = REPO_ROOT / "bench" / "tools_noop.toml"


def server_pythonpath(run: Run) -> str:
    """The server's PYTHONPATH with this harness's root last, so that it can import ``bench.tools_noop``; with
    ``--rev`` the snapshot (first) gets this harness's tool if it has none: the tool is part of the apparatus."""
    if run.plan.rev:
        snapshot = run.workdir / "src" / "bench" / "tools_noop.py"
        if snapshot.parent.is_dir() and not snapshot.exists():
            shutil.copyfile(REPO_ROOT / "bench" / "tools_noop.py", snapshot)
    return os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO_ROOT)]))


def tools_file(run: Run) -> Path:
    """The tools file the server gets: ``bench/tools_noop.toml``, or a copy naming the sync no-op."""
    if run.plan.tools_tool == "async":
        return TOOL_FILE
    path = run.workdir / "tools_noop_sync.toml"
    path.write_text(TOOL_FILE.read_text().replace("bench.tools_noop:noop", "bench.tools_noop:noop_sync"))
    return path


def _check(name: str, data: dict | None, steps: int) -> str | None:
    """Why a finished reply is not the one asked for (None when it is)."""
    if not data:
        return "no body"
    if data.get("steps") != steps:
        return f"{name}: {data.get('steps')} steps, expected {steps}"
    if name == "server" and len(data.get("tool_calls") or []) != steps - 1:
        return f"server: {len(data.get('tool_calls') or [])} tool calls, expected {steps - 1}"
    return None


async def _level(run: Run, client, urls: dict, *, concurrency: int, rounds: int, warmup: int, steps: int) -> dict:
    by_round: dict[str, list[list[float]]] = {name: [] for name in ORDER}
    errors: dict[str, list[str]] = {name: [] for name in ORDER}
    for index in range(warmup + rounds):
        for name in ORDER:
            url, headers = urls[name]
            body = {"message": f"round {index}: use the tool, then answer"}
            results = await asyncio.gather(*(post_json(client, url, body, headers) for _ in range(concurrency)))
            if index < warmup:
                continue
            by_round[name].append([])
            for result in results:
                problem = result.error if not result.ok else _check(name, result.data, steps)
                if problem is None:
                    by_round[name][-1].append(result.latency)
                else:
                    errors[name].append(problem)
        run.progress.update(f"{concurrency} concurrent: round {index + 1}/{warmup + rounds}")
    out: dict = {}
    for name in ORDER:
        samples = [x for per_round in by_round[name] for x in per_round]
        out[name] = {"reply": stats.latency_summary(samples), "errors": len(errors[name]),
                     "first_errors": errors[name][:3]}
    out["server"]["vs_baseline"] = _compare(by_round, steps)
    for q in ("p50", "p99"):
        added = stats.diff(out["server"]["reply"][f"{q}_ms"], out["baseline"]["reply"][f"{q}_ms"])
        out["server"][f"added_per_step_{q}_ms"] = None if added is None else round(added / steps, 3)
    return out


def _compare(rounds: dict[str, list[list[float]]], steps: int) -> dict:
    """Per percentile: (server - baseline) / steps in ms, with its 95% bootstrap interval over the rounds."""
    def statistic(q: int):
        def per_step(pooled: dict[str, list[float]]) -> float:
            return 1000 * (stats.percentile(pooled["server"], q) - stats.percentile(pooled["baseline"], q)) / steps
        return per_step

    usable = all(all(per_round) for per_round in rounds.values()) and rounds["server"]
    intervals = stats.bootstrap_intervals(rounds, {f"p{q}": statistic(q) for q in (50, 99)}) if usable else {}
    return {"confidence": 0.95, "resampled_rounds": len(rounds["server"]),
            **{f"added_per_step_p{q}_ci_ms": None if not intervals.get(f"p{q}") else
               [round(bound, 3) for bound in intervals[f"p{q}"]] for q in (50, 99)}}


async def run(run: Run) -> dict:
    plan = run.plan
    steps = plan.tools_steps
    levels = [1, plan.tools_concurrency] if plan.tools_concurrency > 1 else [1]
    run.progress.section("tools", f"{steps}-step replies ({steps - 1} no-op tool calls), {plan.tools_samples} rounds "
                                  f"at 1, {plan.tools_rounds} rounds at {plan.tools_concurrency} concurrent")
    spec = FakeSpec(plan.tools_upstream, plan.tools_token_delay, plan.tools_tokens)
    env = {"AGENT_TOOLS_FILE": str(tools_file(run)), "PYTHONPATH": server_pythonpath(run),
           "AGENT_MAX_TOOL_STEPS": str(max(steps, 10))}
    stack = run.stack("tools", spec, env=env,
                      fake_module="bench.fake_agent", fake_args=("--tool-steps", steps - 1, "--tool-name", "noop"))
    assert stack.proxy is not None
    urls = {"server": (f"{stack.server.url}/agent", run.auth), "baseline": (f"{stack.proxy.url}/agent/tools", {})}
    tool = "bench.tools_noop:" + ("noop" if plan.tools_tool == "async" else "noop_sync")
    result: dict = {"config": {"steps": steps, "tool": tool,
                               "fake_ttft_ms": spec.ttft * 1000, "fake_token_delay_ms": spec.token_delay * 1000,
                               "final_tokens": spec.n_tokens,
                               "levels": {"1": plan.tools_samples, str(plan.tools_concurrency): plan.tools_rounds},
                               "note": "levels maps concurrent replies to measured rounds; baseline = the SDK's "
                                       "tool runner (stream=True, thread=False) in the baseline proxy"},
              "server": {}, "baseline": {}}
    try:
        async with http_client(plan.request_timeout) as client:
            with run.profiler("tools", stack) as profile:
                for concurrency in levels:
                    rounds = plan.tools_samples if concurrency == 1 else plan.tools_rounds
                    before = await server_histograms(client, stack.server.url, run.auth)
                    level = await _level(run, client, urls, concurrency=concurrency, rounds=rounds,
                                         warmup=plan.tools_warmup, steps=steps)
                    level["server"]["server_view"] = histogram_delta(
                        before, await server_histograms(client, stack.server.url, run.auth))
                    for name in ORDER:
                        result[name][str(concurrency)] = level[name]
    finally:
        run.release(stack)
    if profile.summary is not None:
        result["profile"] = profile.summary
    return result
