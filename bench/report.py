"""The targets (pass/fail) and the readable table of a result."""

from __future__ import annotations

from collections.abc import Callable

from .scenarios import ttft as ttft_scenario


def _get(data: dict, *path: str):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _check(name: str, value, limit, *, at_most: bool = True, unit: str = "ms", limit_text: str | None = None,
           interval: str | None = None) -> dict:
    if value is None or limit is None:
        passed, miss = None, None
    else:
        passed = value <= limit if at_most else value >= limit
        miss = None if passed else round(value - limit if at_most else limit - value, 3)
    sign = "<=" if at_most else ">="
    return {"target": name, "value": value, "limit": None if limit is None else round(limit, 3), "unit": unit,
            "rule": limit_text or f"{sign} {limit} {unit}", "pass": passed, "missed_by": miss,
            **({"interval": interval} if interval else {})}


def _interval(ttft: dict, level: str, q: str, kind: str) -> str | None:
    """The 95% bootstrap interval of server vs baseline at ``level``, as text (None when not computed)."""
    found = _get(ttft, "server", level, "vs_baseline", q, f"overhead_{kind}_ci{'_ms' if kind == 'diff' else ''}")
    if not found:
        return None
    if kind == "diff":
        return f"server - baseline {found[0]:+.3f} .. {found[1]:+.3f} ms"
    return f"server / baseline {found[0]:.2f} .. {found[1]:.2f} x"


def _high_level(ttft: dict) -> str | None:
    levels = [k for k in (ttft.get("server") or {}) if k != "1"]
    return levels[0] if levels else None


def targets(sections: dict) -> list[dict]:
    """Every target of the brief that the sections ran allow to check."""
    checks = []
    ttft = sections.get("ttft") or {}
    if "server" in ttft:
        over = lambda who, level, q: _get(ttft, who, level, f"overhead_{q}_ms")  # noqa: E731
        checks += [
            _check("TTFT overhead, 1 stream, p50", over("server", "1", "p50"), 3),
            _check("TTFT overhead, 1 stream, p99", over("server", "1", "p99"), 15),
        ]
        for q in ("p50", "p99"):
            base = over("baseline", "1", q)
            checks.append(_check(f"TTFT overhead, 1 stream, {q} vs baseline", over("server", "1", q), base,
                                 limit_text=f"<= baseline ({base} ms)", interval=_interval(ttft, "1", q, "diff")))
        high = _high_level(ttft)
        if high:
            for q in ("p50", "p99"):
                base = over("baseline", high, q)
                limit = None if base is None else 1.2 * base
                checks.append(_check(f"TTFT overhead, {high} streams, {q} vs baseline", over("server", high, q),
                                     limit, limit_text=f"<= 1.2 x baseline ({base} ms)",
                                     interval=_interval(ttft, high, q, "ratio")))
    ratio = _get(sections, "throughput", "ratio")
    if "server" in (sections.get("throughput") or {}):
        checks.append(_check("persisted throughput / baseline", ratio, 0.8, at_most=False, unit="x"))
    ws = _get(sections, "ws", "server", "extra_mib_per_1000")
    if "server" in (sections.get("ws") or {}):
        checks.append(_check("RSS of 1,000 idle WebSocket sessions", ws, 100, unit="MiB"))
    history = _get(sections, "history", "server") or {}
    added = next((v for k, v in history.items() if k.startswith("added_") and k.endswith("_p50_ms")), None)
    if history:
        sizes = _get(sections, "history", "config", "sizes") or [10, 1000]
        checks.append(_check(f"reply p50, {sizes[-1]}-turn minus {sizes[0]}-turn conversation", added, 10))
    return checks


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


Row = tuple[str, str, str, str]


def _rows(sections: dict) -> list[tuple[str, list[Row]]]:
    out: list[tuple[str, list[Row]]] = []
    g: Callable = _get
    if ttft := sections.get("ttft"):
        rows: list[Row] = []
        for level in (ttft.get("server") or {}):
            for q in ("p50", "p99"):
                rows.append((f"{level} stream(s): TTFT {q} (ms)", _fmt(g(ttft, "server", level, "ttft", f"{q}_ms")),
                             _fmt(g(ttft, "baseline", level, "ttft", f"{q}_ms")),
                             _fmt(g(ttft, "direct", level, "ttft", f"{q}_ms"))))
                rows.append((f"{level} stream(s): overhead {q} (ms)",
                             _fmt(g(ttft, "server", level, f"overhead_{q}_ms")),
                             _fmt(g(ttft, "baseline", level, f"overhead_{q}_ms")), "0"))
            for q in ("p50", "p99"):
                vs = g(ttft, "server", level, "vs_baseline", q) or {}
                diff, ci = vs.get("overhead_diff_ms"), vs.get("overhead_diff_ci_ms")
                if diff is not None:
                    span = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
                    rows.append((f"{level} stream(s): overhead {q} server - baseline, 95% CI (ms)",
                                 f"{diff:+.2f}{span}", "", ""))
            rows.append((f"{level} stream(s): errors", _fmt(g(ttft, "server", level, "errors")),
                         _fmt(g(ttft, "baseline", level, "errors")), _fmt(g(ttft, "direct", level, "errors"))))
            for key, label in (("first_delta_ms", "fake's first delta"), ("head_ms", "fake's response head sent")):
                rows.append((f"{level} stream(s): {label}, ms after accepting, p50",
                             *(_fmt(g(ttft, who, level, "fake", key, "p50"), 3) for who in ttft_scenario.ORDER)))
            if "against" in ttft:
                revision = g(ttft, "config", "against_revision") or "?"
                for q in ("p50", "p99"):
                    rows.append((f"{level} stream(s): overhead {q} (ms), agent_server at {revision[:9]}",
                                 _fmt(g(ttft, "against", level, f"overhead_{q}_ms")), "", ""))
        out.append(("ttft (direct = the fake upstream itself)", rows))
    if tp := sections.get("throughput"):
        rows = [("exchanges/s (server: answered and persisted)", _fmt(g(tp, "server", "per_second")),
                 _fmt(g(tp, "baseline", "per_second")), ""),
                ("ratio server/baseline", _fmt(g(tp, "ratio"), 3), "", ""),
                ("latency p50 / p99 (ms)", f"{_fmt(g(tp, 'server', 'latency', 'p50_ms'))} / "
                 f"{_fmt(g(tp, 'server', 'latency', 'p99_ms'))}", f"{_fmt(g(tp, 'baseline', 'latency', 'p50_ms'))} / "
                 f"{_fmt(g(tp, 'baseline', 'latency', 'p99_ms'))}", ""),
                ("CPU ms per exchange", _fmt(g(tp, "server", "cpu_ms_per_exchange")),
                 _fmt(g(tp, "baseline", "cpu_ms_per_exchange")), ""),
                ("completed / errors", f"{_fmt(g(tp, 'server', 'completed'))} / {_fmt(g(tp, 'server', 'errors'))}",
                 f"{_fmt(g(tp, 'baseline', 'completed'))} / {_fmt(g(tp, 'baseline', 'errors'))}", "")]
        out.append(("throughput", rows))
    if fo := sections.get("fanout"):
        rows = []
        for label, key, digits in (("tokens/s", "tokens_per_s", 0),
                                   ("CPU s per 1,000 tokens", "cpu_s_per_1k_tokens", 4),
                                   ("added inter-token delay p50 (ms)", "added_gap_p50_ms", 2),
                                   ("added inter-token delay p99 (ms)", "added_gap_p99_ms", 2),
                                   ("client CPU s (load generator)", "client_cpu_s", 2),
                                   ("streams ok / errors", None, 0)):
            if key is None:
                cells = [f"{_fmt(g(fo, w, 'streams_ok'))} / {_fmt(g(fo, w, 'errors'))}" for w in
                         ("server", "baseline", "direct")]
            else:
                cells = [_fmt(g(fo, w, key), digits) for w in ("server", "baseline", "direct")]
            rows.append((label, *cells))
        out.append((f"fanout (ideal {_fmt(g(fo, 'config', 'ideal_tokens_per_s'), 0)} tokens/s; "
                    "direct = the fake itself, its CPU)", rows))
    if ws := sections.get("ws"):
        rows = [(f"RSS per idle session (KiB), {_fmt(g(ws, 'server', 'idle_sessions'))} sessions",
                 _fmt(g(ws, "server", "rss_per_session_kib")), _fmt(g(ws, "baseline", "rss_per_session_kib")), ""),
                ("extra RSS scaled to 1,000 sessions (MiB)", _fmt(g(ws, "server", "extra_mib_per_1000")),
                 _fmt(g(ws, "baseline", "extra_mib_per_1000")), ""),
                ("active: replies/s", _fmt(g(ws, "server", "replies_per_s")), _fmt(g(ws, "baseline", "replies_per_s")),
                 ""),
                ("active: reply latency p50 / p99 (ms)",
                 f"{_fmt(g(ws, 'server', 'latency', 'p50_ms'))} / {_fmt(g(ws, 'server', 'latency', 'p99_ms'))}",
                 f"{_fmt(g(ws, 'baseline', 'latency', 'p50_ms'))} / {_fmt(g(ws, 'baseline', 'latency', 'p99_ms'))}",
                 ""),
                ("open errors / reply errors",
                 f"{_fmt(g(ws, 'server', 'open_errors'))} / {_fmt(g(ws, 'server', 'reply_errors'))}",
                 f"{_fmt(g(ws, 'baseline', 'open_errors'))} / {_fmt(g(ws, 'baseline', 'reply_errors'))}", "")]
        out.append(("ws", rows))
    if hi := sections.get("history"):
        rows = []
        for size in hi.get("config", {}).get("sizes", []):
            rows.append((f"{size}-turn conversation: reply p50 / p99 (ms)",
                         f"{_fmt(g(hi, 'server', str(size), 'p50_ms'))} / {_fmt(g(hi, 'server', str(size), 'p99_ms'))}",
                         f"{_fmt(g(hi, 'baseline', str(size), 'p50_ms'))} / "
                         f"{_fmt(g(hi, 'baseline', str(size), 'p99_ms'))}", ""))
        added = [k for k in (hi.get("server") or {}) if k.startswith("added_") and k.endswith("p50_ms")]
        if added:
            rows.append((f"{added[0][6:-7].replace('_', ' ')}: added p50 (ms)", _fmt(g(hi, "server", added[0])),
                         _fmt(g(hi, "baseline", added[0])), ""))
        db = g(hi, "server", "db_size") or {}
        rows.append((f"10 turns, DB of {_fmt(db.get('big_db_turns'))} vs {_fmt(db.get('tiny_db_turns'))} turns: "
                     "p50 (ms)", f"{_fmt(g(db, '10_in_big_db', 'p50_ms'))} vs {_fmt(g(db, '10_in_tiny_db', 'p50_ms'))}",
                     "", f"+{_fmt(db.get('added_big_vs_tiny_p50_ms'))}"))
        st = g(hi, "server", "storage") or {}
        rows.append(("DB bytes per turn (big DB / server-written)",
                     f"{_fmt(st.get('db_bytes_per_turn'), 0)} / {_fmt(st.get('server_written_bytes_per_turn'), 0)}",
                     "n/a (memory)", f"content {_fmt(st.get('content_chars_per_turn'), 0)} / "
                     f"{_fmt(st.get('server_written_chars_per_turn'), 0)} chars"))
        out.append(("history", rows))
    return out


def table(result: dict) -> str:
    sections = result.get("sections", {})
    lines = []
    header = ("metric", "agent_server", "baseline", "reference")
    for title, rows in _rows(sections):
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
        lines.append(f"\n== {title}")
        for row in [header, *rows]:
            lines.append("  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                          for i, (c, w) in enumerate(zip(row, widths))))
    for name, data in sections.items():
        if "error" in data:
            lines.append(f"\n== {name}: FAILED: {data['error']}")
    checks = result.get("targets", [])
    if checks:
        lines.append("\n== targets")
        width = max(len(c["target"]) for c in checks)
        for c in checks:
            verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c["pass"]]
            miss = f"  (missed by {c['missed_by']} {c['unit']})" if c["pass"] is False else ""
            lines.append(f"  {verdict:<4}  {c['target']:<{width}}  {_fmt(c['value'], 3):>10} {c['unit']:<3}  "
                         f"{c['rule']}{miss}")
            if c.get("interval"):
                lines.append(f"        {'':<{width}}  95% CI of the comparison over rounds: {c['interval']}")
    return "\n".join(lines).lstrip("\n")
