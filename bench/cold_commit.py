"""What the user-turn commit costs in a busy process and in one that was idle: ``python -m bench.cold_commit``.

Runs agent_server's own opening transaction (``service/opening.py: open_reply``: a new conversation with its
reply lease, the reply's row, the user turn and the first call's ledger row) on the SQLite side's event-loop
connection (``db/sqlite.py``: ``BEGIN IMMEDIATE``, the statements, ``COMMIT``, as ``SqliteDatabase._run`` does), on
a migrated database, back to back and after a pause before each, and prints the median time of each step. The
benchmark's 1-stream TTFT figure sends one request at a time, so the server is idle before each: this shows why
the commit it makes before the upstream request costs several times what it costs under load.

``--turns N`` continues a stored conversation of N turns instead (``bench.seed``, 200 characters a turn): the
transaction then also locks the conversation, takes its lease and reads the last seq; since version 2 the history
itself is read after the commit, in a read transaction (``ReplyProcess._prepare``: ``reads.history`` on the reader
pool, a thread), timed as one more row. The lease is given back after each sample, outside the timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


async def _steps(db, conversation_id: str | None, holder) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One opening transaction, timed step by step (seconds); a continued conversation's lease is given back."""
    from agent_server.db import lease, reads
    from agent_server.db.models import new_id, utcnow
    from agent_server.db.sqlite import _LoopConnection
    from agent_server.engine import blocks as b
    from agent_server.service.opening import open_reply

    conn = db._loop_conn  # the connection SqliteDatabase._run writes on, on the event loop
    token = lease.new_token()
    prompt = b.encode(b.text_blocks("hello"))
    marks = [("start", time.perf_counter())]
    outer = conn.begin()  # BEGIN IMMEDIATE (the engine's "begin" listener)
    marks.append(("BEGIN IMMEDIATE", time.perf_counter()))
    writer = _LoopConnection(conn, db._direct)
    opened = await open_reply(writer, owner="bench", conversation_id=conversation_id, system=None, model=None,
                              default_model="claude-sonnet-5-5", prompt_blocks=prompt, answers=[],
                              reply_id=new_id("reply"), call_id=new_id("call"), token=token, holder=holder,
                              route="stream", now=utcnow())
    marks.append(("reads, inserts, their Python", time.perf_counter()))
    outer.commit()
    marks.append(("COMMIT", time.perf_counter()))
    steps = {name: end - start for (_, start), (name, end) in zip(marks, marks[1:])}
    steps["whole transaction"] = marks[-1][1] - marks[0][1]
    if opened.before_seq is not None:
        started = time.perf_counter()
        async with db.read() as reader:
            await reads.history(reader, conversation_id=opened.conversation_id, from_seq=opened.context_from_seq,
                                before_seq=opened.before_seq)
        steps["history read (after)"] = time.perf_counter() - started
        outer = conn.begin()
        await lease.release(writer, conversation_id=opened.conversation_id, token=token, now=utcnow())
        outer.commit()
    return steps


async def _measure(url: str, conversation_id: str | None, samples: int, pause: float) -> dict[str, dict[str, float]]:
    from agent_server.db import lease, open_database

    db = open_database(url)
    holder = lease.this_process()
    try:
        for _ in range(50):  # warm-up
            await _steps(db, conversation_id, holder)
        result = {}
        for label, wait in (("back to back", 0.0), (f"after a {pause * 1000:.0f} ms pause", pause)):
            runs = []
            for _ in range(samples):
                if wait:
                    time.sleep(wait)  # idle, as the server is between two 1-stream requests
                runs.append(await _steps(db, conversation_id, holder))
            result[label] = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
        return result
    finally:
        await db.dispose()


def measure(samples: int, pause: float, turns: int = 0) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="cold-commit-") as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'agent.db'}"
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        subprocess.run([sys.executable, "-m", "agent_server", "migrate"], check=True, capture_output=True,
                       env={**env, "DATABASE_URL": url})
        conversation_id = None
        if turns:
            from . import seed

            conversation_id = seed.add_conversations(url, [{"count": 1, "turns": turns, "chars": 200}], env=env,
                                                     cwd=Path(folder))[0][0]
        return asyncio.run(_measure(url, conversation_id, samples, pause))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_commit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds idle before each (default 0.02)")
    parser.add_argument("--turns", type=int, default=0,
                        help="continue a stored conversation of this many turns (default 0: a new conversation)")
    args = parser.parse_args(argv)
    result = measure(args.samples, args.pause, args.turns)
    labels = list(result)
    print(f"{'median, µs':28s}" + "".join(f"{label:>24s}" for label in labels))
    for step in result[labels[0]]:
        print(f"{step:28s}" + "".join(f"{result[label][step] * 1e6:24.0f}" for label in labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
