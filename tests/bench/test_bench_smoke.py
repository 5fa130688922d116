"""`python -m bench --quick` end to end: every section runs and reports numbers next to its baseline.

The wrk and backends sections need wrk and PostgreSQL (Debian's packages): without them they report themselves
skipped, and their tests skip too (under ``CI=true`` a missing tool is a failure, as in tests/servers.py)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# The module's run of every section (the fixture) takes a minute or two on two shared cores: past the suite's
# default per-test timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]

# (section, path to a figure); each is checked for the server and for the baseline.
FIGURES = {
    "ttft": [("1", "ttft", "p50_ms"), ("1", "overhead_p50_ms"), ("1", "overhead_p99_ms")],
    "throughput": [("per_second",), ("latency", "p99_ms")],
    "fanout": [("tokens_per_s",), ("cpu_s_per_1k_tokens",), ("added_gap_p99_ms",)],
    "ws": [("rss_per_session_kib",), ("replies_per_s",), ("latency", "p99_ms")],
    "history": [("10", "p50_ms"), ("100", "p50_ms"), ("1000", "p50_ms"), ("added_1000_vs_10_p50_ms",)],
    "tools": [("1", "reply", "p50_ms"), ("1", "reply", "p99_ms"), ("4", "reply", "p50_ms")],
    "wrk": [("per_second",), ("cpu_ms_per_exchange",), ("latency", "p99_ms")],
}
# Sections whose figures are not "server" beside "baseline": checked one by one below.
OTHER_SECTIONS = {"resume", "caching", "backends"}
NEEDS = {"wrk": ("wrk",), "backends": ("wrk", "postgres")}


# uvloop's timers count whole milliseconds from the loop's last reading of the clock: one may fire up to 1 ms
# before its delay has passed since it was set.
UVLOOP_TIMER_SLACK_MS = 1.0


def _dig(data, path):
    for key in path:
        assert isinstance(data, dict) and key in data, f"missing {key!r} on the way to {path}"
        data = data[key]
    return data


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _have(tool: str) -> bool:
    if tool == "wrk":
        return shutil.which("wrk") is not None or Path("/usr/bin/wrk").exists()
    from bench.postgres import find_bin

    return find_bin() is not None


def _section(result: dict, name: str) -> dict:
    """The section's result; a skip when it was skipped for a missing tool (a failure under CI=true)."""
    data = result["sections"][name]
    if "skipped" in data:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} was skipped under CI: {data['skipped']}")
        pytest.skip(data["skipped"])
    return data


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=480,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    assert "targets" in proc.stdout  # the table was printed
    data = json.loads(out.read_text())
    data["readme"] = out.with_suffix(".md").read_text()
    return data


def test_every_section_ran(result: dict) -> None:
    assert set(result["sections"]) == set(FIGURES) | OTHER_SECTIONS
    for name, section in result["sections"].items():
        assert "error" not in section, f"{name}: {section.get('error')}\n{section.get('traceback', '')}"
        if "skipped" in section:  # only for a missing tool
            assert name in NEEDS and not all(_have(tool) for tool in NEEDS[name]), section["skipped"]


@pytest.mark.parametrize("section", sorted(FIGURES))
def test_section_has_figures_and_baselines(result: dict, section: str) -> None:
    data = _section(result, section)
    for who in ("server", "baseline"):
        for path in FIGURES[section]:
            value = _dig(data[who], path)
            assert _is_number(value), f"{section}.{who}.{'.'.join(path)} = {value!r}"
    if section == "ttft":
        assert _is_number(_dig(data, ("direct", "1", "ttft", "p50_ms")))
        assert len(data["server"]) == 2  # 1 stream and the high level
        for level, figures in data["server"].items():  # server vs baseline, with its interval over the rounds
            p50 = figures["vs_baseline"]["p50"]
            expected = figures["overhead_p50_ms"] - data["baseline"][level]["overhead_p50_ms"]
            assert p50["overhead_diff_ms"] == pytest.approx(expected, abs=0.002)
            low, high = p50["overhead_diff_ci_ms"]
            assert _is_number(low) and _is_number(high) and low <= high
            for who in ("server", "baseline", "direct"):  # what the fake saw of each target's streams
                fake = data[who][level]["fake"]
                assert fake["first_delta_ms"]["p50"] >= data["config"]["fake_ttft_ms"] - UVLOOP_TIMER_SLACK_MS
                assert 0 <= fake["head_ms"]["p50"] <= fake["first_delta_ms"]["p50"]
    if section == "throughput":
        assert _is_number(data["ratio"]) and data["server"]["persisted_rows"] >= data["server"]["completed"] > 0
    if section == "history":
        assert _is_number(_dig(data, ("server", "db_size", "added_big_vs_tiny_p50_ms")))
        assert _is_number(_dig(data, ("server", "storage", "db_bytes_per_turn")))
        assert data["server"]["storage"]["server_written_turns"] > 0
    if section == "tools":  # every reply made its steps (a wrong count is an error, not a sample)
        for level in ("1", "4"):
            assert data["server"][level]["errors"] == data["baseline"][level]["errors"] == 0
            assert _is_number(data["server"][level]["added_per_step_p50_ms"])
            assert _is_number(data["server"][level]["added_per_step_p99_ms"])
            low, high = data["server"][level]["vs_baseline"]["added_per_step_p50_ci_ms"]
            assert low <= high
        assert data["server"]["1"]["reply"]["n"] == data["baseline"]["1"]["reply"]["n"] == 6
    if section == "wrk":  # wrk's counts, the database's rows, and wrk far from being the bottleneck
        assert _is_number(data["ratio"]) and data["server"]["persisted_rows"] >= data["server"]["completed"] > 0
        assert data["server"]["errors"] == data["baseline"]["errors"] == 0
        assert data["server"]["wrk_cpu_share"] < 0.5


def test_resume_replays_and_reconnects(result: dict) -> None:
    data = result["sections"]["resume"]
    tokens = data["config"]["tokens"]
    for who in ("replay", "live", "direct"):
        assert data[who]["errors"] == 0, data[who]["first_errors"]
        assert _is_number(data[who]["events_per_s"]) and _is_number(data[who]["first_event"]["p50_ms"])
        assert data[who]["events_per_read"] >= tokens
    assert data["replay"]["in_order"] and data["live"]["in_order"]
    reconnect = data["reconnect"]
    assert reconnect["errors"] == 0 and reconnect["continuous"] and reconnect["complete"]
    assert _is_number(reconnect["first_event"]["p50_ms"])
    storage = data["storage"]
    assert storage["events"] >= data["config"]["finished_replies"] * tokens
    assert 0 < storage["payload_bytes_per_event"] < storage["table_bytes_per_event"]


def test_caching_saves_input_cost_and_the_window_keeps_answering(result: dict) -> None:
    data = result["sections"]["caching"]
    caching, window = data["caching"], data["window"]
    off, on = caching["cache_off"], caching["cache_5m"]
    assert off["errors"] == on["errors"] == 0
    assert off["calls"] == on["calls"] == data["config"]["exchanges"]
    assert off["cache_read_tokens"] == off["cache_write_tokens"] == 0 < on["cache_read_tokens"]
    assert 0 < caching["input_cost_share"] < 1 and _is_number(caching["latency_on_minus_off_p50_ms"])
    server = window["server"]
    assert server["errors"] == 0 and server["exchanges"] == data["config"]["window_exchanges"]
    assert server["window_full_at_exchange"] is not None and server["last_turns_omitted"] > 0
    assert _is_number(server["reply_after_full"]["p50_ms"])
    assert window["baseline"]["failed_at_exchange"] is not None  # the baseline sends everything, and fails


def test_backends_side_by_side(result: dict) -> None:
    data = _section(result, "backends")
    for kind in ("sqlite", "postgres", "baseline"):
        for level in ("1", "8"):
            assert _is_number(data["ttft"][kind][level]["overhead_p50_ms"]), (kind, level)
            assert data["ttft"][kind][level]["errors"] == 0
    for kind in ("sqlite", "postgres"):
        assert _is_number(data["ttft"][kind]["1"]["vs_baseline"]["p50"]["overhead_diff_ms"])
    assert set(data["throughput"]) == {"1", "2"}
    for workers in ("1", "2"):
        for kind in ("sqlite", "postgres", "baseline"):
            figures = data["throughput"][workers][kind]
            assert figures["errors"] == 0 and figures["completed"] > 0
            assert _is_number(figures["per_second"]) and _is_number(figures["cpu_ms_per_exchange"])
        postgres = data["throughput"][workers]["postgres"]
        assert postgres["persisted_rows"] >= postgres["completed"]
        assert _is_number(postgres["postgres_cpu_ms_per_exchange"])


def test_readme_table_has_every_section(result: dict) -> None:
    """``<out>.md``: the README's table (figure | agent_server | baseline proxy | fake upstream alone)."""
    lines = result["readme"].splitlines()
    assert lines[0] == "| figure | agent_server | baseline proxy | fake upstream alone |"
    assert all(line.startswith("| ") and line.count(" | ") == 3 for line in lines[2:])
    text = result["readme"]
    for needle in ("TTFT overhead, 1 stream", "wrk", "5-step tool reply", "replay of a finished", "input cost",
                   "window", "fan-out", "WebSocket", "1,000-turn conversation"):
        assert needle in text, needle
    if "skipped" not in result["sections"]["backends"]:
        assert "PostgreSQL, 2 workers" in text


def test_targets_are_judged(result: dict) -> None:
    targets = result["targets"]
    assert len(targets) >= 12
    for target in targets:
        assert _is_number(target["value"]), target
        assert target["pass"] in (True, False), target


def test_meta_describes_the_machine(result: dict) -> None:
    meta = result["meta"]
    assert meta["quick"] is True and meta["machine"]["nproc"] >= 1 and meta["machine"]["cpu_model"]


def quick_ttft(tmp_path: Path, *flags: str) -> tuple[str, dict]:
    """``python -m bench --quick --only ttft`` with ``flags``: its table and its result."""
    out = tmp_path / "ttft.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "ttft", *flags, "--out", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout, json.loads(out.read_text())


# Version 1's last commit (before "Version 2's shape"): the maintainer A/Bs version 1's TTFT against version 2's.
VERSION_1 = "532bc62afb015388ccf91ee452326f5d09421dcc"


def _commit(rev: str) -> str | None:
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)
    return found.stdout.strip() or None


@pytest.mark.parametrize("rev", ["HEAD", VERSION_1])
def test_ttft_against_another_revision_runs_it_in_the_same_rounds(tmp_path, rev: str) -> None:
    """``--ttft-against REV``: agent_server as of REV is a fourth target of the ttft rounds (an A/B in one run),
    version 1 included (its SSE events have no ``id:``, its metrics take a client key)."""
    commit = _commit(rev)
    if commit is None:
        pytest.skip(f"{rev} is not in this clone")
    table, result = quick_ttft(tmp_path, "--ttft-against", rev)
    ttft = result["sections"]["ttft"]
    assert result["meta"]["ttft_against"] == ttft["config"]["against_revision"] == commit[:12]
    assert set(ttft["against"]) == set(ttft["server"])  # both levels
    for name, level in ttft["against"].items():
        assert _is_number(level["overhead_p50_ms"]) and level["errors"] == 0
        assert level["ttft"]["n"] == ttft["server"][name]["ttft"]["n"]  # the same rounds as the server's
        assert level["vs_server"]["resampled_rounds"] == ttft["server"][name]["vs_baseline"]["resampled_rounds"]
    assert "agent_server at" in table


def test_the_load_generator_can_run_on_asyncio(tmp_path) -> None:
    """``--client-loop asyncio``: the same rounds driven from asyncio's own loop instead of uvloop."""
    _, result = quick_ttft(tmp_path, "--client-loop", "asyncio")
    assert result["meta"]["client_loop"] == "asyncio"
    assert result["sections"]["ttft"]["server"]["1"]["errors"] == 0
    assert _is_number(result["sections"]["ttft"]["server"]["1"]["overhead_p50_ms"])


def test_the_fake_can_start_its_ttft_clock_after_its_response_head(tmp_path) -> None:
    """``--ttft-fake-clock head-sent``: the harness as it was, for comparison; each first delta then went out a
    whole TTFT after the head."""
    table, result = quick_ttft(tmp_path, "--ttft-fake-clock", "head-sent")
    ttft = result["sections"]["ttft"]
    assert ttft["config"]["fake_ttft_from"] == "head-sent"
    for who in ("server", "baseline", "direct"):
        fake, due = ttft[who]["1"]["fake"], ttft["config"]["fake_ttft_ms"] - UVLOOP_TIMER_SLACK_MS
        assert fake["first_delta_ms"]["p50"] >= fake["head_ms"]["p50"] + due
    assert "fake's response head sent" in table


@pytest.mark.parametrize("turns", [0, 20])
def test_cold_commit_diagnostic_prints_each_step(turns: int) -> None:
    """``python -m bench.cold_commit``: the opening transaction's steps, back to back and after a pause, for a
    new conversation and (``--turns``) for one continued after its stored turns."""
    proc = subprocess.run([sys.executable, "-m", "bench.cold_commit", "--samples", "3", "--pause", "0.001",
                           "--turns", str(turns)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "back to back" in lines[0] and "after a 1 ms pause" in lines[0]
    rows = {line[:28].strip(): line[28:].split() for line in lines[1:]}
    expected = {"BEGIN IMMEDIATE", "reads, inserts, their Python", "COMMIT", "whole transaction"}
    assert set(rows) == (expected | {"history read (after)"} if turns else expected)
    for values in rows.values():
        assert len(values) == 2 and all(value.isdigit() for value in values)


def test_sections_run_on_postgres(tmp_path) -> None:
    """``--database postgres``: the sections' servers on a throwaway PostgreSQL cluster (seeding, counts and
    storage figures included), stopped and removed with the run."""
    if not _have("postgres"):
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed")
        pytest.skip("PostgreSQL is not installed")
    out = tmp_path / "pg.json"
    clusters_before = set(Path(tempfile.gettempdir()).glob("agent-bench-pg-*"))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--database", "postgres", "--only", "throughput,history,resume",
         "--out", str(out), "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    result = json.loads(out.read_text())
    assert result["meta"]["database"] == "postgres"
    sections = result["sections"]
    assert sections["throughput"]["server"]["persisted_rows"] >= sections["throughput"]["server"]["completed"] > 0
    assert sections["history"]["server"]["storage"]["database"] == "postgres"
    assert _is_number(sections["history"]["server"]["1000"]["p50_ms"])
    assert sections["history"]["server"]["1000"]["errors"] == 0
    assert sections["resume"]["config"]["database"] == "postgres"
    assert sections["resume"]["reconnect"]["continuous"] and sections["resume"]["storage"]["events"] > 0
    leftovers = set(Path(tempfile.gettempdir()).glob("agent-bench-pg-*")) - clusters_before
    assert not leftovers, leftovers  # the cluster's folder went with the run


def test_the_report_prints_the_readme_table(tmp_path) -> None:
    """``python -m bench.report RESULT``: the README's table from a saved result (here a tiny, hand-made one)."""
    result = {"sections": {"wrk": {"config": {"connections": 32}, "ratio": 0.95,
                                   "server": {"per_second": 190.0, "cpu_ms_per_exchange": 3.0, "wrk_cpu_share": 0.05},
                                   "baseline": {"per_second": 200.0, "cpu_ms_per_exchange": 2.0}}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    proc = subprocess.run([sys.executable, "-m", "bench.report", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| persisted `POST /agent` exchanges/s, wrk (1 thread, 32 connections) | 190.0 (ratio 0.95) | 200.0 |" \
        in proc.stdout
