"""History growth: POST /agent latency on conversations of 10, 100 and 1,000 stored turns, and on a
10-turn conversation in a database that also holds 100k other turns.

Three agent-servers run at once, each on its own database seeded (``seed``: agent_server's own statements, in a
child process) before it starts:
``history`` (conversations of every size), ``tiny`` (only 10-turn conversations) and ``big`` (the same plus
the filler turns). The baseline proxy holds the same histories in memory. Every sample continues a fresh
conversation of its size (so a sample never sees the turns an earlier one added), and the cases are
interleaved sample by sample. Database bytes per turn are read from the checkpointed files (``dbs``).

The servers run with ``AGENT_PROMPT_CACHE=off`` (``--history-prompt-cache``): with breakpoints in a request, the fake
models the prompt cache by hashing every prefix of it, ~5 ms of its own CPU for a 1,000-message request, which
would land in agent_server's reply latency and never in the baseline's (it sends no breakpoints).
"""

from __future__ import annotations

from .. import procs as p
from .. import seed, stats
from ..client import histogram_delta, http_client, post_json, server_histograms
from ..runner import FakeSpec, Run

FILLER_TURNS_PER_CONVERSATION = 100


def _seed_databases(run: Run, sizes: list[int], count: int) -> dict[str, dict[int, list[str]]]:
    """Migrate the three databases, then write their conversations (``seed``: in a child process that imports the
    agent_server under test)."""
    plan = run.plan
    names = ("history", "tiny", "big")
    urls = {name: run.db.create(name) for name in names}
    p.migrate(list(urls.values()), run.workdir)
    env = p.clean_env()
    filler = max(plan.history_filler // FILLER_TURNS_PER_CONVERSATION, 0)
    jobs = {
        "history": [{"count": count, "turns": size, "chars": plan.history_chars} for size in sizes],
        "tiny": [{"count": count, "turns": 10, "chars": plan.history_chars}],
        "big": [{"count": count, "turns": 10, "chars": plan.history_chars}]
        + ([{"count": filler, "turns": FILLER_TURNS_PER_CONVERSATION, "chars": plan.history_chars}] if filler else []),
    }
    ids: dict[str, dict[int, list[str]]] = {name: {} for name in names}
    for name in names:
        made = seed.add_conversations(urls[name], jobs[name], env=env, cwd=run.workdir)
        if name == "history":
            ids[name] = dict(zip(sizes, made))
        else:
            ids[name][10] = made[0]
    return ids


async def _seed_proxy(client, url: str, sizes: list[int], count: int, chars: int) -> dict[int, list[str]]:
    ids: dict[int, list[str]] = {}
    for size in sizes:
        body = {"messages": seed.messages(size, chars)}
        results = [await post_json(client, f"{url}/_bench/seed", body, {}) for _ in range(count)]
        if not all(r.ok for r in results):
            raise RuntimeError(f"seeding the baseline proxy failed: {results[0].error}")
        ids[size] = [r.data["conversation_id"] for r in results]
    return ids


async def run(run: Run) -> dict:
    plan = run.plan
    sizes = sorted(plan.history_sizes)
    count = plan.history_samples + 1  # the first conversation of each case is the warm-up
    run.progress.section("history", f"sizes {sizes}, {plan.history_samples} samples each, "
                                    f"{plan.history_filler} filler turns, ~{plan.history_chars} chars a turn")
    run.progress.note(f"seeding {run.db.kind} databases")
    ids = _seed_databases(run, sizes, count)  # blocking on purpose: nothing else runs yet
    before = {name: run.db.storage(name) for name in ids}
    stack = run.stack("history", FakeSpec(plan.history_upstream, 0.0, plan.history_tokens), databases=list(ids),
                      fresh=False, env={"AGENT_PROMPT_CACHE": plan.history_prompt_cache})
    try:
        async with http_client(plan.request_timeout) as client:
            proxy_ids = await _seed_proxy(client, stack.proxy.url, sizes, count, plan.history_chars)
            cases = [(f"server:{size}", stack.servers["history"].url, run.auth, ids["history"][size])
                     for size in sizes]
            cases += [("server_tiny_db:10", stack.servers["tiny"].url, run.auth, ids["tiny"][10]),
                      ("server_big_db:10", stack.servers["big"].url, run.auth, ids["big"][10])]
            cases += [(f"baseline:{size}", stack.proxy.url, {}, proxy_ids[size]) for size in sizes]
            scrape = {name: stack.servers[name].url for name in ids}
            views = {name: await server_histograms(client, url, run.auth) for name, url in scrape.items()}
            latencies: dict[str, list[float]] = {case[0]: [] for case in cases}
            errors: dict[str, list[str]] = {case[0]: [] for case in cases}
            for index in range(count):
                for key, url, headers, conversation_ids in cases:
                    body = {"message": f"sample {index}: and now?", "conversation_id": conversation_ids[index]}
                    result = await post_json(client, f"{url}/agent", body, headers)
                    if index == 0:
                        continue
                    if result.ok:
                        latencies[key].append(result.latency)
                    else:
                        errors[key].append(result.error)
                run.progress.update(f"sample {index}/{count - 1}")
            views = {name: histogram_delta(views[name], await server_histograms(client, url, run.auth))
                     for name, url in scrape.items()}
    finally:
        run.release(stack)
    after = {name: run.db.storage(name) for name in ids}
    summary = {key: {**stats.latency_summary(values), "errors": len(errors[key]), "first_errors": errors[key][:2]}
               for key, values in latencies.items()}
    small, large = str(sizes[0]), str(sizes[-1])
    server = {str(size): summary[f"server:{size}"] for size in sizes}
    baseline = {str(size): summary[f"baseline:{size}"] for size in sizes}
    for block in (server, baseline):
        block[f"added_{large}_vs_{small}_p50_ms"] = stats.diff(block[large]["p50_ms"], block[small]["p50_ms"])
        block[f"added_{large}_vs_{small}_p99_ms"] = stats.diff(block[large]["p99_ms"], block[small]["p99_ms"])
    server["db_size"] = {
        "tiny_db_turns": before["tiny"]["turns"], "big_db_turns": before["big"]["turns"],
        "10_in_tiny_db": summary["server_tiny_db:10"], "10_in_big_db": summary["server_big_db:10"],
        "added_big_vs_tiny_p50_ms": stats.diff(summary["server_big_db:10"]["p50_ms"],
                                               summary["server_tiny_db:10"]["p50_ms"]),
        "added_big_vs_tiny_p99_ms": stats.diff(summary["server_big_db:10"]["p99_ms"],
                                               summary["server_tiny_db:10"]["p99_ms"]),
    }
    grown_bytes = sum(after[n]["bytes"] - before[n]["bytes"] for n in ids)
    grown_turns = sum(after[n]["turns"] - before[n]["turns"] for n in ids)
    grown_chars = sum(after[n]["content_chars"] - before[n]["content_chars"] for n in ids)
    big = after["big"]
    server["storage"] = {
        "db_bytes_per_turn": round(big["bytes"] / big["turns"], 1) if big["turns"] else None,
        "content_chars_per_turn": round(big["content_chars"] / big["turns"], 1) if big["turns"] else None,
        "big_db": big,
        "server_written_turns": grown_turns,
        "server_written_bytes_per_turn": round(grown_bytes / grown_turns, 1) if grown_turns else None,
        "server_written_chars_per_turn": round(grown_chars / grown_turns, 1) if grown_turns else None,
        "database": run.db.kind,
        "note": "db_bytes_per_turn: the big database's size (SQLite: the checkpointed file; PostgreSQL: its "
                "tables with indexes and TOAST) / its turns (each exchange also has its replies and requests "
                "rows; seeded replies have no reply_events); server_written_*: growth of all three databases "
                "during the run / turns the servers added (page-granular; their reply_events included)",
    }
    server["server_view"] = views
    baseline["storage"] = {"db_bytes_per_turn": None, "note": "the baseline keeps conversations in memory only"}
    return {"config": {"sizes": sizes, "samples": plan.history_samples, "filler_turns": plan.history_filler,
                       "prompt_cache": plan.history_prompt_cache,
                       "chars_per_seeded_turn": plan.history_chars, "fake_latency_ms": plan.history_upstream * 1000,
                       "reply_tokens": plan.history_tokens},
            "server": server, "baseline": baseline}
