"""Context and cost: what prompt caching saves on a long conversation, what it costs in latency, and a
conversation longer than the model's context window.

- Caching: one conversation of ``caching_turns`` exchanges, each user message ``caching_turn_tokens`` tokens (the
  fake counts about four characters a token), through two agent-servers on the same fake: ``AGENT_PROMPT_CACHE=off``
  and ``5m``, exchange by exchange alternately (the two conversations' texts differ, so they share no cache entry).
  The input cost of each, from its ledger (``GET /conversations/{id}``: every call's uncached input, cache writes
  and cache reads at the model's prices), and caching's as a share of no caching's; the ledger's whole cost
  (``totals.cost_usd``, output included) beside it. Reply latency, off vs on, per exchange: p50/p99 of each and the
  p50 of the paired differences with a 95% bootstrap interval over the exchanges (the "on" side includes the
  fake's own model of the cache, which hashes every prefix of a request with breakpoints: ~5 ms of its CPU per
  1,000 blocks, well under 1 ms at 60 messages).
- Window: a conversation of ``caching_window_turns`` exchanges of ``caching_window_turn_tokens`` tokens on a model
  whose window is ``caching_window`` tokens (``AGENT_PRICES_FILE`` for the server, ``POST /_fake/models`` for the
  fake, which refuses a longer prompt as the API does). agent_server keeps answering by leaving older history
  out: its reply latency before and after the window filled, the turns sent and left out at the end, and the
  upstream's refusals (``prompt is too long``, which the server retries once with less). The baseline proxy, which
  sends the whole history, gets the same conversation until its first failure.

Prices (``bench-cache-model``, ``bench-small-window`` in the prices file this section writes): USD 3 / 15 per
million input / output tokens, cache writes 3.75 (5m) and 6 (1h), reads 0.30.
"""

from __future__ import annotations

import json

from .. import stats
from ..client import http_client, post_json
from ..runner import FakeSpec, Run

MODEL = "bench-cache-model"
SMALL = "bench-small-window"
PRICES = {"input": 3, "output": 15, "cache_write_5m": 3.75, "cache_write_1h": 6, "cache_read": 0.3}


def prices_file(run: Run) -> str:
    path = run.workdir / "bench-prices.json"
    entry = {**{k: str(v) for k, v in PRICES.items()}, "source": "bench/scenarios/caching.py", "as_of": "bench"}
    path.write_text(json.dumps({"models": {
        MODEL: entry, SMALL: {**entry, "context_window": run.plan.caching_window},
    }}, indent=1))
    return str(path)


def message(tag: str, index: int, tokens: int) -> str:
    """About ``tokens`` tokens of text (4 characters each), different for each tag and exchange."""
    head = f"{tag} exchange {index}: "
    words = (f"w{tag}{index}x{i}" for i in range(10**9))
    body: list[str] = []
    size = len(head)
    for word in words:
        if size >= tokens * 4:
            break
        body.append(word)
        size += len(word) + 1
    return head + " ".join(body)


def input_cost(calls: list[dict]) -> float:
    """USD of the input side of ``calls`` (the audit's ``requests``): uncached input, cache writes, cache reads."""
    micro = 0.0
    for call in calls:
        split = call.get("cache_creation") or {}
        write_1h = split.get("ephemeral_1h_input_tokens") or 0
        write_5m = split.get("ephemeral_5m_input_tokens")
        if write_5m is None:
            write_5m = max((call.get("cache_creation_input_tokens") or 0) - write_1h, 0)
        read = call.get("cache_read_input_tokens") or 0
        micro += ((call.get("input_tokens") or 0) * PRICES["input"] + write_5m * PRICES["cache_write_5m"]
                  + write_1h * PRICES["cache_write_1h"] + read * PRICES["cache_read"])
    return micro / 1e6


def _ledger(audit: dict) -> dict:
    calls = audit.get("requests") or []
    totals = audit.get("totals") or {}
    return {"calls": len(calls), "input_cost_usd": round(input_cost(calls), 6), "cost_usd": totals.get("cost_usd"),
            "input_tokens": sum(c.get("input_tokens") or 0 for c in calls),
            "cache_write_tokens": sum(c.get("cache_creation_input_tokens") or 0 for c in calls),
            "cache_read_tokens": sum(c.get("cache_read_input_tokens") or 0 for c in calls)}


async def _caching(run: Run, client, stack) -> dict:
    plan = run.plan
    urls = {name: stack.servers[name].url for name in ("cache_off", "cache_5m")}
    conversation: dict[str, str | None] = {name: None for name in urls}
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    errors: dict[str, list[str]] = {name: [] for name in urls}
    for index in range(plan.caching_turns):
        for name, url in urls.items():
            body = {"message": message(name, index, plan.caching_turn_tokens), "model": MODEL}
            if conversation[name]:
                body["conversation_id"] = conversation[name]
            result = await post_json(client, f"{url}/agent", body, run.auth)
            if result.ok:
                conversation[name] = result.data["conversation_id"]
                latencies[name].append(result.latency)
            else:
                errors[name].append(result.error)
                latencies[name].append(float("nan"))
        run.progress.update(f"caching: exchange {index + 1}/{plan.caching_turns}")
    ledgers = {}
    for name, url in urls.items():
        if conversation[name] is None:
            raise RuntimeError(f"{name}: no exchange succeeded: {errors[name][:1]}")
        response = await client.get(f"{url}/conversations/{conversation[name]}", headers=run.auth)
        response.raise_for_status()
        ledgers[name] = _ledger(response.json())
    paired = [(off, on) for off, on in zip(latencies["cache_off"], latencies["cache_5m"]) if off == off and on == on]
    rounds = {"off": [[off] for off, _ in paired[1:]], "on": [[on] for _, on in paired[1:]]}  # 1st: no cache yet
    interval = stats.bootstrap_intervals(rounds, {"diff": lambda pooled: 1000 * (
        stats.percentile(pooled["on"], 50) - stats.percentile(pooled["off"], 50))}) if len(paired) > 2 else {}
    out = {}
    for name in urls:
        out[name] = {**ledgers[name], "reply": stats.latency_summary([x for x in latencies[name] if x == x]),
                     "errors": len(errors[name]), "first_errors": errors[name][:3]}
    off, on = out["cache_off"], out["cache_5m"]
    out["input_cost_share"] = stats.ratio(on["input_cost_usd"], off["input_cost_usd"])
    out["cost_share"] = stats.ratio(on["cost_usd"], off["cost_usd"])
    out["latency_on_minus_off_p50_ms"] = stats.ms(stats.percentile([b - a for a, b in paired[1:]], 50))
    out["latency_on_minus_off_p50_ci_ms"] = [round(x, 3) for x in interval["diff"]] if interval.get("diff") else None
    return out


async def _window(run: Run, client, stack) -> dict:
    plan = run.plan
    await client.post(f"{stack.fake.url}/_fake/models", json={SMALL: {"context_window": plan.caching_window}})

    async def violations() -> list[dict]:
        return (await client.get(f"{stack.fake.url}/_fake/violations")).json()["violations"]

    refused: list[dict] = []  # the fake's refusals of the server's requests (the baseline's are not counted)
    server_url, proxy_url = stack.servers["cache_5m"].url, stack.proxy.url
    conversation: dict[str, str | None] = {"server": None, "baseline": None}
    samples: list[dict] = []
    errors: list[str] = []
    baseline_failed_at, baseline_error, baseline_latency = None, None, []
    for index in range(plan.caching_window_turns):
        text = message("window", index, plan.caching_window_turn_tokens)
        body = {"message": text, "model": SMALL, **({"conversation_id": conversation["server"]}
                                                   if conversation["server"] else {})}
        seen = len(await violations())
        result = await post_json(client, f"{server_url}/agent", body, run.auth)
        refused += (await violations())[seen:]
        if result.ok:
            conversation["server"] = result.data["conversation_id"]
            context = result.data.get("context") or {}
            samples.append({"latency": result.latency, "sent": context.get("turns_sent"),
                            "omitted": context.get("turns_omitted")})
        else:
            errors.append(f"exchange {index}: {result.error}")
        if baseline_failed_at is None:
            body = {"message": text, "model": SMALL, **({"conversation_id": conversation["baseline"]}
                                                       if conversation["baseline"] else {})}
            answer = await post_json(client, f"{proxy_url}/agent", body, {})
            if answer.ok:
                conversation["baseline"] = answer.data["conversation_id"]
                baseline_latency.append(answer.latency)
            else:
                baseline_failed_at, baseline_error = index + 1, answer.error
        run.progress.update(f"window: exchange {index + 1}/{plan.caching_window_turns}")
    full = next((i for i, s in enumerate(samples) if s["omitted"]), None)
    before = [s["latency"] for s in (samples if full is None else samples[:full])]
    after = [] if full is None else [s["latency"] for s in samples[full:]]
    last = samples[-1] if samples else {}
    return {
        "server": {"exchanges": len(samples), "errors": len(errors), "first_errors": errors[:3],
                   "reply": stats.latency_summary([s["latency"] for s in samples]),
                   "reply_before_full": stats.latency_summary(before), "reply_after_full": stats.latency_summary(after),
                   "window_full_at_exchange": None if full is None else full + 1,
                   "last_turns_sent": last.get("sent"), "last_turns_omitted": last.get("omitted"),
                   "too_long_refusals": sum("too long" in v.get("message", "") for v in refused),
                   "upstream_refusals": len(refused)},
        "baseline": {"exchanges": len(baseline_latency), "failed_at_exchange": baseline_failed_at,
                     "error": baseline_error, "reply": stats.latency_summary(baseline_latency)},
    }


async def run(run: Run) -> dict:
    plan = run.plan
    run.progress.section("caching", f"{plan.caching_turns} exchanges of {plan.caching_turn_tokens} tokens, cache off "
                                    f"vs 5m; {plan.caching_window_turns} exchanges in a {plan.caching_window}-token "
                                    "window")
    prices = prices_file(run)
    env = {"AGENT_PRICES_FILE": prices, "AGENT_MAX_MESSAGE_CHARS": "1000000", "AGENT_MAX_BODY_BYTES": "4194304",
           "cache_off": {"AGENT_PROMPT_CACHE": "off"}, "cache_5m": {"AGENT_PROMPT_CACHE": "5m"}}
    stack = run.stack("caching", FakeSpec(0.0, 0.0, plan.caching_reply_tokens), ["cache_off", "cache_5m"], env=env)
    try:
        async with http_client(plan.request_timeout) as client:
            caching = await _caching(run, client, stack)
            window = await _window(run, client, stack)
    finally:
        run.release(stack)
    return {
        "config": {"exchanges": plan.caching_turns, "turn_tokens": plan.caching_turn_tokens,
                   "reply_tokens": plan.caching_reply_tokens, "window_exchanges": plan.caching_window_turns,
                   "window_turn_tokens": plan.caching_window_turn_tokens, "context_window": plan.caching_window,
                   "prices_per_million": PRICES, "database": stack.backend.kind},
        "caching": caching, "window": window,
    }
