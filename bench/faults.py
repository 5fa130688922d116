"""``python -m bench.faults --minutes 10``: a mixed fault run against ``agent-server serve --workers 2``.

It checks the statement: "a 10-minute mixed fault run (disk fills and frees, upstream garbage, slowloris, frame
flood, kill -9 of a worker) ends with every acknowledged turn stored, every upstream call in the ledger, every
conversation usable and another tenant's p99 latency within 2x of its quiet value."

Processes, all on 127.0.0.1: the fake upstream with per-request garbage (``bench/faults_upstream.py``),
``agent-server serve --workers 2`` on a SQLite file in a small tmpfs this run mounts (root only) and always
unmounts, the quiet tenant's load (``--role bob``, its own process so that the fault generators' CPU does not
delay its clock) and the hostile clients (``--role hostile``: slowloris and a WebSocket frame flood).

1. quiet: bob alone — ``POST /agent`` on a few conversations (one every ``--bob-interval`` s) and ``GET /healthz``
   (one every ``--health-interval`` s); their latencies are the baseline.
2. faults (``--minutes``): bob goes on, measured the same way, while alice (the victim) talks on several
   conversations over ``POST /agent``, ``/agent/stream`` and ``/agent/ws``, a fraction of her messages carrying a
   garbage marker the fake answers with garbage; the tmpfs is filled to ENOSPC, held, freed, again; 200 slowloris
   sockets and a few WebSocket sessions flooding 1-byte malformed frames; a worker is killed with SIGKILL every
   couple of minutes (uvicorn's supervisor starts a new one).
3. verify, once every fault stopped and ``/readyz`` answers 200 again: every acknowledged turn (a 200 ``POST
   /agent``'s ``turn_id``, a ``done`` event's or frame's) is in its conversation's audit; every attempt the fake
   received is in the ledger (its request id is a row's ``upstream_request_id``, or it is an earlier attempt of a
   row that counts several ``attempts``, or the call of a row whose process was killed before it learned the id —
   matched by the message's nonce); every conversation of both keys answers one more ``POST /agent`` with 200;
   bob's p99 during the faults within ``--p99-limit`` times its quiet p99, for ``POST /agent`` and ``/healthz``,
   judged outside the windows of the faults that hit every tenant alike (the disk full, a killed worker until its
   replacement serves, each plus a second): isolation is what shields bob from alice's garbage, slowloris and the
   flood, and no isolation shields him from a full disk. His figures over the whole fault phase are reported too.

Writes the JSON result to ``--out`` (default ``bench/results/faults-<UTC time>.json``), prints a summary with
PASS/FAIL per criterion; exit status 1 when a criterion fails, 2 when the run could not be made, 130 when
interrupted. The work folder (logs, the fake's and the server's) is kept when a criterion fails or with
``--keep-workdir``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import sysinfo
from .procs import REPO_ROOT, Child, Processes, clean_env, free_port
from .stats import latency_summary, ratio

UPSTREAM_KEY = "sk-fault-run-upstream-key"
NONCE = re.compile(r"\[m:([A-Za-z0-9_-]+)\]")
RESULTS = REPO_ROOT / "bench" / "results"
# Faults of bench/faults_upstream.py the victim's messages carry (a fraction of them, chosen at random).
GARBAGE = ("usage_negative", "usage_string", "usage_huge", "gzip_garbage", "text_plain", "json_not_sse",
           "unknown_event", "error_event", "overloaded_event_once", "drop_stream", "end_early", "status_500_once",
           "status_500", "status_529", "status_400", "hang")


def log(text: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _loop_factory():  # type: ignore[no-untyped-def]
    try:
        import uvloop  # the servers run on uvloop too

        return uvloop.new_event_loop
    except ImportError:
        return asyncio.new_event_loop


# -- the plan -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the fault phase (default 10)")
    parser.add_argument("--quiet-seconds", type=float, default=None,
                        help="length of the quiet phase (default: a tenth of the fault phase, 10 to 60 s)")
    parser.add_argument("--out", default=None, help="the JSON result (default bench/results/faults-<time>.json)")
    parser.add_argument("--workdir", default=None, help="logs and the tmpfs mount point (default: a temporary one)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the work folder even when all passes")
    parser.add_argument("--tmpfs-mib", type=int, default=64, help="size of the database's tmpfs (default 64)")
    parser.add_argument("--p99-limit", type=float, default=2.0, help="bob's fault p99 / quiet p99 allowed (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    # bob, the quiet tenant
    parser.add_argument("--bob-lanes", type=int, default=4, help="bob's conversations in parallel (default 4)")
    parser.add_argument("--bob-interval", type=float, default=0.2, help="seconds between bob's POSTs (default 0.2)")
    parser.add_argument("--health-interval", type=float, default=0.1, help="seconds between GET /healthz (0.1)")
    parser.add_argument("--rotate-turns", type=int, default=20,
                        help="messages per conversation before a lane starts a new one (default 20): histories "
                             "stay as short in the fault phase as in the quiet one")
    # alice, the victim
    parser.add_argument("--alice-lanes", type=int, default=4, help="alice's conversations in parallel (default 4)")
    parser.add_argument("--alice-think", type=float, default=0.4, help="alice's pause between messages, s (0.4)")
    parser.add_argument("--garbage-fraction", type=float, default=0.3,
                        help="fraction of alice's messages the fake answers with garbage (default 0.3)")
    parser.add_argument("--long-fraction", type=float, default=0.2,
                        help="fraction of alice's other messages answered slowly (40 tokens over 4 s), so that "
                             "a kill finds replies in flight (default 0.2)")
    # the other faults
    parser.add_argument("--fill-hold", type=float, default=None, help="seconds the disk stays full (default 15, "
                                                                       "less in short runs)")
    parser.add_argument("--fill-gap", type=float, default=None, help="seconds between fills (default 25)")
    parser.add_argument("--kill-every", type=float, default=120.0, help="seconds between worker kills (default 120; "
                                                                         "at least one kill per run)")
    parser.add_argument("--slowloris", type=int, default=200, help="slowloris sockets (default 200, at most 500)")
    parser.add_argument("--flood-sessions", type=int, default=4, help="WebSocket flood sessions (default 4, max 20)")
    parser.add_argument("--attacker-nice", type=int, default=10,
                        help="niceness of the fault generators (alice's client, slowloris, the flood) during the "
                             "faults (default 10): on one machine their own CPU would otherwise be counted against "
                             "the server; 0 to run them at bob's priority")
    parser.add_argument("--settle-timeout", type=float, default=120.0,
                        help="seconds to wait for the server to be ready again after the faults (default 120)")
    # the fake's replies
    parser.add_argument("--n-tokens", type=int, default=8, help="tokens per fake reply (default 8)")
    parser.add_argument("--ttft", type=float, default=0.02, help="the fake's time to first token, s (0.02)")
    parser.add_argument("--token-delay", type=float, default=0.01, help="the fake's delay between tokens, s (0.01)")
    parser.add_argument("--upstream-timeout", type=float, default=10.0,
                        help="AGENT_UPSTREAM_TIMEOUT_SECONDS: how long a hanging upstream is waited for (10)")
    # internal: the helper processes
    parser.add_argument("--role", choices=("bob", "hostile"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--role-config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--role-out", default=None, help=argparse.SUPPRESS)
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    duration = args.minutes * 60
    if duration <= 0:
        raise SystemExit("python -m bench.faults: --minutes must be positive")
    if args.quiet_seconds is None:
        args.quiet_seconds = min(60.0, max(10.0, duration / 10))
    if args.fill_hold is None:
        args.fill_hold = min(15.0, max(2.0, duration / 8))
    if args.fill_gap is None:
        args.fill_gap = min(25.0, max(2.0, duration / 8))
    args.slowloris = max(0, min(args.slowloris, 500))
    args.flood_sessions = max(0, min(args.flood_sessions, 20))
    args.alice_lanes = max(1, min(args.alice_lanes, 32))
    args.bob_lanes = max(1, min(args.bob_lanes, 16))
    args.duration = duration
    args.kills = max(1, round(duration / args.kill_every))
    return args


# -- small HTTP helpers ---------------------------------------------------------------------------------------


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def new_nonce() -> str:
    return secrets.token_hex(8)


def error_type(response) -> str:  # type: ignore[no-untyped-def]
    try:
        return str(response.json()["error"]["type"])
    except Exception:
        return "?"


def outcome_of_exception(exc: BaseException) -> str:
    import httpx

    if isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException)):
        return "client_timeout"
    return f"connection_error:{type(exc).__name__}"


def http_client(timeout: float):  # type: ignore[no-untyped-def]
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), trust_env=False,
                             limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))


def sync_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()
    except OSError:
        return 0, b""


async def post_agent(client, base: str, secret: str, message: str, conversation_id: str | None) -> dict:  # type: ignore[no-untyped-def]
    """One ``POST /agent``: ``{"outcome", "status", "conversation_id", "turn_id"}``."""
    body: dict[str, Any] = {"message": message}
    if conversation_id:
        body["conversation_id"] = conversation_id
    try:
        response = await client.post(f"{base}/agent", json=body, headers=auth(secret))
    except Exception as exc:  # a killed worker, a timeout
        return {"outcome": outcome_of_exception(exc), "status": None}
    if response.status_code == 200:
        data = response.json()
        ok = data.get("status") == "complete" and bool(data.get("turn_id"))
        return {"outcome": "200" if ok else f"200:{data.get('status')}", "status": 200,
                "conversation_id": data.get("conversation_id"), "turn_id": data.get("turn_id") if ok else None,
                "retry_after": None}
    return {"outcome": f"{response.status_code} {error_type(response)}", "status": response.status_code,
            "retry_after": response.headers.get("retry-after")}


async def post_stream(client, base: str, secret: str, message: str, conversation_id: str | None) -> dict:  # type: ignore[no-untyped-def]
    """One ``POST /agent/stream``, read to its last event."""
    body: dict[str, Any] = {"message": message}
    if conversation_id:
        body["conversation_id"] = conversation_id
    result: dict[str, Any] = {"outcome": "sse:cut", "status": None}
    try:
        async with client.stream("POST", f"{base}/agent/stream", json=body, headers=auth(secret)) as response:
            result["status"] = response.status_code
            if response.status_code != 200:
                await response.aread()
                result["outcome"] = f"{response.status_code} {error_type(response)}"
                result["retry_after"] = response.headers.get("retry-after")
                return result
            event, data = None, []
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "":
                    if event and data:
                        payload = json.loads("\n".join(data))
                        if event == "start":
                            result["conversation_id"] = payload.get("conversation_id")
                        elif event == "done":
                            result["conversation_id"] = payload.get("conversation_id")
                            if payload.get("status") == "complete" and payload.get("turn_id"):
                                result["turn_id"] = payload["turn_id"]
                                result["outcome"] = "sse:done"
                            else:
                                result["outcome"] = f"sse:done:{payload.get('status')}"
                            return result
                        elif event in ("error", "cancelled"):
                            kind = payload.get("error", {}).get("type") if event == "error" else "cancelled"
                            result["outcome"] = f"sse:{event} {kind}"
                            return result
                    event, data = None, []
    except Exception as exc:
        result["outcome"] = "sse:cut:" + outcome_of_exception(exc)
    return result


async def ws_message(ws_base: str, secret: str, message: str, conversation_id: str | None, timeout: float) -> dict:
    """One message over ``/agent/ws`` (a new session each time), read to the reply's last frame."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    url = f"{ws_base}/agent/ws" + (f"?conversation_id={conversation_id}" if conversation_id else "")
    result: dict[str, Any] = {"outcome": "ws:cut", "status": None}
    try:
        async with asyncio.timeout(timeout):
            async with connect(url, additional_headers=auth(secret), open_timeout=10, close_timeout=2,
                               max_size=2**22) as ws:
                session = json.loads(await ws.recv())
                if session.get("type") != "session":
                    result["outcome"] = f"ws:first:{session.get('type')}"
                    return result
                if session.get("reply"):
                    # The conversation has a reply running (or one whose process died, not yet closed): its frames
                    # follow; a message sent now would be refused as a conflict. Wait for its last frame.
                    t0 = time.perf_counter()
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame.get("type") in ("done", "error", "cancelled") and "seq" in frame:
                            kind = frame.get("error", {}).get("type") if frame["type"] == "error" else frame["type"]
                            result["resumed"] = {"status": session["reply"].get("status"), "ended_with": kind,
                                                 "after_s": round(time.perf_counter() - t0, 3)}
                            break
                await ws.send(json.dumps({"type": "message", "message": message}))
                while True:
                    frame = json.loads(await ws.recv())
                    kind = frame.get("type")
                    if kind == "start":
                        result["conversation_id"] = frame.get("conversation_id")
                    elif kind == "done":
                        result["conversation_id"] = frame.get("conversation_id")
                        if frame.get("status") == "complete" and frame.get("turn_id"):
                            result["turn_id"] = frame["turn_id"]
                            result["outcome"] = "ws:done"
                        else:
                            result["outcome"] = f"ws:done:{frame.get('status')}"
                        return result
                    elif kind == "error":
                        typ = frame.get("error", {}).get("type")
                        result["outcome"] = f"ws:error{'' if 'seq' in frame else ':refused'} {typ}"
                        result["retry_after"] = frame.get("error", {}).get("retry_after")
                        return result
                    elif kind == "cancelled":
                        result["outcome"] = "ws:cancelled"
                        return result
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        result["outcome"] = f"ws:closed:{code}"
    except Exception as exc:
        result["outcome"] = "ws:cut:" + outcome_of_exception(exc)
    return result


# -- role: bob, the quiet tenant (its own process) ------------------------------------------------------------


async def bob_main(config: dict) -> dict:
    base, secret = config["url"], config["secret"]
    end_at = config["end_at"]  # samples before start_at are the warm-up: the phases are cut by time
    lanes, interval, health_every = config["lanes"], config["interval"], config["health_interval"]
    rotate = config["rotate_turns"]
    samples: list[list] = []  # [wall time at start, kind, seconds, outcome]
    acks: list[list[str]] = []  # [conversation_id, turn_id]
    conversations: set[str] = set()
    agent_client, health_client = http_client(30.0), http_client(10.0)

    async def lane(index: int) -> None:
        period = interval * lanes
        await asyncio.sleep(index * interval)  # the lanes spread over the period
        conversation, turns = None, 0
        next_at = time.monotonic()
        while time.time() < end_at:
            t0_wall, t0 = time.time(), time.perf_counter()
            res = await post_agent(agent_client, base, secret, f"bob {index} [m:{new_nonce()}]", conversation)
            samples.append([t0_wall, "agent", time.perf_counter() - t0, res["outcome"]])
            if res.get("conversation_id"):
                conversations.add(res["conversation_id"])
                conversation = res["conversation_id"]
            if res.get("turn_id"):
                acks.append([res["conversation_id"], res["turn_id"]])
                turns += 1
            if turns >= rotate:
                conversation, turns = None, 0
            next_at = max(next_at + period, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())

    async def health() -> None:
        next_at = time.monotonic()
        while time.time() < end_at:
            t0_wall, t0 = time.time(), time.perf_counter()
            try:
                response = await health_client.get(f"{base}/healthz")
                outcome = str(response.status_code)
            except Exception as exc:
                outcome = outcome_of_exception(exc)
            samples.append([t0_wall, "healthz", time.perf_counter() - t0, outcome])
            next_at = max(next_at + health_every, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())

    try:
        await asyncio.gather(*(lane(i) for i in range(lanes)), health())
    finally:
        await agent_client.aclose()
        await health_client.aclose()
    return {"samples": samples, "acks": acks, "conversations": sorted(conversations)}


# -- role: hostile clients (its own process) ------------------------------------------------------------------


async def hostile_main(config: dict) -> dict:
    host, port = "127.0.0.1", config["port"]
    end_at = config["end_at"]
    slow = collections.Counter()
    flood = collections.Counter()
    closes: collections.Counter = collections.Counter()
    head = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nX-Padding: "
            + b"a" * 200 + b"\r\n\r\n")

    async def slowloris(index: int) -> None:
        await asyncio.sleep(random.uniform(0, 2))
        while time.time() < end_at:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            except Exception:
                slow["connect_failed"] += 1
                await asyncio.sleep(0.5)
                continue
            slow["connections"] += 1

            async def drip() -> None:
                for i in range(len(head)):
                    writer.write(head[i:i + 1])
                    await writer.drain()
                    slow["bytes_sent"] += 1
                    await asyncio.sleep(random.uniform(0.5, 1.5))

            dripping = asyncio.ensure_future(drip())
            try:
                answer = await asyncio.wait_for(reader.read(200), max(0.1, end_at - time.time()))
                if answer.startswith(b"HTTP/1.1 408"):
                    slow["answered_408"] += 1
                elif answer.startswith(b"HTTP/1.1 503"):
                    slow["answered_503"] += 1
                elif answer:
                    slow["answered_" + answer[9:12].decode(errors="replace")] += 1
                else:
                    slow["closed_without_answer"] += 1
            except asyncio.TimeoutError:
                slow["still_open_at_end"] += 1
            except (ConnectionError, OSError):
                slow["reset"] += 1
            finally:
                dripping.cancel()
                with contextlib.suppress(BaseException):
                    await dripping
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1)
            await asyncio.sleep(0.1)

    async def flooder(index: int) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        url = f"ws://{host}:{port}/agent/ws"
        while time.time() < end_at:
            try:
                async with connect(url, additional_headers=auth(config["secret"]), open_timeout=10, close_timeout=1,
                                   compression=None) as ws:
                    flood["sessions"] += 1
                    await ws.recv()  # the session frame

                    async def read() -> None:
                        async for _ in ws:
                            flood["error_frames"] += 1

                    reading = asyncio.ensure_future(read())
                    try:
                        for sent in range(100_000):  # bounded: the server closes the session long before
                            if time.time() >= end_at or reading.done():
                                break
                            await ws.send("x" if sent % 2 else b"\xff")
                            flood["frames_sent"] += 1
                            await asyncio.sleep(0)  # lets the reader see the server's close at once
                    except ConnectionClosed:
                        pass
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(reading, 3)
                    reading.cancel()
                    closes[str(ws.close_code)] += 1
            except ConnectionClosed as exc:
                closes[str(exc.rcvd.code if exc.rcvd else None)] += 1
            except Exception as exc:
                flood["connect_failed:" + type(exc).__name__] += 1
                await asyncio.sleep(0.5)
            await asyncio.sleep(0.2)

    await asyncio.gather(*(slowloris(i) for i in range(config["slowloris"])),
                         *(flooder(i) for i in range(config["flood_sessions"])))
    return {"slowloris": dict(slow, sockets=config["slowloris"]),
            "ws_flood": dict(flood, sessions_at_once=config["flood_sessions"], close_codes=dict(closes))}


def run_role(args: argparse.Namespace) -> int:
    config = json.loads(Path(args.role_config).read_text())
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main = bob_main if args.role == "bob" else hostile_main
    if config.get("nice"):
        os.setpriority(os.PRIO_PROCESS, 0, config["nice"])
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        result = runner.run(main(config))
    result["cpu_s"] = round(sysinfo.own_cpu_seconds(), 2)
    Path(args.role_out).write_text(json.dumps(result))
    return 0


# -- the run --------------------------------------------------------------------------------------------------


class Tmpfs:
    """A tmpfs of ``size_mib`` at ``path``, mounted on entry and always unmounted on exit."""

    def __init__(self, path: Path, size_mib: int):
        self.path, self.size_mib, self.mounted = path, size_mib, False

    def __enter__(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m,mode=0755", "tmpfs",
                               str(self.path)], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs at {self.path} (root is needed): {done.stderr.strip()}")
        self.mounted = True
        return self

    def unmount(self) -> None:
        if not self.mounted:
            return
        for attempt in range(10):
            done = subprocess.run(["umount", str(self.path)], capture_output=True, text=True, timeout=30)
            if done.returncode == 0:
                self.mounted = False
                return
            time.sleep(0.5)
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)  # busy: detach it
        self.mounted = False
        log(f"the tmpfs at {self.path} was busy: lazily unmounted")

    def __exit__(self, *exc_info: object) -> None:
        self.unmount()


def workers_of(pid: int) -> list[int]:
    """The uvicorn worker processes of the ``serve`` supervisor ``pid`` (its multiprocessing children)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[-1].split()[1])
            if ppid != pid:
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if b"spawn_main" in cmdline:
            found.append(int(entry))
    return sorted(found)


def start_fake(procs: Processes, plan: argparse.Namespace) -> Child:
    argv = [sys.executable, "-m", "bench.faults_upstream", "--host", "127.0.0.1", "--port", "0",
            "--ttft", str(plan.ttft), "--token-delay", str(plan.token_delay), "--n-tokens", str(plan.n_tokens)]
    child = procs.spawn("fake", argv, clean_env(PYTHONPATH=str(REPO_ROOT)))
    deadline = time.monotonic() + 30
    marker = "fake-upstream listening on "
    while time.monotonic() < deadline:
        for line in child.log_path.read_text(errors="replace").splitlines():
            if line.startswith(marker):
                child.url = line[len(marker):].strip()
                return child
        if child.proc.poll() is not None:
            raise RuntimeError(f"the fake exited with {child.proc.returncode}:\n{child.log_tail()}")
        time.sleep(0.05)
    raise TimeoutError(f"the fake did not announce its port:\n{child.log_tail()}")


def start_server(procs: Processes, plan: argparse.Namespace, *, fake_url: str, database: Path, keys: dict) -> Child:
    port = free_port()
    env = clean_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        AGENT_API_KEYS=",".join(f"{name}:{secret}" for name, secret in keys.items()),
        ANTHROPIC_API_KEY=UPSTREAM_KEY,
        ANTHROPIC_BASE_URL=fake_url,
        AGENT_WORKERS="2",
        AGENT_LOG_FORMAT="json",
        AGENT_LOG_LEVEL="info",
        AGENT_RATE_LIMIT="1000000/minute",
        AGENT_MAX_CONCURRENT_REPLIES="100000",
        AGENT_UPSTREAM_TIMEOUT_SECONDS=str(plan.upstream_timeout),
        AGENT_SHUTDOWN_GRACE_SECONDS="3",
    )
    argv = [sys.executable, "-m", "agent_server", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "2"]
    return procs.spawn("server", argv, env, url=f"http://127.0.0.1:{port}", ready_path="/readyz")


def spawn_role(procs: Processes, workdir: Path, role: str, config: dict) -> tuple[Child, Path]:
    config_path, out_path = workdir / f"{role}-config.json", workdir / f"{role}-result.json"
    config_path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "bench.faults", "--role", role, "--role-config", str(config_path),
            "--role-out", str(out_path)]
    return procs.spawn(role, argv, clean_env(PYTHONPATH=str(REPO_ROOT)), cwd=REPO_ROOT), out_path


def wait_role(procs: Processes, child: Child, out_path: Path, timeout: float) -> dict | None:
    try:
        child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{child.name} did not end in time: stopping it")
        procs.stop(child)
    if out_path.exists():
        return json.loads(out_path.read_text())
    log(f"{child.name} wrote no result (exit {child.proc.returncode}):\n{child.log_tail()}")
    return None


class Run:
    """The fault phase's state: what alice saw, what the faults did."""

    def __init__(self, plan: argparse.Namespace, server: Child, fake: Child, keys: dict, mount: Path):
        self.plan, self.server, self.fake, self.keys, self.mount = plan, server, fake, keys, mount
        self.base = server.url
        self.ws_base = server.url.replace("http://", "ws://")
        self.rng = random.Random(plan.seed)
        self.alice_acks: list[list[str]] = []
        self.alice_conversations: set[str] = set()
        self.alice_outcomes: collections.Counter = collections.Counter()  # "route outcome"
        self.garbage: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.alice_messages = 0
        self.long_in_flight = 0
        self.conflicts: list[dict] = []
        self.resumed: list[dict] = []  # WebSocket sessions that found a reply running on their conversation
        self.long_outcomes: collections.Counter = collections.Counter()
        self.disk_full = False
        self.kills: list[dict] = []
        self.fills: list[dict] = []
        self.filler = mount / "filler"

    # alice ------------------------------------------------------------------------------------------------

    async def alice(self, deadline: float) -> None:
        client = http_client(40.0)
        try:
            await asyncio.gather(*(self._alice_lane(i, client, deadline) for i in range(self.plan.alice_lanes)))
        finally:
            await client.aclose()

    async def _alice_lane(self, index: int, client, deadline: float) -> None:  # type: ignore[no-untyped-def]
        secret = self.keys["alice"]
        conversation, turns, k = None, 0, 0
        routes = ("agent", "stream", "ws")
        while time.monotonic() < deadline:
            route = routes[(index + k) % 3]
            k += 1
            fault = self.rng.choice(GARBAGE) if self.rng.random() < self.plan.garbage_fraction else None
            long = fault is None and self.rng.random() < self.plan.long_fraction
            message = f"alice {index}.{k} [m:{new_nonce()}]" + (f" [fault:{fault}]" if fault else "")
            message += " [fault:long]" if long else ""
            self.long_in_flight += long
            try:
                if route == "agent":
                    res = await post_agent(client, self.base, secret, message, conversation)
                elif route == "stream":
                    res = await post_stream(client, self.base, secret, message, conversation)
                else:
                    res = await ws_message(self.ws_base, secret, message, conversation, 40.0)
            finally:
                self.long_in_flight -= long
            if long:
                self.long_outcomes[f"{route} {res['outcome']}"] += 1
            self.alice_messages += 1
            if "conflict_error" in res["outcome"]:
                self.conflicts.append({"at_wall": time.time(), "who": "alice", "outcome": f"{route} {res['outcome']}"})
            self.alice_outcomes[f"{route} {res['outcome']}"] += 1
            if fault:
                self.garbage[fault][f"{route} {res['outcome']}"] += 1
            if res.get("resumed"):
                self.resumed.append(res["resumed"])
            if res.get("conversation_id"):
                self.alice_conversations.add(res["conversation_id"])
                conversation = res["conversation_id"]
            if res.get("turn_id"):
                self.alice_acks.append([res["conversation_id"], res["turn_id"]])
            turns += 1
            if turns >= self.plan.rotate_turns:
                conversation, turns = None, 0
            pause = self.plan.alice_think
            if res["outcome"].startswith(("409", "503", "ws:error:refused")):
                pause = max(pause, 0.5)  # busy conversation or full disk: back off a little
            await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    # disk fills ------------------------------------------------------------------------------------------

    def _fill(self) -> int:
        written = 0
        chunk = b"\0" * (1 << 20)
        with open(self.filler, "wb", buffering=0) as out:
            for size in (1 << 20, 1 << 12, 1 << 9):
                piece = chunk[:size]
                while True:
                    try:
                        written += out.write(piece)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return written

    async def disk(self, deadline: float) -> None:
        plan = self.plan
        first = True
        while True:
            gap = min(plan.fill_gap, 5.0) if first else plan.fill_gap
            first = False
            if time.monotonic() + gap + plan.fill_hold > deadline:
                return
            await asyncio.sleep(gap)
            record: dict[str, Any] = {"at_s": round(time.monotonic() - self.fault_start, 1), "at_wall": time.time()}
            try:
                self.disk_full = True
                record["bytes"] = await asyncio.to_thread(self._fill)
                free = shutil.disk_usage(self.mount).free
                record["free_bytes_when_full"] = free
                readyz: collections.Counter = collections.Counter()
                hold_until = time.monotonic() + plan.fill_hold
                while time.monotonic() < hold_until:
                    status, _ = await asyncio.to_thread(sync_get, f"{self.base}/readyz", 3.0)
                    readyz[str(status)] += 1
                    await asyncio.sleep(min(1.0, max(0.0, hold_until - time.monotonic())))
                record["readyz_while_full"] = dict(readyz)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self.filler.unlink()
                self.disk_full = False
                record["until_wall"] = time.time()
                record["held_s"] = round(time.monotonic() - self.fault_start - record["at_s"], 1)
                self.fills.append(record)
            log(f"disk fill {len(self.fills)}: {record.get('bytes', 0) >> 20} MiB, held {record['held_s']} s, "
                f"/readyz {record.get('readyz_while_full')}")

    # kill -9 ---------------------------------------------------------------------------------------------

    async def killer(self, deadline: float) -> None:
        plan = self.plan
        for k in range(plan.kills):
            at = self.fault_start + (k + 0.5) * plan.duration / plan.kills
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            # Not while the disk is full (replies are refused then), and with a slow reply in flight if one comes
            # within 10 s: the kill should find work to interrupt.
            waited_until = min(time.monotonic() + 30, deadline)
            while time.monotonic() < waited_until and (self.disk_full or (
                    not self.long_in_flight and time.monotonic() < waited_until - 20)):
                await asyncio.sleep(0.1)
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))  # into the reply, not at its start
            if time.monotonic() >= deadline:
                return
            before = workers_of(self.server.pid)
            record: dict[str, Any] = {"at_s": round(time.monotonic() - self.fault_start, 1), "workers": before,
                                      "slow_replies_in_flight": self.long_in_flight, "disk_full": self.disk_full}
            if not before:
                record["error"] = "no worker found"
                self.kills.append(record)
                continue
            victim = self.rng.choice(before)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            record["at_wall"] = time.time()
            record["killed"] = victim
            while time.monotonic() < killed_at + 60:
                now = workers_of(self.server.pid)  # a zombie is still listed: gone once the supervisor reaped it
                if victim not in now and "reaped_after_s" not in record:
                    record["reaped_after_s"] = round(time.monotonic() - killed_at, 3)
                new = [pid for pid in now if pid not in before]
                if new and victim not in now:
                    record["replacement"] = new[0]
                    record["replaced_after_s"] = round(time.monotonic() - killed_at, 3)
                    break
                await asyncio.sleep(0.05)
            else:
                record["replacement"] = None
            self.kills.append(record)
            log(f"kill -9 worker {victim}: replacement {record.get('replacement')} after "
                f"{record.get('replaced_after_s')} s")

    # the fault phase -------------------------------------------------------------------------------------

    async def faults(self) -> None:
        self.fault_start = time.monotonic()
        deadline = self.fault_start + self.plan.duration
        await asyncio.gather(self.alice(deadline), self.disk(deadline), self.killer(deadline))


# -- verification ---------------------------------------------------------------------------------------------


def settle(server: Child, timeout: float) -> dict:
    """Wait until both workers run and /readyz answered 200 ten times in a row (either worker may answer)."""
    started = time.monotonic()
    streak, seen = 0, collections.Counter()
    while time.monotonic() < started + timeout:
        if server.proc.poll() is not None:
            return {"ok": False, "reason": f"the server exited with {server.proc.returncode}"}
        workers = workers_of(server.pid)
        status, body = sync_get(f"{server.url}/readyz", 3.0)
        seen[str(status)] += 1
        streak = streak + 1 if status == 200 and len(workers) == 2 else 0
        if streak >= 10:
            return {"ok": True, "after_s": round(time.monotonic() - started, 2), "readyz": dict(seen),
                    "workers": workers}
        time.sleep(0.2)
    return {"ok": False, "reason": f"not ready within {timeout} s", "readyz": dict(seen),
            "last_body": body.decode(errors="replace")[:300]}


async def verify(run: Run, bob: dict | None) -> dict:
    base, keys = run.base, run.keys
    client = http_client(60.0)
    result: dict[str, Any] = {}
    try:
        # Every conversation of both keys, from the server's own listing (also those whose first reply failed
        # before the client learned their id).
        conversations: dict[str, str] = {}
        for owner in ("alice", "bob"):
            cursor = None
            for _page in range(1000):
                url = f"{base}/conversations?limit=200" + (f"&before={cursor}" if cursor else "")
                response = await client.get(url, headers=auth(keys[owner]))
                response.raise_for_status()
                data = response.json()
                for item in data["conversations"]:
                    conversations[item["id"]] = owner
                cursor = data.get("next_cursor")
                if not cursor:
                    break
        known = run.alice_conversations | set((bob or {}).get("conversations", []))
        result["conversations_listed"] = len(conversations)
        result["conversations_known_but_not_listed"] = sorted(known - set(conversations))

        # Usable: one more POST /agent on each, retried on 409/503 for a lease that some reply still holds.
        usable: dict[str, dict] = {}
        verify_acks: list[list[str]] = []
        semaphore = asyncio.Semaphore(6)

        async def use(conversation_id: str, owner: str) -> None:
            async with semaphore:
                tries, first = [], None
                deadline = time.monotonic() + 45
                while True:
                    res = await post_agent(client, base, keys[owner], f"verify [m:{new_nonce()}]", conversation_id)
                    tries.append(res["outcome"])
                    first = first or res["outcome"]
                    if res.get("turn_id") or time.monotonic() > deadline:
                        break
                    if not res["outcome"].startswith(("409", "503", "connection_error")):
                        break
                    await asyncio.sleep(1.0)
                usable[conversation_id] = {"owner": owner, "ok": bool(res.get("turn_id")), "tries": tries}
                if res.get("turn_id"):
                    verify_acks.append([conversation_id, res["turn_id"]])

        await asyncio.gather(*(use(c, o) for c, o in conversations.items()))
        bad = {c: u for c, u in usable.items() if not u["ok"]}
        retried = {c: u["tries"] for c, u in usable.items() if u["ok"] and len(u["tries"]) > 1}
        result["usable"] = {"checked": len(usable), "ok": len(usable) - len(bad), "unusable": bad,
                            "needed_retries": retried}

        # The audits, and the fake's log (after the verify POSTs: they are calls too).
        audits: dict[str, dict] = {}

        async def audit(conversation_id: str, owner: str) -> None:
            async with semaphore:
                response = await client.get(f"{base}/conversations/{conversation_id}", headers=auth(keys[owner]))
                audits[conversation_id] = response.json() if response.status_code == 200 else {
                    "status": response.status_code}

        await asyncio.gather(*(audit(c, o) for c, o in conversations.items()))
        fake_requests = (await client.get(f"{run.fake.url}/_faults/requests")).json()["requests"]
        fake_streams = (await client.get(f"{run.fake.url}/_fake/streams")).json()["streams"]
        violations = (await client.get(f"{run.fake.url}/_fake/violations")).json()["violations"]
    finally:
        await client.aclose()

    # Every acknowledged turn is stored, complete, in its conversation.
    acks = [("alice", c, t) for c, t in run.alice_acks] + [("bob", c, t) for c, t in (bob or {}).get("acks", [])]
    acks += [(conversations.get(c, "?"), c, t) for c, t in verify_acks]
    missing_turns = []
    for owner, conversation_id, turn_id in acks:
        turns = {turn["id"]: turn for turn in audits.get(conversation_id, {}).get("turns", [])}
        turn = turns.get(turn_id)
        if turn is None or turn.get("status") != "complete" or turn.get("role") != "assistant":
            missing_turns.append({"owner": owner, "conversation_id": conversation_id, "turn_id": turn_id,
                                  "found": None if turn is None else {"status": turn.get("status"),
                                                                      "role": turn.get("role")}})
    result["acknowledged_turns"] = {"checked": len(acks), "alice": len(run.alice_acks),
                                    "bob": len((bob or {}).get("acks", [])), "verify": len(verify_acks),
                                    "missing": missing_turns}

    # Every upstream attempt is in the ledger.
    rows, by_nonce = [], collections.defaultdict(list)
    statuses = collections.Counter()
    for conversation_id, data in audits.items():
        turn_text = {turn["id"]: turn.get("content") or "" for turn in data.get("turns", [])}
        for row in data.get("requests", []):
            row = dict(row, conversation_id=conversation_id)
            match = NONCE.search(turn_text.get(row.get("prompt_turn_id"), ""))
            row["nonce"] = match.group(1) if match else None
            rows.append(row)
            statuses[row.get("status")] += 1
            if row["nonce"]:
                by_nonce[row["nonce"]].append(row)
    fake_ids = {f["id"] for f in fake_requests}
    streams = {stream["request_id"]: stream for stream in fake_streams}
    by_id = {row["upstream_request_id"]: row for row in rows if row.get("upstream_request_id")}

    def recovered(row: dict) -> bool:
        """Closed by another process after its own died (or still open): its attempts and request id are unknown."""
        return row.get("error_type") == "interrupted" or row.get("status") == "running"

    # How many more attempts of its prompt a row may account for (None: any number, see ``recovered``).
    capacity: dict[str, int | None] = {}
    for row in rows:
        rid = row.get("upstream_request_id")
        capacity[row["id"]] = None if recovered(row) else (
            max(row.get("attempts") or 1, 1) - (1 if rid and rid in fake_ids else 0))
    matched_id = matched_prompt = 0
    prompt_kinds: collections.Counter = collections.Counter()
    missing_calls = []
    seen_by_recovered: dict[str, list[dict]] = collections.defaultdict(list)
    for attempt in fake_requests:
        if attempt.get("path") != "/v1/messages":
            continue
        if attempt["id"] in by_id:
            matched_id += 1
            continue
        same_prompt = by_nonce.get(attempt.get("nonce") or "", [])
        counted = [r for r in same_prompt if capacity[r["id"]] is not None and capacity[r["id"]] > 0]
        unknown = [r for r in same_prompt if capacity[r["id"]] is None]
        if counted:
            capacity[counted[0]["id"]] -= 1
            matched_prompt += 1
            prompt_kinds["earlier_attempt_of_a_call_with_several" if counted[0].get("upstream_request_id")
                         else f"call_without_request_id:{counted[0].get('status')}:{counted[0].get('error_type')}"] += 1
        elif unknown:
            matched_prompt += 1
            prompt_kinds["call_closed_as_interrupted"] += 1
            stream = streams.get(attempt["id"], {})
            seen_by_recovered[unknown[0]["id"]].append({
                "request_id": attempt["id"], "status": attempt.get("status"), "fault": attempt.get("fault"),
                "stream_outcome": stream.get("outcome"), "tokens_sent": stream.get("tokens_sent")})
        else:
            missing_calls.append(attempt)
    # Calls closed as interrupted whose attempts had all ended at the fake before the kill: the call was over, but
    # its process died before it stored the call's end (attempts, request id, usage are then lost with it).
    interrupted_calls = []
    for row in rows:
        if not recovered(row):
            continue
        attempts = seen_by_recovered.get(row["id"], [])
        ended = bool(attempts) and all(a["status"] != 200 or a["stream_outcome"] in ("completed", "error", "dropped")
                                       for a in attempts)
        interrupted_calls.append({
            "conversation_id": row["conversation_id"], "call": row["id"], "reply_id": row.get("reply_id"),
            "ledger": {k: row.get(k) for k in ("status", "error_type", "attempts", "upstream_request_id",
                                               "input_tokens", "output_tokens", "cost_usd")},
            "fake_attempts": attempts, "had_ended_upstream": ended,
            "output_tokens_sent_not_in_ledger": max(0, sum(a["tokens_sent"] or 0 for a in attempts)
                                                    - (row.get("output_tokens") or 0))})
    not_at_fake = [{"conversation_id": r["conversation_id"], "call": r["id"], "status": r.get("status"),
                    "error_type": r.get("error_type"), "upstream_request_id": r.get("upstream_request_id")}
                   for r in rows if r.get("upstream_request_id") and r["upstream_request_id"] not in fake_ids]
    result["ledger"] = {
        "upstream_attempts": sum(1 for f in fake_requests if f.get("path") == "/v1/messages"),
        "matched_by_request_id": matched_id, "matched_by_prompt": matched_prompt,
        "matched_by_prompt_kinds": dict(prompt_kinds), "missing": missing_calls,
        "interrupted_calls": interrupted_calls,
        "interrupted_calls_that_had_ended_upstream": sum(1 for c in interrupted_calls if c["had_ended_upstream"]),
        "output_tokens_sent_not_in_ledger": sum(c["output_tokens_sent_not_in_ledger"] for c in interrupted_calls),
        "ledger_rows": len(rows), "row_statuses": dict(statuses),
        "rows_with_an_id_the_fake_never_issued": not_at_fake[:20],
        "rows_still_running": [{"conversation_id": r["conversation_id"], "call": r["id"]}
                               for r in rows if r.get("status") == "running"][:20],
        "fake_violations": violations[:20], "fake_violation_count": len(violations),
        "audits_failed": {c: a["status"] for c, a in audits.items() if "status" in a and "turns" not in a},
    }
    result["replies"] = dict(collections.Counter(
        f"{reply.get('status')}" + (f" {reply['error_type']}" if reply.get("error_type") else "")
        for data in audits.values() for reply in data.get("replies", [])))
    return result


SHARED_FAULT_MARGIN_S = 1.0  # after a disk is freed or a killed worker replaced, before bob counts again


def shared_fault_windows(fills: list[dict], kills: list[dict]) -> list[tuple[float, float]]:
    """Wall-clock windows of the faults that hit every tenant alike: the disk full (each write waits for space,
    then stores) and a worker killed until its replacement serves. No isolation between tenants can shield bob
    from these, so the criterion of isolation is judged outside them; the figures over all samples are kept."""
    windows = [(f["at_wall"], f["until_wall"] + SHARED_FAULT_MARGIN_S) for f in fills
               if "at_wall" in f and "until_wall" in f]
    windows += [(k["at_wall"], k["at_wall"] + (k.get("replaced_after_s") or 0.0) + SHARED_FAULT_MARGIN_S)
                for k in kills if "at_wall" in k]
    return windows


def _overlaps(sample: list, windows: list[tuple[float, float]]) -> bool:
    start, end = sample[0], sample[0] + sample[2]
    return any(start < until and end > since for since, until in windows)


def bob_figures(bob: dict | None, quiet: tuple[float, float], faults: tuple[float, float],
                shared: list[tuple[float, float]] = ()) -> dict:
    """Bob's latencies in the quiet phase, in the whole fault phase, and in the fault phase outside the shared
    faults' windows (``isolated``: only alice's garbage, slowloris and the frame flood, which isolation is for)."""
    figures: dict[str, Any] = {}
    samples = (bob or {}).get("samples", [])
    for phase, (start, end), keep in (("quiet", quiet, None), ("faults", faults, None),
                                      ("isolated", faults, list(shared))):
        phase_figures = {}
        for kind in ("agent", "healthz"):
            chosen = [s for s in samples if s[1] == kind and start <= s[0] < end
                      and (keep is None or not _overlaps(s, keep))]
            ok = [s[2] for s in chosen if s[3] == "200"]
            outcomes = collections.Counter(s[3] for s in chosen)
            phase_figures[kind] = {**latency_summary(ok), "all_responses": latency_summary([s[2] for s in chosen]),
                                   "outcomes": dict(outcomes)}
        figures[phase] = phase_figures
    figures["ratios"] = {
        phase: {kind: {"p50": ratio(figures[phase][kind]["p50_ms"], figures["quiet"][kind]["p50_ms"]),
                       "p99": ratio(figures[phase][kind]["p99_ms"], figures["quiet"][kind]["p99_ms"])}
                for kind in ("agent", "healthz")}
        for phase in ("faults", "isolated")}
    return figures


def conflicts_after_kills(run: Run, bob: dict | None) -> dict:
    """Every 409 either tenant got, with the time since the last kill -9 before it (a dead worker's lease is
    meant to be free at once; alice's own lanes never send two messages at once on one conversation)."""
    kills = sorted((k for k in run.kills if "at_wall" in k), key=lambda k: k["at_wall"])
    found = list(run.conflicts) + [{"at_wall": s[0], "who": "bob", "outcome": f"agent {s[3]}"}
                                   for s in (bob or {}).get("samples", []) if "conflict_error" in s[3]]
    for item in found:
        before = [k for k in kills if k["at_wall"] <= item["at_wall"]]
        item["s_after_last_kill"] = round(item["at_wall"] - before[-1]["at_wall"], 3) if before else None
        if before and before[-1].get("reaped_after_s") is not None:
            item["before_the_worker_was_reaped"] = item["s_after_last_kill"] < before[-1]["reaped_after_s"]
    found.sort(key=lambda item: item["at_wall"])
    return {"count": len(found), "within_2s_of_a_kill": sum(1 for i in found if i["s_after_last_kill"] is not None
                                                            and i["s_after_last_kill"] <= 2), "list": found[:50]}


def scan_server_log(path: Path) -> dict:
    """Lines that name a bug: level error/critical, an exception, a 500 answered."""
    found = {"lines": 0, "errors": 0, "exceptions": 0, "status_500": 0, "worker_deaths": 0, "examples": []}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return found
    for raw in text.splitlines():
        found["lines"] += 1
        try:
            line = json.loads(raw)
        except ValueError:
            if "Traceback" in raw:
                found["exceptions"] += 1
                found["examples"].append(raw[:500])
            continue
        if not isinstance(line, dict):
            continue
        if "died" in str(line.get("message", "")) and line.get("logger") == "uvicorn.error":
            found["worker_deaths"] += 1
        bad = False
        if line.get("level") in ("error", "critical"):
            found["errors"] += 1
            bad = True
        if line.get("exception"):
            found["exceptions"] += 1
            bad = True
        if line.get("event") == "request" and line.get("status") == 500:
            found["status_500"] += 1
            bad = True
        if bad and len(found["examples"]) < 20:
            found["examples"].append(raw[:2000])
    return found


def criteria(plan: argparse.Namespace, verified: dict, bob: dict, alice_outcomes: dict, log_scan: dict,
             settled: dict) -> dict:
    acks, ledger, usable = verified["acknowledged_turns"], verified["ledger"], verified["usable"]
    ratios = bob["ratios"]["isolated"]
    agent_ratio, health_ratio = ratios["agent"]["p99"], ratios["healthz"]["p99"]
    everything = bob["ratios"]["faults"]
    # An answer no fault should cause: a 500, or the envelope of an unhandled error, on any route.
    client_500 = sum(n for outcome, n in alice_outcomes.items()
                     if outcome.split(" ", 1)[-1].startswith("500") or "api_error" in outcome)
    return {
        "acknowledged_turns_stored": {"pass": not acks["missing"] and acks["checked"] > 0,
                                      "checked": acks["checked"], "missing": len(acks["missing"])},
        "upstream_calls_in_ledger": {"pass": not ledger["missing"] and ledger["upstream_attempts"] > 0,
                                     "upstream_attempts": ledger["upstream_attempts"],
                                     "matched": ledger["matched_by_request_id"] + ledger["matched_by_prompt"],
                                     "missing": len(ledger["missing"])},
        "conversations_usable": {"pass": settled.get("ok", False) and not usable["unusable"]
                                 and usable["checked"] > 0 and not verified["conversations_known_but_not_listed"],
                                 "checked": usable["checked"], "unusable": len(usable["unusable"]),
                                 "needed_retries": len(usable["needed_retries"])},
        "bob_p99_within_limit": {"pass": all(isinstance(r, (int, float)) and r <= plan.p99_limit
                                             for r in (agent_ratio, health_ratio)),
                                 "limit": plan.p99_limit, "agent_p99_ratio": agent_ratio,
                                 "healthz_p99_ratio": health_ratio,
                                 "with_disk_full_and_kills_agent": everything["agent"]["p99"],
                                 "with_disk_full_and_kills_healthz": everything["healthz"]["p99"]},
        "no_internal_errors": {"pass": log_scan["errors"] == 0 and log_scan["exceptions"] == 0
                               and log_scan["status_500"] == 0 and client_500 == 0,
                               "log_errors": log_scan["errors"], "log_exceptions": log_scan["exceptions"],
                               "log_status_500": log_scan["status_500"], "client_500": client_500},
    }


def summary(result: dict) -> str:
    bob, crit, faults = result["bob"], result["criteria"], result["faults"]
    lines = ["", "Fault run: " + ("PASS" if result["pass"] else "FAIL") +
             f"  ({result['meta']['fault_seconds']:.0f} s of faults after {result['meta']['quiet_seconds']:.0f} s "
             f"quiet; load average {result['meta']['machine']['loadavg_at_start']} -> "
             f"{result['meta']['loadavg_at_end']})", ""]
    lines.append(f"{'bob':<16}{'quiet p50':>11}{'quiet p99':>11}{'fault p50':>11}{'fault p99':>11}{'p99 ratio':>11}"
                 f"{'n q/f':>13}")
    def show(value):  # type: ignore[no-untyped-def]
        return "-" if value is None else f"{value:.1f}"

    for phase, note in (("faults", "all"), ("isolated", "outside disk-full and kill windows")):
        for kind, label in (("agent", "POST /agent"), ("healthz", "GET /healthz")):
            q, f = bob["quiet"][kind], bob[phase][kind]
            lines.append(f"{label:<16}{show(q['p50_ms']):>11}{show(q['p99_ms']):>11}{show(f['p50_ms']):>11}"
                         f"{show(f['p99_ms']):>11}{show(bob['ratios'][phase][kind]['p99']):>11}"
                         f"{q['n']:>6}/{f['n']:<6} ({note})")
    not_ok = {k: v for k, v in bob["faults"]["agent"]["outcomes"].items() if k != "200"}
    lines.append(f"  (ms, 200 responses only; bob's other answers during the faults: {not_ok or 'none'})")
    lines.append("")
    lines.append(f"faults: {len(faults['kills'])} kill -9 (replaced: "
                 f"{sum(1 for k in faults['kills'] if k.get('replacement'))}), {len(faults['disk_fills'])} disk "
                 f"fills, {sum(sum(c.values()) for c in faults['garbage'].values())} garbage replies of "
                 f"{result['alice']['messages']} alice messages, slowloris {faults['slowloris'].get('connections', 0)} "
                 f"connections ({faults['slowloris'].get('answered_408', 0)} got 408), WebSocket flood "
                 f"{faults['ws_flood'].get('sessions', 0)} sessions / {faults['ws_flood'].get('frames_sent', 0)} "
                 "frames")
    ledger = result["verify"]["ledger"]
    lines.append(f"replies: {result['verify']['replies']}")
    lines.append(f"calls closed as interrupted: {len(ledger['interrupted_calls'])} (of which had ended upstream before "
                 f"the kill: {ledger['interrupted_calls_that_had_ended_upstream']}; output tokens the fake sent that "
                 f"the ledger does not count: {ledger['output_tokens_sent_not_in_ledger']}); 409s: "
                 f"{result['conflicts']['count']} ({result['conflicts']['within_2s_of_a_kill']} within 2 s of a kill)")
    lines.append("")
    for name, value in crit.items():
        details = ", ".join(f"{k} {v}" for k, v in value.items() if k != "pass")
        lines.append(f"  {'PASS' if value['pass'] else 'FAIL'}  {name}: {details}")
    lines.append("")
    lines.append(f"result: {result['meta']['out']}")
    return "\n".join(lines)


def run_main(plan: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if plan.seed is None:
        plan.seed = int(time.time())
    random.seed(plan.seed)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(plan.out) if plan.out else RESULTS / f"faults-{stamp}.json"
    workdir = Path(plan.workdir or tempfile.mkdtemp(prefix="agent-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    keys = {"alice": "alice-" + secrets.token_urlsafe(24), "bob": "bob-" + secrets.token_urlsafe(24)}
    started = time.time()
    meta: dict[str, Any] = {
        "command": "python -m bench.faults " + shlex.join(sys.argv[1:]), "started_at": stamp,
        "machine": sysinfo.machine(), "workdir": str(workdir), "out": str(out),
        "plan": {k: v for k, v in vars(plan).items() if not k.startswith("role")},
    }
    log(f"work folder {workdir}; {plan.quiet_seconds:.0f} s quiet, then {plan.duration:.0f} s of faults")
    result: dict[str, Any] | None = None
    keep = plan.keep_workdir
    interrupted = False
    tmpfs = Tmpfs(workdir / "db", plan.tmpfs_mib)
    try:
        with tmpfs, Processes(workdir) as procs:
            fake = start_fake(procs, plan)
            server = start_server(procs, plan, fake_url=fake.url, database=tmpfs.path / "agent.db", keys=keys)
            procs.wait_ready(server, timeout=90)
            log(f"server {server.url} (workers {workers_of(server.pid)}), fake {fake.url}")
            warmup = 5.0
            quiet_start = time.time() + warmup
            quiet_end = quiet_start + plan.quiet_seconds
            fault_end = quiet_end + plan.duration
            bob_child, bob_out = spawn_role(procs, workdir, "bob", {
                "url": server.url, "secret": keys["bob"], "start_at": quiet_start, "end_at": fault_end,
                "lanes": plan.bob_lanes, "interval": plan.bob_interval, "health_interval": plan.health_interval,
                "rotate_turns": plan.rotate_turns})
            time.sleep(max(0.0, quiet_start - time.time()))
            cpu_at_start = {"server": sysinfo.cpu_seconds(server.pid), "fake": sysinfo.cpu_seconds(fake.pid)}
            time.sleep(max(0.0, quiet_end - time.time()))
            log("quiet phase over: faults begin")
            hostile_child, hostile_out = spawn_role(procs, workdir, "hostile", {
                "port": int(server.url.rsplit(":", 1)[1]), "secret": keys["alice"], "end_at": fault_end,
                "slowloris": plan.slowloris, "flood_sessions": plan.flood_sessions, "nice": plan.attacker_nice})
            run = Run(plan, server, fake, keys, tmpfs.path)
            fault_started = time.time()
            cpu = {"server_at_quiet_end": sysinfo.cpu_seconds(server.pid),
                   "fake_at_quiet_end": sysinfo.cpu_seconds(fake.pid), "main_at_quiet_end": sysinfo.own_cpu_seconds()}
            own_priority = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, 0, own_priority + plan.attacker_nice)
            try:
                with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                    runner.run(run.faults())
            finally:
                os.setpriority(os.PRIO_PROCESS, 0, own_priority)
            fault_stopped = time.time()
            cpu.update(server_at_fault_end=sysinfo.cpu_seconds(server.pid),
                       fake_at_fault_end=sysinfo.cpu_seconds(fake.pid), main_at_fault_end=sysinfo.own_cpu_seconds())
            log("faults over: waiting for bob and the hostile clients to stop")
            bob = wait_role(procs, bob_child, bob_out, timeout=max(30.0, fault_end - time.time() + 40))
            hostile = wait_role(procs, hostile_child, hostile_out, timeout=max(30.0, fault_end - time.time() + 30))
            settled = settle(server, plan.settle_timeout)
            log(f"settled: {settled}")
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                verified = runner.run(verify(run, bob))
            bob_stats = bob_figures(bob, (quiet_start, quiet_end), (fault_started, min(fault_stopped, fault_end)),
                                    shared_fault_windows(run.fills, run.kills))
            server_alive = server.proc.poll() is None
            procs.stop(server, fake)
            log_scan = scan_server_log(server.log_path)
            meta.update(quiet_seconds=quiet_end - quiet_start, fault_seconds=fault_stopped - fault_started,
                        loadavg_at_end=sysinfo.loadavg(), duration_s=round(time.time() - started, 1),
                        server_alive_at_end=server_alive, server_log=str(server.log_path),
                        fake_log=str(fake.log_path))
            result = {
                "meta": meta,
                "bob": bob_stats,
                "alice": {"messages": run.alice_messages, "acknowledged": len(run.alice_acks),
                          "conversations": len(run.alice_conversations), "outcomes": dict(run.alice_outcomes),
                          "slow_replies": dict(run.long_outcomes),
                          "ws_resumed_a_running_reply": run.resumed},
                "faults": {"kills": run.kills, "disk_fills": run.fills,
                           "garbage": {name: dict(c) for name, c in sorted(run.garbage.items())},
                           "slowloris": (hostile or {}).get("slowloris", {}),
                           "ws_flood": (hostile or {}).get("ws_flood", {})},
                "conflicts": conflicts_after_kills(run, bob),
                "settle": settled,
                "cpu_seconds": {
                    "note": "CPU used per phase; the server's is its process tree (a killed worker's CPU is lost)",
                    "server_quiet": round(cpu["server_at_quiet_end"] - cpu_at_start["server"], 2),
                    "server_faults": round(cpu["server_at_fault_end"] - cpu["server_at_quiet_end"], 2),
                    "fake_quiet": round(cpu["fake_at_quiet_end"] - cpu_at_start["fake"], 2),
                    "fake_faults": round(cpu["fake_at_fault_end"] - cpu["fake_at_quiet_end"], 2),
                    "alice_and_faults_driver": round(cpu["main_at_fault_end"] - cpu["main_at_quiet_end"], 2),
                    "bob_client": (bob or {}).get("cpu_s"), "hostile_clients": (hostile or {}).get("cpu_s")},
                "verify": verified,
                "server_log": log_scan,
            }
            result["criteria"] = criteria(plan, verified, bob_stats, dict(run.alice_outcomes), log_scan, settled)
            result["pass"] = all(c["pass"] for c in result["criteria"].values())
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: processes stopped, tmpfs unmounted")
    except Exception as exc:
        log(f"the run failed: {type(exc).__name__}: {exc}")
        keep = True
        if result is None:
            import traceback

            traceback.print_exc()
    finally:
        tmpfs.unmount()
        if result is not None and not result["pass"]:
            keep = True
        if not keep and not plan.workdir and not tmpfs.mounted:
            shutil.rmtree(workdir, ignore_errors=True)
        elif keep:
            log(f"work folder kept: {workdir}")
    if interrupted:
        return 130
    if result is None:
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    return 0 if result["pass"] else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role:
        return run_role(args)
    return run_main(resolve(args))


if __name__ == "__main__":
    sys.exit(main())
