"""Optional sampling profiles of the server and the baseline under load (``--profile DIR``), with py-spy.

py-spy samples the GIL holder (Python CPU time) and writes collapsed stacks (``--format raw``: one
``frame;frame;... count`` line per stack, readable by speedscope and flamegraph.pl) to
``DIR/<section>.<server|baseline>.collapsed.txt``; ``summarize`` turns them into the hot spots: functions
by self samples, agent_server functions and packages by inclusive samples (counted once per stack).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from .progress import Progress

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


class Profiler:
    """Records each named process tree while the ``with`` block runs (``run.profiler(section, stack)`` names
    the server and the baseline); ``summary`` then maps each name to its hot spots."""

    def __init__(self, out_dir: str | None, section: str, pids: dict[str, int], progress: Progress):
        self.out_dir = Path(out_dir) if out_dir else None
        self.section = section
        self.pids = pids
        self.progress = progress
        self.running: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.summary: dict | None = None

    def __enter__(self) -> Profiler:
        if self.out_dir is None:
            return self
        beside = Path(sys.executable).parent / "py-spy"  # the venv's, even when the venv is not activated
        py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if py_spy is None:
            self.progress.note("--profile: py-spy is not installed (pip install py-spy); not profiling")
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.out_dir / f"{self.section}.{name}.collapsed.txt"
            # --gil: only the thread holding the GIL, i.e. Python CPU time. py-spy's idle detection takes
            # threads parked on a queue (aiosqlite's, the default executor's) and uvloop's epoll for work.
            # SQLite's own C work (the GIL released) is therefore not in these profiles.
            proc = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--subprocesses", "--gil", "--rate", "100",
                 "--format", "raw", "--output", str(out)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            self.running[name] = (proc, out)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.running:
            return
        for proc, _ in self.running.values():
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        self.summary = {}
        for name, (proc, out) in self.running.items():
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if out.exists():
                self.summary[name] = {**summarize(out), "file": str(out)}
            else:
                self.summary[name] = {"error": (err or b"").decode(errors="replace")[-500:]}


def _frame(raw: str) -> tuple[str, str]:
    match = _FRAME.match(raw.strip())
    if not match:
        return raw.strip(), ""
    return match["func"], match["file"]


def _short(func: str, file: str) -> str:
    return f"{func} ({file})"  # py-spy already prints paths relative to their sys.path entry


def summarize(path: Path, top: int = 25) -> dict:
    self_samples: Counter[str] = Counter()
    agent_inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_samples[_short(*frames[-1])] += n
        seen_agent: set[str] = set()
        seen_pkg: set[str] = set()
        for func, file in frames:
            if "agent_server/" in file:
                seen_agent.add(_short(func, file))
            pkg = _package(file)
            if pkg:
                seen_pkg.add(pkg)
        for name in seen_agent:
            agent_inclusive[name] += n
        for name in seen_pkg:
            packages[name] += n

    def share(counter: Counter[str]) -> list[list]:
        return [[name, n, round(100 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    return {"samples": total, "self_top": share(self_samples), "agent_server_inclusive": share(agent_inclusive),
            "packages_inclusive": share(packages)}


def _package(file: str) -> str | None:
    if not file:
        return None
    if file.startswith("<"):
        return "stdlib"
    top = file.split("/", 1)[0].removesuffix(".py")
    return f"stdlib:{top}" if top in sys.stdlib_module_names else top
