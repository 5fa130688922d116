"""What the user-turn commit costs in a busy process and in one that was idle: ``python -m bench.cold_commit``.

Runs agent_server's own opening transaction (``service._begin_reply``: a new conversation with its reply
lock and the user turn) on the event loop's kind of connection (``open_writer(on_loop=True)``), on a
migrated database, back to back and after a pause before each, and prints the median time of each step.
The benchmark's 1-stream TTFT figure sends one request at a time, so the server is idle before each: this
shows why the commit it makes before the upstream request costs several times what it costs under load.
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
    """One opening transaction, timed step by step (seconds)."""
    marks = [("start", time.perf_counter())]
    conn.execute("BEGIN IMMEDIATE")
    marks.append(("BEGIN IMMEDIATE", time.perf_counter()))
    begin_reply(conn, owner="bench", params=params, default_model="claude-sonnet-5-5",
                token=reply_lock.new_token(), holder=holder, now=utcnow())
    marks.append(("inserts and their Python", time.perf_counter()))
    conn.execute("COMMIT")
    marks.append(("COMMIT", time.perf_counter()))
    steps = {name: end - start for (_, start), (name, end) in zip(marks, marks[1:])}
    steps["whole transaction"] = marks[-1][1] - marks[0][1]
    return steps


def measure(samples: int, pause: float) -> dict[str, dict[str, float]]:
    from agent_server.db import reply_lock
    from agent_server.db.engine import open_writer
    from agent_server.db.models import utcnow
    from agent_server.service import ReplyParams, _begin_reply

    with tempfile.TemporaryDirectory(prefix="cold-commit-") as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'agent.db'}"
        subprocess.run([sys.executable, "-m", "agent_server", "migrate"], check=True, capture_output=True,
                       env={**os.environ, "DATABASE_URL": url})
        conn = open_writer(url, on_loop=True)
        holder, params = reply_lock.this_process(), ReplyParams(message="hello")
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
    args = parser.parse_args(argv)
    result = measure(args.samples, args.pause)
    labels = list(result)
    print(f"{'median, µs':28s}" + "".join(f"{label:>24s}" for label in labels))
    for step in result[labels[0]]:
        print(f"{step:28s}" + "".join(f"{result[label][step] * 1e6:24.0f}" for label in labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
