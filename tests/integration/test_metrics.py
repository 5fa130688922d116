"""GET /metrics after a scripted session: the counters and cost totals equal what the audit API reports."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_server.fake_upstream import Behaviour
from tests.conftest import BOB, auth


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found: dict, name: str, **labels: str) -> float:
    return sum(
        value for (sample, sample_labels), value in found.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


async def test_metrics_agree_with_the_audit(client, fake) -> None:
    usage = {"cache_creation_input_tokens": 30, "cache_read_input_tokens": 7,
             "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20}}
    fake.script(Behaviour(usage=usage))
    first = (await client.post("/agent", json={"message": "one"})).json()
    conversation = first["conversation_id"]
    assert (await client.post("/agent", json={"message": "two", "conversation_id": conversation})).status_code == 200
    async with client.stream("POST", "/agent/stream", json={"message": "three", "conversation_id": conversation}) as r:
        assert r.status_code == 200
        body = "".join([chunk async for chunk in r.aiter_text()])
    assert "event: done" in body
    fake.script(Behaviour(status=500, times=3))
    failed = await client.post("/agent", json={"message": "four", "conversation_id": conversation})
    assert failed.status_code == 502
    assert (await client.get("/conversations/nope")).status_code == 404

    audit = (await client.get(f"/conversations/{conversation}")).json()
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    found = samples(metrics.text)
    totals = audit["totals"]

    assert total(found, "agent_upstream_calls_total") == totals["requests"] == 4
    assert total(found, "agent_upstream_calls_total", status="ok") == 3
    assert total(found, "agent_upstream_calls_total", status="error", route="agent") == 1
    assert total(found, "agent_upstream_errors_total", type="upstream_error") == 1
    assert total(found, "agent_tokens_total", kind="input") == totals["input_tokens"]
    assert total(found, "agent_tokens_total", kind="output") == totals["output_tokens"]
    assert total(found, "agent_tokens_total", kind="cache_read") == totals["cache_read_input_tokens"] == 7
    assert (total(found, "agent_tokens_total", kind="cache_write_5m")
            + total(found, "agent_tokens_total", kind="cache_write_1h")) == totals["cache_creation_input_tokens"]
    assert total(found, "agent_tokens_total", kind="cache_write_1h") == 20
    assert total(found, "agent_cost_usd_total") == pytest.approx(totals["cost_usd"], abs=1e-9)
    assert total(found, "agent_upstream_ttft_seconds_count") == 1  # the one streamed reply
    assert total(found, "agent_upstream_latency_seconds_count") == 4
    assert total(found, "agent_http_requests_total", route="/agent", status="200") == 2
    assert total(found, "agent_http_requests_total", route="/agent", status="502") == 1
    assert total(found, "agent_http_requests_total", route="/conversations/{id}", status="404") == 1
    assert total(found, "agent_db_write_seconds_count") >= 8  # two transactions per reply
    assert total(found, "agent_replies_in_flight") == 0


async def test_metrics_need_a_key_when_keys_are_configured(client) -> None:
    assert (await client.get("/metrics", headers={"Authorization": ""})).status_code == 401
    assert (await client.get("/metrics", headers=auth(BOB))).status_code == 200
