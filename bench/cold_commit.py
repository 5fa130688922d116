"""What the user-turn commit costs in a busy process and in one that was idle: ``python -m bench.cold_commit``.

Runs agent_server's own opening transaction (``service._begin_reply``: a new conversation with its reply
lock and the user turn) on the event loop's kind of connection (``open_writer(on_loop=True)``), on a
migrated database, back to back and after a pause before each, and prints the median time of each step.
The benchmark's 1-stream TTFT figure sends one request at a time, so the server is idle before each: this
shows why the commit it makes before the upstream request costs several times what it costs under load.

``--turns N`` continues a stored conversation of N turns instead (``bench.seed``, 200 characters a turn):
the transaction then also checks the conversation, takes its lock and reads its whole history. The lock
is given back after each sample, outside the timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _steps(conn, begin_reply, params, reply_lock, utcnow, holder) -> dict[str, float]:
    """One opening transaction, timed step by step (seconds); a continued conversation's lock is given back."""
    marks = [("start", time.perf_counter())]
    conn.execute("BEGIN IMMEDIATE")
    marks.append(("BEGIN IMMEDIATE", time.perf_counter()))
    token = reply_lock.new_token()
    opened = begin_reply(conn, owner="bench", params=params, default_model="claude-sonnet-5-5", token=token,
                         holder=holder, now=utcnow())
    marks.append(("reads, inserts, their Python", time.perf_counter()))
    conn.execute("COMMIT")
    marks.append(("COMMIT", time.perf_counter()))
    steps = {name: end - start for (_, start), (name, end) in zip(marks, marks[1:])}
    steps["whole transaction"] = marks[-1][1] - marks[0][1]
    if params.conversation_id is not None:
        conn.execute("BEGIN IMMEDIATE")
        reply_lock.release(conn, conversation_id=opened[0], token=token, now=utcnow())
        conn.execute("COMMIT")
    return steps


def measure(samples: int, pause: float, turns: int = 0) -> dict[str, dict[str, float]]:
    from agent_server.db import reply_lock
    from agent_server.db.engine import open_writer
    from agent_server.db.models import utcnow
    from agent_server.service import ReplyParams, _begin_reply

    with tempfile.TemporaryDirectory(prefix="cold-commit-") as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'agent.db'}"
        subprocess.run([sys.executable, "-m", "agent_server", "migrate"], check=True, capture_output=True,
                       env={**os.environ, "DATABASE_URL": url})
        conversation_id = None
        if turns:
            from . import seed

            conversation_id = seed.add_conversations(Path(folder) / "agent.db", count=1, turns=turns, chars=200)[0]
        conn = open_writer(url, on_loop=True)
        holder = reply_lock.this_process()
        params = ReplyParams(message="hello", conversation_id=conversation_id)
        try:
            for _ in range(50):  # warm-up
                _steps(conn, _begin_reply, params, reply_lock, utcnow, holder)
            result = {}
            for label, wait in (("back to back", 0.0), (f"after a {pause * 1000:.0f} ms pause", pause)):
                runs = []
                for _ in range(samples):
                    if wait:
                        time.sleep(wait)
                    runs.append(_steps(conn, _begin_reply, params, reply_lock, utcnow, holder))
                result[label] = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
            return result
        finally:
            conn.close()


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
