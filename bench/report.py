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
        check = _check("RSS of 1,000 idle WebSocket sessions", ws, 100, unit="MiB")
        refused = _get(sections, "ws", "server", "open_errors") or 0
        if refused:  # measured on fewer sessions than asked: no verdict on a figure scaled up from them
            check.update({"pass": False, "missed_by": None,
                          "rule": f"<= 100 MiB, every session opened ({refused} were refused)"})
        checks.append(check)
    history = _get(sections, "history", "server") or {}
    added = next((v for k, v in history.items() if k.startswith("added_") and k.endswith("_p50_ms")), None)
    if history:
        sizes = _get(sections, "history", "config", "sizes") or [10, 1000]
        checks.append(_check(f"reply p50, {sizes[-1]}-turn minus {sizes[0]}-turn conversation", added, 10))
    tools = sections.get("tools") or {}
    if "1" in (tools.get("server") or {}):
        ci = _get(tools, "server", "1", "vs_baseline", "added_per_step_p50_ci_ms")
        checks.append(_check("tool reply, 1 at a time: added per step vs the SDK runner, p50",
                             _get(tools, "server", "1", "added_per_step_p50_ms"), 2,
                             interval=f"per step {ci[0]:+.3f} .. {ci[1]:+.3f} ms" if ci else None))
    if "server" in (sections.get("wrk") or {}):
        checks.append(_check("persisted throughput with wrk / baseline", _get(sections, "wrk", "ratio"), 0.9,
                             at_most=False, unit="x"))
    caching = sections.get("caching") or {}
    if "caching" in caching:
        checks.append(_check("input cost with caching (5m) / without", _get(caching, "caching", "input_cost_share"),
                             0.4, unit="x"))
        checks.append(_check("window-exceeding conversation: failed exchanges",
                             _get(caching, "window", "server", "errors"), 0, unit=""))
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
    if (tl := sections.get("tools")) and "server" in tl:
        rows = []
        for level in tl["server"]:
            for q in ("p50", "p99"):
                rows.append((f"{level} at once: reply {q} (ms)", _fmt(g(tl, "server", level, "reply", f"{q}_ms")),
                             _fmt(g(tl, "baseline", level, "reply", f"{q}_ms")), ""))
            for q in ("p50", "p99"):
                ci = g(tl, "server", level, "vs_baseline", f"added_per_step_{q}_ci_ms")
                span = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
                added = g(tl, "server", level, f"added_per_step_{q}_ms")
                rows.append((f"{level} at once: added per step {q}, 95% CI (ms)",
                             f"{added:+.2f}{span}" if added is not None else "-", "", ""))
            rows.append((f"{level} at once: errors", _fmt(g(tl, "server", level, "errors")),
                         _fmt(g(tl, "baseline", level, "errors")), ""))
        out.append((f"tools ({g(tl, 'config', 'steps')}-step replies; baseline = the SDK's tool runner)", rows))
    if (wk := sections.get("wrk")) and "server" in wk:
        rows = [("exchanges/s (server: answered and persisted)", _fmt(g(wk, "server", "per_second")),
                 _fmt(g(wk, "baseline", "per_second")), ""),
                ("ratio server/baseline", _fmt(g(wk, "ratio"), 3), "", ""),
                ("latency p50 / p99 (ms)", f"{_fmt(g(wk, 'server', 'latency', 'p50_ms'))} / "
                 f"{_fmt(g(wk, 'server', 'latency', 'p99_ms'))}", f"{_fmt(g(wk, 'baseline', 'latency', 'p50_ms'))} / "
                 f"{_fmt(g(wk, 'baseline', 'latency', 'p99_ms'))}", ""),
                ("CPU ms per exchange", _fmt(g(wk, "server", "cpu_ms_per_exchange")),
                 _fmt(g(wk, "baseline", "cpu_ms_per_exchange")), ""),
                ("wrk's CPU (share of one core)", _fmt(g(wk, "server", "wrk_cpu_share"), 3),
                 _fmt(g(wk, "baseline", "wrk_cpu_share"), 3), ""),
                ("completed / errors", f"{_fmt(g(wk, 'server', 'completed'))} / {_fmt(g(wk, 'server', 'errors'))}",
                 f"{_fmt(g(wk, 'baseline', 'completed'))} / {_fmt(g(wk, 'baseline', 'errors'))}", "")]
        out.append((f"wrk (1 thread, {g(wk, 'config', 'connections')} connections, {g(wk, 'config', 'database')})",
                    rows))
    if (rs := sections.get("resume")) and "replay" in rs:
        rows = [("events/s (server: replay of a finished reply; baseline: its live stream)",
                 _fmt(g(rs, "replay", "events_per_s"), 0), _fmt(g(rs, "live", "events_per_s"), 0),
                 _fmt(g(rs, "direct", "events_per_s"), 0)),
                ("first event p50 / p99 (ms)",
                 *(f"{_fmt(g(rs, who, 'first_event', 'p50_ms'))} / {_fmt(g(rs, who, 'first_event', 'p99_ms'))}"
                   for who in ("replay", "live", "direct"))),
                ("reconnect to a running reply: first event p50 / p99 (ms)",
                 f"{_fmt(g(rs, 'reconnect', 'first_event', 'p50_ms'))} / "
                 f"{_fmt(g(rs, 'reconnect', 'first_event', 'p99_ms'))}", "", ""),
                ("reconnect: continuous / complete / errors",
                 f"{g(rs, 'reconnect', 'continuous')} / {g(rs, 'reconnect', 'complete')} / "
                 f"{_fmt(g(rs, 'reconnect', 'errors'))}", "", ""),
                ("stored event: table bytes / payload bytes / DB growth",
                 f"{_fmt(g(rs, 'storage', 'table_bytes_per_event'), 0)} / "
                 f"{_fmt(g(rs, 'storage', 'payload_bytes_per_event'), 0)} / "
                 f"{_fmt(g(rs, 'storage', 'db_growth_bytes_per_event'), 0)}", "n/a (memory)", ""),
                ("replay errors", _fmt(g(rs, "replay", "errors")), _fmt(g(rs, "live", "errors")),
                 _fmt(g(rs, "direct", "errors")))]
        out.append((f"resume ({g(rs, 'config', 'tokens')}-token replies; reference = the fake's own stream)", rows))
    if (ca := sections.get("caching")) and "caching" in ca:
        c, w = ca["caching"], ca["window"]
        rows = [("input cost (USD), server: cache 5m; baseline: cache off",
                 _fmt(g(c, "cache_5m", "input_cost_usd"), 4), _fmt(g(c, "cache_off", "input_cost_usd"), 4),
                 f"share {_fmt(g(c, 'input_cost_share'), 3)}"),
                ("whole cost (USD, output included)", _fmt(g(c, "cache_5m", "cost_usd"), 4),
                 _fmt(g(c, "cache_off", "cost_usd"), 4), f"share {_fmt(g(c, 'cost_share'), 3)}"),
                ("reply p50 / p99 (ms)",
                 f"{_fmt(g(c, 'cache_5m', 'reply', 'p50_ms'))} / {_fmt(g(c, 'cache_5m', 'reply', 'p99_ms'))}",
                 f"{_fmt(g(c, 'cache_off', 'reply', 'p50_ms'))} / {_fmt(g(c, 'cache_off', 'reply', 'p99_ms'))}",
                 ""),
                ("paired on - off p50, 95% CI (ms)", _fmt(g(c, "latency_on_minus_off_p50_ms")) +
                 (" [{:+.2f}, {:+.2f}]".format(*g(c, "latency_on_minus_off_p50_ci_ms"))
                  if g(c, "latency_on_minus_off_p50_ci_ms") else ""), "", ""),
                (f"window of {_fmt(g(ca, 'config', 'context_window'))} tokens: exchanges answered / failed",
                 f"{_fmt(g(w, 'server', 'exchanges'))} / {_fmt(g(w, 'server', 'errors'))}",
                 f"{_fmt(g(w, 'baseline', 'exchanges'))} / fails at {_fmt(g(w, 'baseline', 'failed_at_exchange'))}",
                 ""),
                ("window: reply p50 / p99 (ms), before / after it filled",
                 f"{_fmt(g(w, 'server', 'reply_before_full', 'p50_ms'))} / "
                 f"{_fmt(g(w, 'server', 'reply_before_full', 'p99_ms'))}; "
                 f"{_fmt(g(w, 'server', 'reply_after_full', 'p50_ms'))} / "
                 f"{_fmt(g(w, 'server', 'reply_after_full', 'p99_ms'))}",
                 f"{_fmt(g(w, 'baseline', 'reply', 'p50_ms'))} / {_fmt(g(w, 'baseline', 'reply', 'p99_ms'))}", ""),
                ("window: turns sent / left out at the end; too-long refusals",
                 f"{_fmt(g(w, 'server', 'last_turns_sent'))} / {_fmt(g(w, 'server', 'last_turns_omitted'))}; "
                 f"{_fmt(g(w, 'server', 'too_long_refusals'))}", "", "")]
        out.append((f"caching ({g(ca, 'config', 'exchanges')} exchanges of {g(ca, 'config', 'turn_tokens')} tokens; "
                    f"{g(ca, 'config', 'window_exchanges')} in the small window)", rows))
    if (be := sections.get("backends")) and "ttft" in be:
        rows = []
        for level in (be["ttft"].get("sqlite") or {}):
            for q in ("p50", "p99"):
                rows.append((f"{level} stream(s): TTFT overhead {q} (ms), SQLite / PostgreSQL",
                             f"{_fmt(g(be, 'ttft', 'sqlite', level, f'overhead_{q}_ms'))} / "
                             f"{_fmt(g(be, 'ttft', 'postgres', level, f'overhead_{q}_ms'))}",
                             _fmt(g(be, "ttft", "baseline", level, f"overhead_{q}_ms")),
                             _fmt(g(be, "ttft", "direct", level, "ttft", f"{q}_ms"))))
        for workers, data in (be.get("throughput") or {}).items():
            rows.append((f"{workers} worker(s): exchanges/s, SQLite / PostgreSQL (ratio)",
                         f"{_fmt(g(data, 'sqlite', 'per_second'))} ({_fmt(g(data, 'sqlite', 'ratio'), 2)}) / "
                         f"{_fmt(g(data, 'postgres', 'per_second'))} ({_fmt(g(data, 'postgres', 'ratio'), 2)})",
                         _fmt(g(data, "baseline", "per_second")), ""))
            rows.append((f"{workers} worker(s): CPU ms per exchange, SQLite / PostgreSQL (+ postgres)",
                         f"{_fmt(g(data, 'sqlite', 'cpu_ms_per_exchange'))} / "
                         f"{_fmt(g(data, 'postgres', 'cpu_ms_per_exchange'))} "
                         f"(+{_fmt(g(data, 'postgres', 'postgres_cpu_ms_per_exchange'))})",
                         _fmt(g(data, "baseline", "cpu_ms_per_exchange")), ""))
            rows.append((f"{workers} worker(s): errors, SQLite / PostgreSQL",
                         f"{_fmt(g(data, 'sqlite', 'errors'))} / {_fmt(g(data, 'postgres', 'errors'))}",
                         _fmt(g(data, "baseline", "errors")), ""))
        out.append(("backends (SQLite and PostgreSQL side by side; reference = the fake's TTFT)", rows))
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
        elif "skipped" in data:
            lines.append(f"\n== {name}: skipped: {data['skipped']}")
    checks = result.get("targets", [])
    if checks:
        lines.append("\n== targets")
        width = max(len(c["target"]) for c in checks)
        for c in checks:
            verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c["pass"]]
            miss = (f"  (missed by {c['missed_by']} {c['unit']})" if c["pass"] is False and c["missed_by"] is not None
                    else "")
            lines.append(f"  {verdict:<4}  {c['target']:<{width}}  {_fmt(c['value'], 3):>10} {c['unit']:<3}  "
                         f"{c['rule']}{miss}")
            if c.get("interval"):
                lines.append(f"        {'':<{width}}  95% CI of the comparison over rounds: {c['interval']}")
    return "\n".join(lines).lstrip("\n")


# -- the README's table ----------------------------------------------------------------------------------------


def _n(value, digits: int | None = None) -> str:
    """A figure as the README prints it: three significant digits (2.40, 21.3, 206), or ``digits`` decimals
    below 1,000; thousands separated, without decimals, from 1,000 on."""
    if value is None:
        return "–"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    if digits is None:
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f}"


def _pair(a, b, unit: str = " ms") -> str:
    return f"{_n(a)} / {_n(b)}{unit}"


def _signed(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:+.{digits}f}".replace("-", "−")


def _span(ci, digits: int = 2, unit: str = "") -> str:
    return "" if not ci else f" ({_signed(ci[0], digits)} to {_signed(ci[1], digits)}{unit})"


def _overheads(ttft: dict, who: str, level: str) -> str:
    return _pair(_get(ttft, who, level, "overhead_p50_ms"), _get(ttft, who, level, "overhead_p99_ms"))


def _direct_ttft(ttft: dict, level: str) -> str:
    return f"(TTFT {_latencies(_get(ttft, 'direct', level, 'ttft'))})"


def _latencies(summary: dict | None) -> str:
    return _pair(_get(summary or {}, "p50_ms"), _get(summary or {}, "p99_ms"))


def _ratio_span(ci) -> str:
    return "" if not ci else f" ({ci[0]:.2f}–{ci[1]:.2f})"


def readme_rows(sections: dict) -> list[tuple[str, str, str, str]]:
    """The README's Performance table, row by row: (figure, agent_server, baseline, reference)."""
    g: Callable = _get
    rows: list[tuple[str, str, str, str]] = []
    ttft = sections.get("ttft") or {}
    for level in (ttft.get("server") or {}):
        label = "1 stream" if level == "1" else f"{level} streams"
        rows.append((f"TTFT overhead, {label}, p50 / p99", _overheads(ttft, "server", level),
                     _overheads(ttft, "baseline", level), _direct_ttft(ttft, level)))
        vs = g(ttft, "server", level, "vs_baseline") or {}
        if level == "1":
            cells = [f"{_signed(g(vs, q, 'overhead_diff_ms'))} ms{_span(g(vs, q, 'overhead_diff_ci_ms'))}"
                     for q in ("p50", "p99")]
            rows.append(("… agent_server − baseline, p50; p99 (95% intervals)", "; ".join(cells), "", ""))
        else:
            cells = [f"{_n(g(vs, q, 'overhead_ratio'))}×{_ratio_span(g(vs, q, 'overhead_ratio_ci'))}"
                     for q in ("p50", "p99")]
            rows.append(("… agent_server / baseline, p50; p99 (95% intervals)", "; ".join(cells), "", ""))
        if "against" in ttft:
            rev = (g(ttft, "config", "against_revision") or "?")[:9]
            rows.append((f"… agent_server at {rev}, p50 / p99", _overheads(ttft, "against", level), "", ""))
    if "server" in (tp := sections.get("throughput") or {}):
        rows.append((f"persisted `POST /agent` exchanges/s, {g(tp, 'config', 'clients')} clients (asyncio client)",
                     f"{_n(g(tp, 'server', 'per_second'), 1)} (ratio {_n(g(tp, 'ratio'))})",
                     _n(g(tp, "baseline", "per_second"), 1), ""))
        rows.append(("CPU per exchange", f"{_n(g(tp, 'server', 'cpu_ms_per_exchange'))} ms",
                     f"{_n(g(tp, 'baseline', 'cpu_ms_per_exchange'))} ms", ""))
    if "server" in (wk := sections.get("wrk") or {}):
        rows.append((f"persisted `POST /agent` exchanges/s, wrk (1 thread, {g(wk, 'config', 'connections')} "
                     "connections)", f"{_n(g(wk, 'server', 'per_second'), 1)} (ratio {_n(g(wk, 'ratio'))})",
                     _n(g(wk, "baseline", "per_second"), 1),
                     f"(wrk: {_n(100 * (g(wk, 'server', 'wrk_cpu_share') or 0), 0)} % of a core)"))
        rows.append(("wrk: CPU per exchange", f"{_n(g(wk, 'server', 'cpu_ms_per_exchange'))} ms",
                     f"{_n(g(wk, 'baseline', 'cpu_ms_per_exchange'))} ms", ""))
    if "server" in (fo := sections.get("fanout") or {}):
        streams, tokens = g(fo, "config", "streams"), g(fo, "config", "tokens_per_stream")
        rows.append((f"fan-out, {_n(streams)} streams × {_n(tokens)} tokens: tokens/s",
                     *(_n(g(fo, who, "tokens_per_s"), 0) for who in ("server", "baseline", "direct"))))
        rows.append(("fan-out: CPU s per 1,000 tokens", *(f"{g(fo, who, 'cpu_s_per_1k_tokens') or 0:.3f}"
                                                         for who in ("server", "baseline", "direct"))))
        rows.append(("fan-out: added inter-token delay p99",
                     *(f"{_n(g(fo, who, 'added_gap_p99_ms'), 1)} ms" for who in ("server", "baseline", "direct"))))
    if "server" in (ws := sections.get("ws") or {}):
        # The sessions each target really opened (a target may refuse some): the figures are theirs.
        opened = {who: g(ws, who, "idle_sessions") for who in ("server", "baseline")}
        label = (f"{_n(opened['server'])}" if opened["server"] == opened["baseline"]
                 else f"{_n(opened['server'])} / {_n(opened['baseline'])}")
        rows.append((f"{label} idle WebSocket sessions: extra RSS",
                     f"{_n(g(ws, 'server', 'extra_mib'), 1)} MiB ({_n(g(ws, 'server', 'rss_per_session_kib'), 0)} "
                     "KiB each)", f"{_n(g(ws, 'baseline', 'extra_mib'), 1)} MiB", ""))
        rows.append((f"{_n(g(ws, 'config', 'active_sessions'))} active WebSocket sessions: replies/s",
                     _n(g(ws, "server", "replies_per_s"), 1), _n(g(ws, "baseline", "replies_per_s"), 1), ""))
    if "server" in (hi := sections.get("history") or {}):
        for size in g(hi, "config", "sizes") or []:
            rows.append((f"reply p50 / p99 on a {_n(size)}-turn conversation",
                         _pair(g(hi, "server", str(size), "p50_ms"), g(hi, "server", str(size), "p99_ms")),
                         _pair(g(hi, "baseline", str(size), "p50_ms"), g(hi, "baseline", str(size), "p99_ms")), ""))
        db = g(hi, "server", "db_size") or {}
        rows.append((f"10-turn reply in a DB of {_n(db.get('tiny_db_turns'))} vs {_n(db.get('big_db_turns'))} turns",
                     f"{_n(g(db, '10_in_tiny_db', 'p50_ms'))} vs {_n(g(db, '10_in_big_db', 'p50_ms'))} ms", "", ""))
        st = g(hi, "server", "storage") or {}
        rows.append(("database bytes per turn", f"{_n(st.get('db_bytes_per_turn'), 0)} "
                     f"({_n(g(hi, 'config', 'chars_per_seeded_turn'), 0)}-char turns)", "", ""))
    if "1" in ((tl := sections.get("tools") or {}).get("server") or {}):
        steps = g(tl, "config", "steps")
        for level in tl["server"]:
            label = "1 reply" if level == "1" else f"{level} replies at once"
            rows.append((f"{steps}-step tool reply, {label}: p50 / p99", _latencies(g(tl, "server", level, "reply")),
                         _latencies(g(tl, "baseline", level, "reply")) + " (SDK tool runner)", ""))
            cells = [f"{_signed(g(tl, 'server', level, f'added_per_step_{q}_ms'))} ms"
                     f"{_span(g(tl, 'server', level, 'vs_baseline', f'added_per_step_{q}_ci_ms'))}"
                     for q in ("p50", "p99")]
            rows.append(("… added per step, p50; p99 (95% intervals)", "; ".join(cells), "", ""))
    if "replay" in (rs := sections.get("resume") or {}):
        tokens = g(rs, "config", "tokens")
        rows.append((f"replay of a finished {_n(tokens)}-token reply: events/s",
                     _n(g(rs, "replay", "events_per_s"), 0), f"{_n(g(rs, 'live', 'events_per_s'), 0)} (live stream)",
                     f"{_n(g(rs, 'direct', 'events_per_s'), 0)} (the fake's stream)"))
        rows.append(("… first replayed event, p50 / p99", _pair(g(rs, "replay", "first_event", "p50_ms"),
                                                            g(rs, "replay", "first_event", "p99_ms")), "", ""))
        rows.append(("reconnect to a running reply → first event, p50 / p99",
                     _pair(g(rs, "reconnect", "first_event", "p50_ms"), g(rs, "reconnect", "first_event", "p99_ms")),
                     "n/a", ""))
        rows.append(("database bytes per stored event", f"{_n(g(rs, 'storage', 'table_bytes_per_event'), 0)} "
                     f"(payload {_n(g(rs, 'storage', 'payload_bytes_per_event'), 0)})", "n/a (memory)", ""))
    if "caching" in (ca := sections.get("caching") or {}):
        c, w, cfg = ca["caching"], ca["window"], ca.get("config") or {}
        rows.append((f"{cfg.get('exchanges')}-exchange conversation, {_n(cfg.get('turn_tokens'))}-token messages: "
                     "input cost, cache 5m (share of off)", f"${g(c, 'cache_5m', 'input_cost_usd') or 0:.4f} "
                     f"({_n(100 * (g(c, 'input_cost_share') or 0), 0)} %)",
                     f"${g(c, 'cache_off', 'input_cost_usd') or 0:.4f} (agent_server, cache off)", ""))
        rows.append(("… reply p50 / p99, cache 5m; cache off", _pair(g(c, "cache_5m", "reply", "p50_ms"),
                                                                 g(c, "cache_5m", "reply", "p99_ms")),
                     _pair(g(c, "cache_off", "reply", "p50_ms"), g(c, "cache_off", "reply", "p99_ms")),
                     f"(on − off p50 {_signed(g(c, 'latency_on_minus_off_p50_ms'))} ms"
                     f"{_span(g(c, 'latency_on_minus_off_p50_ci_ms'))})"))
        failed = g(w, "baseline", "failed_at_exchange")
        rows.append((f"{cfg.get('window_exchanges')}-exchange conversation in a {_n(cfg.get('context_window'))}-token "
                     "window: reply p50 / p99", f"{_latencies(g(w, 'server', 'reply'))} "
                     f"({_n(g(w, 'server', 'errors'))} failed; at the end {_n(g(w, 'server', 'last_turns_sent'))} "
                     f"turns sent, {_n(g(w, 'server', 'last_turns_omitted'))} left out)",
                     f"fails at exchange {failed}" if failed else "no failure", ""))
    if "ttft" in (be := sections.get("backends") or {}):
        for level in (be["ttft"].get("sqlite") or {}):
            label = "1 stream" if level == "1" else f"{level} streams"
            for kind, name in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
                rows.append((f"{name}: TTFT overhead, {label}, p50 / p99", _overheads(be["ttft"], kind, level),
                             _overheads(be["ttft"], "baseline", level), _direct_ttft(be["ttft"], level)))
        for workers, data in (be.get("throughput") or {}).items():
            label = "1 worker" if workers == "1" else f"{workers} workers"
            for kind, name in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
                extra = (f" + {_n(g(data, 'postgres', 'postgres_cpu_ms_per_exchange'))} ms PostgreSQL"
                         if kind == "postgres" else "")
                rows.append((f"{name}, {label}: wrk exchanges/s; CPU per exchange",
                             f"{_n(g(data, kind, 'per_second'), 1)} (ratio {_n(g(data, kind, 'ratio'))}); "
                             f"{_n(g(data, kind, 'cpu_ms_per_exchange'))} ms{extra}",
                             f"{_n(g(data, 'baseline', 'per_second'), 1)}; "
                             f"{_n(g(data, 'baseline', 'cpu_ms_per_exchange'))} ms",
                             ""))
    return rows


def readme_table(result: dict) -> str:
    """The README's Performance table (Markdown) from a result: ``python -m bench.report RESULT.json``."""
    lines = ["| figure | agent_server | baseline proxy | fake upstream alone |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in readme_rows(result.get("sections", {}))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m bench.report",
                                     description="The README's Performance table (Markdown), or the console table "
                                                 "with --console, of a saved result (bench/results/latest.json).")
    parser.add_argument("result", nargs="?", default=str(Path(__file__).parent / "results" / "latest.json"))
    parser.add_argument("--console", action="store_true", help="the console table and the targets instead")
    args = parser.parse_args(argv)
    result = json.loads(Path(args.result).read_text())
    print(table(result) if args.console else readme_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
