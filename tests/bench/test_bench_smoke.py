"""`python -m bench --quick` end to end: every section runs and reports numbers next to its baseline."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

# (section, path to a figure); each is checked for the server and for the baseline.
FIGURES = {
    "ttft": [("1", "ttft", "p50_ms"), ("1", "overhead_p50_ms"), ("1", "overhead_p99_ms")],
    "throughput": [("per_second",), ("latency", "p99_ms")],
    "fanout": [("tokens_per_s",), ("cpu_s_per_1k_tokens",), ("added_gap_p99_ms",)],
    "ws": [("rss_per_session_kib",), ("replies_per_s",), ("latency", "p99_ms")],
    "history": [("10", "p50_ms"), ("100", "p50_ms"), ("1000", "p50_ms"), ("added_1000_vs_10_p50_ms",)],
}


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


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    assert "targets" in proc.stdout  # the table was printed
    return json.loads(out.read_text())


def test_every_section_ran(result: dict) -> None:
    assert set(result["sections"]) == set(FIGURES)
    for name, section in result["sections"].items():
        assert "error" not in section, f"{name}: {section.get('error')}"


@pytest.mark.parametrize("section", sorted(FIGURES))
def test_section_has_figures_and_baselines(result: dict, section: str) -> None:
    data = result["sections"][section]
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


def test_targets_are_judged(result: dict) -> None:
    targets = result["targets"]
    assert len(targets) >= 8
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
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout, json.loads(out.read_text())


def test_ttft_against_another_revision_runs_it_in_the_same_rounds(tmp_path) -> None:
    """``--ttft-against REV``: agent_server as of REV is a fourth target of the ttft rounds (an A/B in one run)."""
    table, result = quick_ttft(tmp_path, "--ttft-against", "HEAD")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    ttft = result["sections"]["ttft"]
    assert result["meta"]["ttft_against"] == ttft["config"]["against_revision"] == head.strip()[:12]
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
    assert set(rows) == {"BEGIN IMMEDIATE", "reads, inserts, their Python", "COMMIT", "whole transaction"}
    for values in rows.values():
        assert len(values) == 2 and all(value.isdigit() for value in values)
