"""GET /metrics after a scripted session: the counters and cost totals equal what the audit API reports."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_server.fake_upstream import Behaviour
from tests.conftest import ALICE, BOB, app_client, auth, make_settings

METRICS_TOKEN = "metrics-token-for-prometheus-0123"


@pytest.fixture
async def client(database_url, fake):
    """alice's key, on a server whose operator credential is a metrics token and whose admin key is bob's."""
    settings = make_settings(database_url, fake, AGENT_METRICS_TOKEN=METRICS_TOKEN, AGENT_ADMIN_KEYS="bob")
    async with app_client(settings) as http:
        http.headers.update(auth(ALICE))
        yield http


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
    metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
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
    assert total(found, "agent_upstream_ttft_seconds_count") == 3  # every call streams; the failed one had no token
    assert total(found, "agent_upstream_latency_seconds_count") == 4
    assert total(found, "agent_http_requests_total", route="/agent", status="200") == 2
    assert total(found, "agent_http_requests_total", route="/agent", status="502") == 1
    assert total(found, "agent_http_requests_total", route="/conversations/{id}", status="404") == 1
    assert total(found, "agent_db_write_seconds_count") >= 8  # two transactions per reply
    assert total(found, "agent_replies_in_flight") == 0


async def test_metrics_need_an_operator_credential(client) -> None:
    """Metrics show every tenant's spend: a client key that is not an admin key gets 403, no key 401; the
    metrics token and an admin key get them."""
    assert (await client.get("/metrics", headers={"Authorization": ""})).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer not-a-key-at-all-000"})).status_code == 401
    refused = await client.get("/metrics", headers=auth(ALICE))
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert (await client.get("/metrics", headers=auth(BOB))).status_code == 200
    token = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert token.status_code == 200 and "agent_http_requests_total" in token.text


async def test_with_keys_and_no_operator_credential_metrics_are_closed(database_url, fake) -> None:
    async with app_client(make_settings(database_url, fake)) as http:
        assert (await http.get("/metrics", headers=auth(ALICE))).status_code == 403
