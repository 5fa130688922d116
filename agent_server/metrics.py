"""Prometheus metrics (``GET /metrics``).

One process: its own registry (so tests can build apps side by side). ``agent-server serve --workers N``:
a scrape reaches one worker, so every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(``server.py`` sets it before the workers start) and each scrape adds up all of them: the figures are the
server's, whichever worker answers. The gauges count live workers only (a dead worker's files are marked
dead by the supervisor when it reaps it); the counters keep what dead workers counted.
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .money.prices import Usage

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def shared_by_workers() -> bool:
    """Whether this process's metric values live in the workers' shared files (prometheus_client decides
    when it is imported, from ``PROMETHEUS_MULTIPROC_DIR``)."""
    return values.ValueClass is not values.MutexValue


class Metrics:
    def __init__(self) -> None:
        self.shared = shared_by_workers()
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "agent_http_requests", "HTTP requests and WebSocket sessions by route and status",
            ["route", "status"], registry=registry,
        )
        self.upstream_calls = Counter(
            "agent_upstream_calls", "Replies asked of the upstream, by route, model and outcome",
            ["route", "model", "status"], registry=registry,
        )
        self.upstream_latency = Histogram(
            "agent_upstream_latency_seconds", "Whole upstream call, retries included", ["model"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.ttft = Histogram(
            "agent_upstream_ttft_seconds", "Time to the first token of streamed replies", ["model"],
            buckets=TTFT_BUCKETS, registry=registry,
        )
        self.tokens = Counter("agent_tokens", "Tokens by kind and model", ["kind", "model"], registry=registry)
        self.cost = Counter("agent_cost_usd", "Estimated cost in USD by model", ["model"], registry=registry)
        self.unpriced = Counter(
            "agent_unpriced_calls", "Upstream calls whose model has no price", ["model"], registry=registry
        )
        self.in_flight = Gauge("agent_replies_in_flight", "Replies being generated now", registry=registry,
                               multiprocess_mode="livesum")
        self.ws_sessions = Gauge("agent_websocket_sessions", "Open WebSocket sessions", registry=registry,
                                 multiprocess_mode="livesum")
        self.rate_limited = Counter(
            "agent_rate_limited", "Calls refused by this server's limits", ["reason"], registry=registry
        )
        self.upstream_errors = Counter(
            "agent_upstream_errors", "Failed upstream calls by error type", ["type"], registry=registry
        )
        self.tool_runs = Counter(
            "agent_tool_runs", "Tool runs by tool (names come from the configuration) and outcome",
            ["tool", "outcome"], registry=registry,
        )
        self.db_write = Histogram(
            "agent_db_write_seconds", "Write transactions, lock wait excluded", buckets=DB_BUCKETS,
            registry=registry,
        )

    def observe_call(
        self, *, route: str, model: str, status: str, error_type: str | None, usage: Usage,
        cost: Decimal | None, latency_s: float, ttft_s: float | None,
    ) -> None:
        self.upstream_calls.labels(route, model, status).inc()
        self.upstream_latency.labels(model).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if status == "error" and error_type:
            self.upstream_errors.labels(error_type).inc()
        write_1h = usage.cache_write_1h_tokens or 0
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_write_5m", usage.cache_creation_input_tokens - write_1h),
            ("cache_write_1h", write_1h),
        ):
            if count:
                self.tokens.labels(kind, model).inc(count)
        if cost is None:
            self.unpriced.labels(model).inc()
        else:
            self.cost.labels(model).inc(float(cost))

    def render(self) -> bytes:
        if not self.shared:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker)
        return generate_latest(every_worker)
