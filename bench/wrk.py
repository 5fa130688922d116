"""The load generator for persisted throughput: ``wrk`` (Debian's ``wrk`` package, C and LuaJIT), one thread and
N keep-alive connections, with ``bench/wrk_post.lua`` writing each request's body (a new conversation each).

Why wrk: the asyncio client of the throughput section (httpx, h11) spends about as much CPU per request as the
servers do, on the same two cores, so at 32 clients it is part of what it measures; wrk's cost per request is a
few microseconds. ``slice`` runs wrk once and returns its counts, latency percentiles and its own CPU time.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
from pathlib import Path

from .procs import REPO_ROOT, clean_env

SCRIPT = REPO_ROOT / "bench" / "wrk_post.lua"


def find() -> str | None:
    return shutil.which("wrk") or (str(Path("/usr/bin/wrk")) if Path("/usr/bin/wrk").exists() else None)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def slice(url: str, *, auth: str, connections: int, seconds: float, threads: int = 1,
                message: str = "wrk says hello", timeout: float = 30) -> dict:
    """One wrk run against ``url``: requests, errors, latency (ms) and wrk's CPU seconds."""
    binary = find()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    env = clean_env(BENCH_AUTH=auth, BENCH_MESSAGE=message)
    argv = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(round(seconds), 1)}s", f"--timeout={timeout:g}s",
            "--latency", "-s", str(SCRIPT), url]
    cpu0 = _children_cpu()
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), seconds + timeout + 30)
    cpu = _children_cpu() - cpu0
    text = out.decode(errors="replace")
    line = next((line for line in text.splitlines() if line.startswith("BENCH-RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode(errors='replace')[-1000:]}{text[-1000:]}")
    data = json.loads(line.removeprefix("BENCH-RESULT "))
    errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return {
        "requests": data["requests"], "seconds": data["duration_us"] / 1e6, "errors": errors,
        "status_errors": data["status_errors"], "socket_errors": errors - data["status_errors"],
        "latency_ms": {q: round(data[f"{q}_us"] / 1000, 3) for q in ("p50", "p90", "p99", "max")},
        "wrk_cpu_s": round(cpu, 3), "argv": " ".join(os.path.basename(a) if a == binary else a for a in argv[:-1]),
    }
