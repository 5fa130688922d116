"""Who may call what: every authenticated route against every kind of caller.

The matrix: POST /agent, POST /agent/stream, GET /conversations, GET /conversations/{id}, GET /metrics and a
WebSocket resume, each called with no key, a wrong key, the owner's key and another tenant's key, aimed at a
conversation the owner created. A foreign conversation is 404, exactly like an unknown one: existence is
never revealed, so 403 must never appear.

The app runs in-process under Starlette's TestClient (which runs the real lifespan inside its ``with``
block) so that the WebSocket is exercised by a real client too.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from agent_server.app import AgentServerApp
from tests.conftest import ALICE, BOB, lifespan, make_settings

# A loopback address: a keyless server answers loopback clients only.
BASE_URL = "http://127.0.0.1"
WS_BASE = "ws://127.0.0.1"  # TestClient.websocket_connect ignores base_url
NO_KEY = None
WRONG_KEY = "wrong-" + secrets.token_hex(12)


def bearer(secret: str | None) -> dict[str, str]:
    return {} if secret is None else {"Authorization": f"Bearer {secret}"}


@dataclass
class Seeded:
    client: TestClient
    conversation_id: str
    turns: int


@pytest.fixture
def started(database_url, fake) -> Iterator[TestClient]:
    # Both keys are operators here (metrics are for operators: tests/integration/test_metrics.py has who may read).
    settings = make_settings(database_url, fake, AGENT_ADMIN_KEYS="alice,bob")
    with TestClient(AgentServerApp(settings), base_url=BASE_URL) as client:
        yield client


@pytest.fixture
def seeded(started: TestClient) -> Seeded:
    """The app with one conversation that alice owns."""
    response = started.post("/agent", json={"message": "alice's secret plan"}, headers=bearer(ALICE))
    assert response.status_code == 200, response.text
    conversation_id = response.json()["conversation_id"]
    audit = started.get(f"/conversations/{conversation_id}", headers=bearer(ALICE)).json()
    return Seeded(started, conversation_id, len(audit["turns"]))


def assert_envelope(response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# -- the routes, each reduced to (status, detail) -----------------------------------------------------


def call_post_agent(client: TestClient, conversation_id: str, headers: dict):
    response = client.post("/agent", json={"message": "more", "conversation_id": conversation_id}, headers=headers)
    return response.status_code, response


def call_post_stream(client: TestClient, conversation_id: str, headers: dict):
    response = client.post(
        "/agent/stream", json={"message": "more", "conversation_id": conversation_id}, headers=headers
    )
    return response.status_code, response


def call_list(client: TestClient, conversation_id: str, headers: dict):
    response = client.get("/conversations", headers=headers)
    return response.status_code, response


def call_get(client: TestClient, conversation_id: str, headers: dict):
    response = client.get(f"/conversations/{conversation_id}", headers=headers)
    return response.status_code, response


def call_metrics(client: TestClient, conversation_id: str, headers: dict):
    response = client.get("/metrics", headers=headers)
    return response.status_code, response


@dataclass
class WsOutcome:
    """What a WebSocket resume came to, in HTTP terms: 200 session, 401 refused, 404 not found."""

    status: int
    frames: list
    close_code: int | None


def call_ws_resume(client: TestClient, conversation_id: str, headers: dict):
    url = f"/agent/ws?conversation_id={conversation_id}"
    frames: list = []
    try:
        with client.websocket_connect(WS_BASE + url, headers=headers) as ws:
            first = ws.receive_json()
            frames.append(first)
            if first["type"] == "session":
                return 200, WsOutcome(200, frames, None)
            try:
                while True:
                    frames.append(ws.receive_json())
            except WebSocketDisconnect as closed:
                code = closed.code
    except WebSocketDenialResponse as denied:  # a handshake refused with an HTTP response
        return denied.status_code, WsOutcome(denied.status_code, frames, None)
    except WebSocketDisconnect as closed:
        code = closed.code
    status = {4401: 401, 4404: 404}.get(code, code)
    return status, WsOutcome(status, frames, code)


ROUTES = {
    "POST /agent": call_post_agent,
    "POST /agent/stream": call_post_stream,
    "GET /conversations": call_list,
    "GET /conversations/{id}": call_get,
    "GET /metrics": call_metrics,
    "WS /agent/ws resume": call_ws_resume,
}
# Routes aimed at one conversation: another tenant gets 404 there. The others serve the caller's own view.
TARGETS_CONVERSATION = {"POST /agent", "POST /agent/stream", "GET /conversations/{id}", "WS /agent/ws resume"}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("secret", [NO_KEY, WRONG_KEY], ids=["no key", "wrong key"])
def test_without_a_valid_key_every_route_is_401(seeded: Seeded, route: str, secret: str | None):
    status, detail = ROUTES[route](seeded.client, seeded.conversation_id, bearer(secret))
    assert status == 401
    if isinstance(detail, WsOutcome):
        assert not any(frame.get("type") == "session" for frame in detail.frames)
    else:
        assert_envelope(detail, 401, "authentication_error")


@pytest.mark.parametrize("route", list(ROUTES))
def test_the_owner_gets_200(seeded: Seeded, route: str):
    status, detail = ROUTES[route](seeded.client, seeded.conversation_id, bearer(ALICE))
    assert status == 200, getattr(detail, "text", detail)
    if route == "POST /agent/stream":
        assert detail.headers["content-type"].startswith("text/event-stream")
        assert "event: done" in detail.text
    elif route == "GET /conversations":
        assert seeded.conversation_id in [c["id"] for c in detail.json()["conversations"]]
    elif route == "GET /conversations/{id}":
        assert detail.json()["owner"] == "alice"
    elif route == "WS /agent/ws resume":
        session = detail.frames[0]
        assert session["conversation_id"] == seeded.conversation_id
        assert len(session["turns"]) == seeded.turns


@pytest.mark.parametrize("route", list(ROUTES))
def test_another_tenant_never_sees_the_conversation(seeded: Seeded, route: str):
    status, detail = ROUTES[route](seeded.client, seeded.conversation_id, bearer(BOB))
    assert status != 403
    if route in TARGETS_CONVERSATION:
        assert status == 404
        if isinstance(detail, WsOutcome):
            assert detail.close_code == 4404
            assert [f["type"] for f in detail.frames] == ["error"]
            assert detail.frames[0]["error"]["type"] == "not_found_error"
        else:
            assert_envelope(detail, 404, "not_found_error")
    else:
        assert status == 200
        assert seeded.conversation_id not in detail.text
    # Nothing bob tried reached alice's conversation.
    audit = seeded.client.get(f"/conversations/{seeded.conversation_id}", headers=bearer(ALICE)).json()
    assert len(audit["turns"]) == seeded.turns


def test_foreign_and_unknown_conversations_look_the_same(seeded: Seeded):
    unknown = "c_" + secrets.token_hex(8)
    foreign = seeded.client.get(f"/conversations/{seeded.conversation_id}", headers=bearer(BOB))
    missing = seeded.client.get(f"/conversations/{unknown}", headers=bearer(BOB))
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["type"] == missing.json()["error"]["type"]
    masked = foreign.json()["error"]["message"].replace(seeded.conversation_id, "<id>")
    assert masked == missing.json()["error"]["message"].replace(unknown, "<id>")


def test_a_near_miss_key_is_indistinguishable_from_a_random_one(seeded: Seeded):
    """No oracle: a key one character off alice's gets the very same answer as a made-up key."""
    near = seeded.client.get("/conversations", headers=bearer(ALICE[:-1]))
    longer = seeded.client.get("/conversations", headers=bearer(ALICE + "x"))
    name = seeded.client.get("/conversations", headers=bearer("alice"))
    random = seeded.client.get("/conversations", headers=bearer(WRONG_KEY))
    for response in (near, longer, name):
        assert_envelope(response, 401, "authentication_error")
        assert response.json() == random.json()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
@pytest.mark.parametrize("secret", [NO_KEY, WRONG_KEY], ids=["no key", "wrong key"])
def test_health_needs_no_key(started: TestClient, path: str, secret: str | None):
    response = started.get(path, headers=bearer(secret))
    assert response.status_code == 200, response.text


# -- the Authorization header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": ALICE},
        {"Authorization": f"Basic {base64.b64encode(f'alice:{ALICE}'.encode()).decode()}"},
        {"Authorization": f"Basic {ALICE}"},
        {"Authorization": f"Token {ALICE}"},
        {"Authorization": f"Bearer: {ALICE}"},
        {"Authorization": f"Bearer{ALICE}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer alice:{ALICE}"},
        {"X-API-Key": ALICE},
        {"Cookie": f"token={ALICE}"},
    ],
    ids=["bare secret", "basic name:secret", "basic secret", "token scheme", "bearer colon", "no space",
         "bearer alone", "bearer empty", "name:secret", "x-api-key", "cookie"],
)
def test_only_the_bearer_scheme_is_accepted(started: TestClient, headers: dict):
    response = started.get("/conversations", headers=headers)
    assert_envelope(response, 401, "authentication_error")


def test_the_scheme_name_is_case_insensitive(started: TestClient):
    """RFC 9110 section 11.1: auth scheme names are case-insensitive."""
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = started.get("/conversations", headers={"Authorization": f"{scheme} {ALICE}"})
        assert response.status_code == 200, (scheme, response.text)


def test_the_query_token_is_for_the_websocket_only(started: TestClient):
    response = started.get("/conversations", params={"token": ALICE})
    assert_envelope(response, 401, "authentication_error")
    response = started.post("/agent", params={"token": ALICE}, json={"message": "hi"})
    assert_envelope(response, 401, "authentication_error")


def test_non_ascii_header_bytes_are_401_not_500(started: TestClient):
    for raw in (b"Bearer \xff\xfe\xfd", "Bearer \u00e5lice-secret-0123456789".encode("latin-1"),
                b"Bearer \x00" + ALICE.encode()):
        response = started.get("/conversations", headers={"Authorization": raw})
        assert_envelope(response, 401, "authentication_error")


def test_authentication_comes_before_body_validation(started: TestClient):
    """An unauthenticated caller learns nothing about the body rules: bad JSON, bad shape, huge body: all 401."""
    for content in (b"{not json", json.dumps({"message": ""}).encode(), b"x" * (2 * 1024 * 1024)):
        response = started.post("/agent", content=content, headers={"Content-Type": "application/json"})
        assert_envelope(response, 401, "authentication_error")


# -- WebSocket credentials ------------------------------------------------------------------------------


def test_websocket_accepts_the_key_in_header_or_query(started: TestClient):
    with started.websocket_connect(f"{WS_BASE}/agent/ws", headers=bearer(ALICE)) as ws:
        assert ws.receive_json()["type"] == "session"
    with started.websocket_connect(f"{WS_BASE}/agent/ws?token={ALICE}") as ws:
        assert ws.receive_json()["type"] == "session"


@pytest.mark.parametrize("url,headers", [
    ("/agent/ws", {}),
    (f"/agent/ws?token={WRONG_KEY}", {}),
    ("/agent/ws?token=", {}),
    ("/agent/ws", {"Authorization": f"Basic {ALICE}"}),
    ("/agent/ws", bearer(WRONG_KEY)),
], ids=["none", "wrong query token", "empty query token", "basic scheme", "wrong bearer"])
def test_websocket_without_a_valid_key_is_closed_4401(started: TestClient, url: str, headers: dict):
    with pytest.raises((WebSocketDisconnect, WebSocketDenialResponse)) as refused:
        with started.websocket_connect(WS_BASE + url, headers=headers) as ws:
            ws.receive_json()
    if isinstance(refused.value, WebSocketDenialResponse):
        assert refused.value.status_code == 401
    else:
        assert refused.value.code == 4401


def test_websocket_unknown_conversation_is_404(started: TestClient):
    status, outcome = call_ws_resume(started, "c_" + secrets.token_hex(8), bearer(ALICE))
    assert status == 404 and outcome.close_code == 4404
    assert outcome.frames[0]["error"]["type"] == "not_found_error"


# -- key rotation and anonymous mode ------------------------------------------------------------------


def test_two_secrets_for_one_name_both_work_and_share_conversations(database_url, fake):
    old, new = "rotate-old-" + secrets.token_hex(8), "rotate-new-" + secrets.token_hex(8)
    settings = make_settings(database_url, fake, AGENT_API_KEYS=f"alice:{old},alice:{new},bob:{BOB}")
    with TestClient(AgentServerApp(settings), base_url=BASE_URL) as client:
        created = client.post("/agent", json={"message": "before rotation"}, headers=bearer(old))
        assert created.status_code == 200, created.text
        conversation_id = created.json()["conversation_id"]

        read = client.get(f"/conversations/{conversation_id}", headers=bearer(new))
        assert read.status_code == 200 and read.json()["owner"] == "alice"
        listed = client.get("/conversations", headers=bearer(new)).json()["conversations"]
        assert conversation_id in [c["id"] for c in listed]
        continued = client.post(
            "/agent", json={"message": "after rotation", "conversation_id": conversation_id}, headers=bearer(new)
        )
        assert continued.status_code == 200, continued.text
        with client.websocket_connect(f"{WS_BASE}/agent/ws?conversation_id={conversation_id}&token={old}") as ws:
            assert len(ws.receive_json()["turns"]) == 4

        assert client.get(f"/conversations/{conversation_id}", headers=bearer(BOB)).status_code == 404


def test_no_keys_on_loopback_means_owner_anonymous(database_url, fake):
    settings = make_settings(database_url, fake, AGENT_API_KEYS="", AGENT_BIND_HOST="127.0.0.1")
    with TestClient(AgentServerApp(settings), base_url=BASE_URL) as client:
        created = client.post("/agent", json={"message": "hello"})
        assert created.status_code == 200, created.text
        conversation_id = created.json()["conversation_id"]
        audit = client.get(f"/conversations/{conversation_id}")
        assert audit.status_code == 200 and audit.json()["owner"] == "anonymous"
        assert client.get("/metrics").status_code == 200
        with client.websocket_connect(f"{WS_BASE}/agent/ws?conversation_id={conversation_id}") as ws:
            assert ws.receive_json()["conversation_id"] == conversation_id


async def test_no_keys_on_a_public_host_refuses_to_start(database_url, fake):
    settings = make_settings(database_url, fake, AGENT_API_KEYS="", AGENT_BIND_HOST="0.0.0.0")
    with pytest.raises(RuntimeError, match="AGENT_API_KEYS"):
        async with lifespan(AgentServerApp(settings)):
            pass
