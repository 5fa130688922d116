"""``python -m bench``: benchmark agent_server against a baseline proxy and the fake upstream, in one run.

Writes the JSON result to --out, prints a table on stdout and progress on stderr. Exit status: 0 when every
section ran (targets missed included), 1 when a section failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from agent_server.fake_upstream.replies import TTFT_CLOCKS

from . import report, sysinfo
from .procs import REPO_ROOT, Processes
from .progress import Progress
from .runner import Run, run_sections
from .scenarios import backends, caching, fanout, history, resume, throughput, tools, ttft, wrk, ws

SECTIONS = {"ttft": ttft.run, "throughput": throughput.run, "fanout": fanout.run, "ws": ws.run,
            "history": history.run, "tools": tools.run, "wrk": wrk.run,
            "resume": resume.run, "caching": caching.run, "backends": backends.run}

# name: (full run, --quick, type, help). Explicit flags win over both.
KNOBS: dict[str, tuple] = {
    "ttft_upstream": (0.02, 0.02, float, "ttft: the fake's own time to first token, seconds"),
    "ttft_tokens": (5, 3, int, "ttft: tokens per reply"),
    "ttft_token_delay": (0.005, 0.002, float, "ttft: the fake's delay between tokens, seconds; at 0 the rest of "
                                              "the reply, and storing it, competes with the client's read of "
                                              "the first token for the shared cores"),
    "ttft_fake_clock": ("accepted", "accepted", str, "ttft: when the fake's time to first token starts: "
                                                     "'accepted' (like a real model) or 'head-sent' (after its "
                                                     "response head, as the harness did before)"),
    "ttft_samples": (500, 8, int, "ttft: measured rounds at 1 stream (one request per target per round)"),
    "ttft_streams": (64, 8, int, "ttft: the high concurrency level"),
    "ttft_rounds": (12, 2, int, "ttft: measured rounds at the high level (each: that many streams per target)"),
    "ttft_warmup": (3, 1, int, "ttft: unmeasured rounds first, per level"),
    "ttft_client": ("raw", "raw", str, "ttft: SSE client, 'raw' (bench/rawsse.py, a connection per request) or "
                                       "'httpx' (pooled; its CPU cost saturates the client at 64 streams)"),
    "tp_clients": (32, 8, int, "throughput: concurrent clients"),
    "tp_seconds": (10.0, 1.0, float, "throughput: seconds per slice (slices alternate server, baseline)"),
    "tp_rounds": (2, 1, int, "throughput: slices per target"),
    "tp_max": (200_000, 2_000, int, "throughput: at most this many requests per slice"),
    "tp_upstream": (0.0, 0.0, float, "throughput: the fake's latency for a whole reply, seconds"),
    "tp_tokens": (20, 5, int, "throughput: tokens per reply"),
    "wrk_connections": (32, 8, int, "wrk: keep-alive connections of wrk's one thread"),
    "wrk_seconds": (10.0, 1.0, float, "wrk: seconds per slice, whole (slices alternate server, baseline)"),
    "wrk_rounds": (2, 1, int, "wrk: slices per target"),
    "wrk_upstream": (0.0, 0.0, float, "wrk: the fake's latency for a whole reply, seconds"),
    "wrk_tokens": (20, 5, int, "wrk: tokens per reply"),
    "fanout_streams": (200, 10, int, "fanout: concurrent SSE streams per wave"),
    "fanout_tokens": (200, 10, int, "fanout: tokens per stream"),
    "fanout_delay": (0.01, 0.005, float, "fanout: the fake's delay between tokens, seconds"),
    "fanout_rounds": (2, 1, int, "fanout: waves per target (waves alternate server, baseline, direct)"),
    "ws_idle": (1000, 30, int, "ws: idle sessions opened per target"),
    "ws_active": (200, 10, int, "ws: sessions that each send one message per round"),
    "ws_rounds": (2, 1, int, "ws: active rounds per target (alternating)"),
    "ws_tokens": (20, 5, int, "ws: tokens per reply"),
    "ws_delay": (0.005, 0.002, float, "ws: the fake's delay between tokens, seconds"),
    "ws_compression": ("deflate", "deflate", str, "ws: client permessage-deflate ('deflate' like browsers, or 'none')"),
    "history_sizes": ("10,100,1000", "10,100,1000", str, "history: stored turns per conversation, comma-separated"),
    "history_samples": (30, 3, int, "history: replies measured per size"),
    "history_filler": (100_000, 2_000, int, "history: other turns in the big database"),
    "history_chars": (200, 200, int, "history: characters per seeded turn"),
    "history_upstream": (0.0, 0.0, float, "history: the fake's latency for a whole reply, seconds"),
    "history_tokens": (20, 5, int, "history: tokens per reply"),
    "history_prompt_cache": ("off", "off", str, "history: the servers' AGENT_PROMPT_CACHE ('off': the fake's model "
                                                "of the cache, ~5 ms of its CPU per 1,000-message request with "
                                                "breakpoints, stays out of agent_server's latency; '5m' or '1h')"),
    "tools_steps": (5, 5, int, "tools: steps per reply (that many upstream calls: steps - 1 no-op tool calls, "
                               "then the text)"),
    "tools_samples": (200, 6, int, "tools: measured rounds at 1 reply (one reply per target per round)"),
    "tools_concurrency": (16, 4, int, "tools: the concurrent level (replies at once per target)"),
    "tools_rounds": (20, 2, int, "tools: measured rounds at the concurrent level"),
    "tools_warmup": (3, 1, int, "tools: unmeasured rounds first, per level"),
    "tools_upstream": (0.005, 0.002, float, "tools: the fake's time to first token of each step's call, seconds"),
    "tools_token_delay": (0.0, 0.0, float, "tools: the fake's delay between tokens, seconds"),
    "tools_tokens": (20, 5, int, "tools: tokens of the final text"),
    "tools_tool": ("async", "async", str, "tools: agent_server's no-op, 'async' (on the loop, like the SDK "
                                          "runner's) or 'sync' (a plain function: agent_server runs it in a thread)"),
    "resume_tokens": (2000, 300, int, "resume: tokens of each finished reply that is replayed"),
    "resume_replies": (5, 2, int, "resume: finished replies made (and replayed in turn)"),
    "resume_samples": (20, 3, int, "resume: measured replay rounds (each: one replay, one live stream, one direct)"),
    "resume_reconnects": (10, 2, int, "resume: reconnects to a running reply"),
    "resume_live_tokens": (400, 100, int, "resume: tokens of the running reply that is reconnected to"),
    "resume_token_delay": (0.005, 0.002, float, "resume: the fake's delay between that reply's tokens, seconds"),
    "resume_read_before": (50, 20, int, "resume: events read before the client drops the connection"),
    "caching_turns": (30, 6, int, "caching: exchanges of the conversation (each: a user message and its reply)"),
    "caching_turn_tokens": (2000, 2000, int, "caching: tokens of each user message (about 4 characters a token)"),
    "caching_reply_tokens": (20, 5, int, "caching: tokens of each reply"),
    "caching_window_turns": (300, 20, int, "caching: exchanges of the conversation that outgrows the window"),
    "caching_window_turn_tokens": (2000, 500, int, "caching: tokens of each of its user messages"),
    "caching_window": (20000, 4000, int, "caching: that model's context window, tokens (server and fake)"),
    "backends_ttft_samples": (200, 6, int, "backends: measured rounds at 1 stream (one request per target per round)"),
    "backends_ttft_rounds": (8, 1, int, "backends: measured rounds at --ttft-streams streams"),
    "backends_workers": (2, 2, int, "backends: the second worker count of the throughput phase (beside 1)"),
    "client_loop": ("uvloop", "uvloop", str, "the load generator's event loop, 'uvloop' (like the servers') or "
                                             "'asyncio'; at 1 stream it decides how the client's and the "
                                             "server's wake-ups interleave on 2 cores (see README, Performance)"),
    "request_timeout": (60.0, 30.0, float, "seconds before any one request, stream or session gives up"),
    "section_timeout": (900.0, 120.0, float, "seconds before a whole section is abandoned"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.fill("Sections: " + ", ".join(SECTIONS) + ". See bench/__init__.py for what each measures, and "
               "bench/report.py for the targets. With --quick ttft, throughput, fanout, ws and wrk share one set of "
               "processes whose fake answers with a 10 ms TTFT, 2 ms between tokens and 5 tokens, so those "
               "sections' fake settings (--*-upstream, --*-tokens, --*-delay) do not apply; the other sections "
               "start their own. wrk and backends need wrk (/usr/bin/wrk), backends and --database postgres "
               "PostgreSQL's initdb/postgres: a section without them reports itself skipped. "
               "Examples: python -m bench --rev HEAD --only ttft,throughput --workers 2; "
               "python -m bench --only tools,wrk,resume,caching; python -m bench --only backends; "
               "python -m bench --database postgres --only ttft,wrk,history", width=100),
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny counts, a few seconds per section (CI)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers, server and baseline alike (default 1)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite",
                        help="the database of every section's agent-servers: SQLite files in the work folder "
                             "(default), or databases of a throwaway PostgreSQL cluster the run starts on 127.0.0.1 "
                             "(bench/postgres.py; the backends section always measures both)")
    parser.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a PostgreSQL setting for that cluster (repeatable; default synchronous_commit=off, "
                             "see bench/postgres.py)")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "latest.json"),
                        help="where to write the JSON result (default bench/results/latest.json)")
    parser.add_argument("--workdir", default=None, help="databases and process logs (default: a temporary folder)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the work folder (logs, databases)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="record py-spy profiles of the server and the baseline during ttft, throughput and "
                             "fanout into DIR (collapsed stacks + a summary in the JSON; perturbs the figures, so "
                             "profile in a separate run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    parser.add_argument("--rev", default=None,
                        help="benchmark agent_server as of this git revision (extracted with git archive into the "
                             "work folder and put first on the children's PYTHONPATH), so that edits made to the "
                             "working tree during a run cannot mix revisions; default: the working tree as it is")
    parser.add_argument("--ttft-against", metavar="REV", default=None,
                        help="ttft: also measure agent_server as of this git revision, as a fourth target in the "
                             "same interleaved rounds (an A/B of two revisions within one run)")
    for name, (full, quick, kind, text) in KNOBS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"{text} (default {full}; --quick {quick})")
    return parser


def resolve(args: argparse.Namespace) -> SimpleNamespace:
    plan = SimpleNamespace(**vars(args))
    for name, (full, quick, _, _) in KNOBS.items():
        if getattr(args, name) is None:
            setattr(plan, name, quick if args.quick else full)
    plan.history_sizes = sorted({int(x) for x in str(plan.history_sizes).split(",") if x.strip()})
    plan.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in plan.only if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"python -m bench: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if plan.ttft_client not in ("raw", "httpx"):
        raise SystemExit("python -m bench: --ttft-client must be 'raw' or 'httpx'")
    if plan.ttft_fake_clock not in TTFT_CLOCKS:
        raise SystemExit(f"python -m bench: --ttft-fake-clock must be one of {', '.join(TTFT_CLOCKS)}")
    if plan.history_prompt_cache not in ("off", "5m", "1h"):
        raise SystemExit("python -m bench: --history-prompt-cache must be 'off', '5m' or '1h'")
    if plan.tools_tool not in ("async", "sync"):
        raise SystemExit("python -m bench: --tools-tool must be 'async' or 'sync'")
    if plan.client_loop not in ("uvloop", "asyncio"):
        raise SystemExit("python -m bench: --client-loop must be 'uvloop' or 'asyncio'")
    if plan.ws_compression not in ("deflate", "none"):
        raise SystemExit("python -m bench: --ws-compression must be 'deflate' or 'none'")
    return plan


def raise_fd_limit() -> tuple[int, int]:
    """Thousands of sockets: lift the soft limit on open files to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def extract_revision(rev: str, into: Path) -> str:
    """``git archive`` of ``rev`` unpacked into ``into`` (read-only for the repository); returns the commit id."""
    sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True, timeout=30)
    if sha.returncode != 0:
        raise SystemExit(f"python -m bench: unknown revision {rev!r}: {sha.stderr.strip()}")
    commit = sha.stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", commit],
                             capture_output=True, timeout=120, check=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "agent_server"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{rev}{'+dirty' if dirty else ''}" or None
    except (OSError, subprocess.SubprocessError):
        return None


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        try:
            import uvloop  # the servers run on uvloop too (uvicorn's default when installed)

            return uvloop.new_event_loop
        except ImportError:
            pass
    return asyncio.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = resolve(args)
    fd_limit = raise_fd_limit()
    # SIGINT (even when a non-interactive shell started us with it ignored) and SIGTERM end the run like
    # Ctrl-C: KeyboardInterrupt unwinds through the finally blocks that stop every child process.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(plan.workdir or tempfile.mkdtemp(prefix="agent-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    progress = Progress(enabled=not plan.no_progress)
    started = time.time()
    revision = _git_revision()
    if plan.rev:
        source = workdir / "src"
        revision = extract_revision(plan.rev, source)[:12]
        # Every child (servers, fake, migrations) inherits this: agent_server is imported from the snapshot.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))
    plan.ttft_against_source = None
    if plan.ttft_against:
        # Only the extra ttft server imports this snapshot (its PYTHONPATH puts it first).
        plan.ttft_against_commit = extract_revision(plan.ttft_against, workdir / "against-src")[:12]
        plan.ttft_against_source = str(workdir / "against-src")
    meta = {
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "git_revision": revision, "source": "git archive" if plan.rev else "working tree",
        "ttft_against": getattr(plan, "ttft_against_commit", None),
        "machine": sysinfo.machine(), "fd_limit": list(fd_limit),
        "workers": plan.workers, "quick": plan.quick, "workdir": str(workdir),
        "client_loop": "uvloop" if _loop_factory(plan.client_loop).__module__.startswith("uvloop") else "asyncio",
        "database": plan.database,
        "plan": {k: v for k, v in vars(plan).items() if k in KNOBS or k in ("only", "workers", "quick", "database",
                                                                              "pg_setting")},
    }
    progress.note(f"sections {', '.join(plan.only)}; work folder {workdir}")
    ok, interrupted, sections = False, False, {}
    try:
        with Processes(workdir) as procs:
            run = Run(plan=plan, procs=procs, progress=progress, workdir=workdir)
            with asyncio.Runner(loop_factory=_loop_factory(plan.client_loop)) as runner:
                sections, ok = runner.run(run_sections(run, {name: SECTIONS[name] for name in plan.only}))
    except KeyboardInterrupt:
        interrupted = True
        progress.note("interrupted: child processes stopped")
    finally:
        if not plan.keep_workdir and not plan.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    meta["duration_s"] = round(time.time() - started, 1)
    meta["loadavg_at_end"] = sysinfo.loadavg()
    result = {"meta": meta, "sections": sections}
    result["targets"] = report.targets(sections)
    out = Path(plan.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(report.readme_table(result) + "\n")  # the README's table (bench.report)
    print(report.table(result))
    print(f"\nresult: {out} (README table: {out.with_suffix('.md').name})  ({meta['duration_s']} s, "
          f"{meta['machine']['nproc']} CPUs: {meta['machine']['cpu_model']})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
