"""`python -m bench.faults` in a tiny run (about a minute): every fault fires, and the result says every
acknowledged turn is stored, every upstream call is in the ledger and every conversation is usable.

Bob's latency ratio is noisy in so short a run on a shared machine: it is checked to be a number, not its value.
The run mounts a tmpfs, so it needs root (a skip otherwise, a failure under ``CI=true``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
CRITERIA = ("acknowledged_turns_stored", "upstream_calls_in_ledger", "conversations_usable", "bob_p99_within_limit",
            "no_internal_errors")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the fault run mounts a tmpfs: CI must run it as root")
        pytest.skip("the fault run mounts a tmpfs: root only")
    folder = tmp_path_factory.mktemp("faults")
    out = folder / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--minutes", "0.3", "--quiet-seconds", "8",
         "--out", str(out), "--workdir", str(folder / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode in (0, 1), (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    data = json.loads(out.read_text())
    data["_stdout"], data["_returncode"] = proc.stdout, proc.returncode
    return data


def test_the_result_has_every_criterion_and_the_summary_says_it(result) -> None:
    for name in CRITERIA:
        assert isinstance(result["criteria"][name]["pass"], bool), name
        assert name in result["_stdout"]
    assert result["pass"] is all(c["pass"] for c in result["criteria"].values())
    failed = [name for name, c in result["criteria"].items() if not c["pass"]]
    # The exit status says it; only the latency ratio may fail in so short a run.
    assert result["_returncode"] == (1 if failed else 0)
    assert set(failed) <= {"bob_p99_within_limit"}, json.dumps(result["criteria"], indent=1)


def test_every_acknowledged_turn_is_stored(result) -> None:
    check = result["criteria"]["acknowledged_turns_stored"]
    assert check["pass"], json.dumps(result["verify"]["acknowledged_turns"]["missing"][:5], indent=1)
    assert check["checked"] > 0 and result["verify"]["acknowledged_turns"]["alice"] > 0


def test_every_upstream_call_is_in_the_ledger(result) -> None:
    check = result["criteria"]["upstream_calls_in_ledger"]
    assert check["pass"], json.dumps(result["verify"]["ledger"]["missing"][:5], indent=1)
    assert check["upstream_attempts"] > 0 and check["matched"] == check["upstream_attempts"]
    assert result["verify"]["ledger"]["fake_violation_count"] == 0


def test_every_conversation_is_usable(result) -> None:
    check = result["criteria"]["conversations_usable"]
    assert check["pass"], json.dumps(result["verify"]["usable"]["unusable"], indent=1)
    assert check["checked"] > 0 and result["settle"]["ok"]


def test_bob_latencies_are_numbers(result) -> None:
    check = result["criteria"]["bob_p99_within_limit"]
    assert _is_number(check["agent_p99_ratio"]) and _is_number(check["healthz_p99_ratio"])
    for phase in ("quiet", "faults"):
        for kind in ("agent", "healthz"):
            assert result["bob"][phase][kind]["n"] > 0
            assert _is_number(result["bob"][phase][kind]["p99_ms"])


def test_every_fault_fired_and_the_tmpfs_is_gone(result) -> None:
    faults = result["faults"]
    assert faults["kills"] and all(k.get("replacement") for k in faults["kills"]), faults["kills"]
    assert faults["disk_fills"] and all(f["free_bytes_when_full"] < 1 << 20 for f in faults["disk_fills"])
    assert sum(sum(outcomes.values()) for outcomes in faults["garbage"].values()) > 0
    assert faults["slowloris"]["connections"] > 0 and faults["ws_flood"]["sessions"] > 0
    mount_point = str(Path(result["meta"]["workdir"]) / "db")
    assert mount_point not in Path("/proc/mounts").read_text()
