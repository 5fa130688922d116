"""Hardening, through the ASGI app: storage that cannot write (typed 503s, readiness that follows it), a database
file replaced or removed under the server, input that cannot be stored, one key's WebSocket sessions, security
headers, and log lines that cannot be forged."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
from starlette.testclient import TestClient

from agent_server.app import AgentServerApp
from agent_server.logs import TextFormatter
from tests.conftest import ALICE, BOB, auth, make_settings


def loop_connection(client):  # type: ignore[no-untyped-def]
    """The SQLite side's writing connection (the driver's), to make it fail as a full or read-only file would."""
    return client.app.runtime.db._loop_conn.connection.driver_connection


@pytest.mark.sqlite_only("makes the SQLite writer read-only")
async def test_a_read_only_database_is_a_typed_503_everywhere_and_readiness_follows(client, fake) -> None:
    ok = await client.post("/agent", json={"message": "before"})
    conversation_id = ok.json()["conversation_id"]
    assert (await client.get("/readyz")).status_code == 200
    loop_connection(client).execute("PRAGMA query_only=ON")  # as a read-only file (chattr +i) behaves
    try:
        for route in ("/agent", "/agent/stream"):
            response = await client.post(route, json={"message": "during", "conversation_id": conversation_id})
            assert response.status_code == 503, response.text
            assert response.json()["error"]["type"] == "storage_error"
            assert int(response.headers["Retry-After"]) >= 1
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "writes fail" in ready.json()["reason"]
        assert len(fake.requests()) == 1  # nothing went upstream that the ledger could not record
    finally:
        loop_connection(client).execute("PRAGMA query_only=OFF")
    assert (await client.get("/readyz")).status_code == 200
    after = await client.post("/agent", json={"message": "after", "conversation_id": conversation_id})
    assert after.status_code == 200, after.text


@pytest.mark.sqlite_only("fills the SQLite file")
async def test_a_full_disk_turns_readiness_503_until_there_is_room(client) -> None:
    conn = loop_connection(client)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # as a full disk: nothing that needs a new page fits
    try:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "full" in ready.json()["reason"]
    finally:
        conn.execute("PRAGMA max_page_count=4294967294")
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.sqlite_only("the SQLite file itself")
@pytest.mark.parametrize("how", ["replaced", "removed"])
async def test_a_database_file_replaced_or_removed_under_the_server_is_noticed(client, fake, database_url,
                                                                               how) -> None:
    path = client.app.runtime.db.path
    assert (await client.post("/agent", json={"message": "before"})).status_code == 200
    if how == "replaced":
        shutil.copy(path, f"{path}.copy")
        os.replace(f"{path}.copy", path)  # the same name, another file (another inode)
    else:
        os.unlink(path)
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert {"replaced": "replaced by another file", "removed": "is gone"}[how] in ready.json()["reason"]
    client.app.runtime.db._identity_checked = 0  # the writer looks again (it looks at most once a second)
    refused = await client.post("/agent", json={"message": "after"})
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "storage_error"
    assert "restart the server" in refused.json()["error"]["message"]


async def test_a_lone_surrogate_in_system_is_a_422_not_a_500(client) -> None:
    body = '{"message": "hi", "system": "bad \\ud800 half"}'
    response = await client.post("/agent", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert "system" in response.json()["error"]["message"]


async def test_a_nul_in_plain_text_fields_is_a_422_on_either_database(client) -> None:
    response = await client.post("/agent", json={"message": "hi", "system": "before \u0000 after"})
    assert response.status_code == 422, response.text
    assert "system: contains a NUL character" in response.json()["error"]["message"]
    created = await client.post("/agent", json={"message": "hi"})
    conversation_id = created.json()["conversation_id"]
    renamed = await client.patch(f"/conversations/{conversation_id}", json={"title": "a\u0000b"})
    assert renamed.status_code == 422 and "NUL" in renamed.json()["error"]["message"]


async def test_a_message_with_a_nul_is_stored_verbatim_on_either_database(client, fake) -> None:
    response = await client.post("/agent", json={"message": "first \u0000 message"})
    assert response.status_code == 200, response.text
    conversation_id = response.json()["conversation_id"]
    audit = (await client.get(f"/conversations/{conversation_id}")).json()
    assert audit["turns"][0]["blocks"] == [{"type": "text", "text": "first \u0000 message"}]
    listed = (await client.get("/conversations")).json()["conversations"]
    assert listed[0]["title"].startswith("first ")  # derived text: NUL kept (SQLite) or U+FFFD (PostgreSQL)


async def test_an_id_with_a_nul_is_not_found_on_either_database(client) -> None:
    for path in ("/conversations/conv%00x", "/conversations/conv%00x/export", "/replies/reply%00x",
                 "/replies/reply%00x/events"):
        response = await client.get(path)
        assert response.status_code == 404, (path, response.text)
    response = await client.post("/agent", json={"message": "hi", "conversation_id": "conv\u0000x"})
    assert response.status_code == 404, response.text


async def test_text_a_model_sends_with_a_nul_is_stored_and_the_conversation_goes_on(client, fake) -> None:
    fake.script({"tokens": ["nul \u0000 ", "inside"]})
    first = await client.post("/agent", json={"message": "hi"})
    assert first.status_code == 200, first.text
    conversation_id = first.json()["conversation_id"]
    audit = (await client.get(f"/conversations/{conversation_id}")).json()
    blocks = audit["turns"][-1]["blocks"]
    assert blocks == [{"type": "text", "text": "nul \u0000 inside"}]  # verbatim (stored as JSON)
    fake.script({"text": "still here"})
    again = await client.post("/agent", json={"message": "and?", "conversation_id": conversation_id})
    assert again.status_code == 200 and again.json()["content"] == "still here"
    sent = fake.bodies()[-1]["messages"][1]["content"]
    assert sent[0]["text"] == "nul \u0000 inside"  # and goes back upstream unchanged


async def test_security_headers_on_every_response(client) -> None:
    created = await client.post("/agent", json={"message": "hi"})
    conversation_id = created.json()["conversation_id"]
    responses = {
        "POST /agent": created,
        "GET /conversations": await client.get("/conversations"),
        "GET /conversations/{id}": await client.get(f"/conversations/{conversation_id}"),
        "GET /conversations/unknown": await client.get("/conversations/conv_unknown"),
        "GET /healthz": await client.get("/healthz"),
        "GET /nope": await client.get("/nope"),
        "401": await client.get("/conversations", headers={"Authorization": "Bearer nope-nope-nope-nope"}),
    }
    for name, response in responses.items():
        assert response.headers.get("x-content-type-options") == "nosniff", name
    for name in ("POST /agent", "GET /conversations", "GET /conversations/{id}", "GET /conversations/unknown", "401"):
        assert "no-store" in responses[name].headers.get("cache-control", ""), name
    assert "no-store" not in responses["GET /healthz"].headers.get("cache-control", "")


def test_one_key_may_hold_only_so_many_websocket_sessions(database_url, fake) -> None:
    settings = make_settings(database_url, fake, AGENT_MAX_WS_SESSIONS_PER_KEY=2)
    with TestClient(AgentServerApp(settings), base_url="http://127.0.0.1") as http:
        with http.websocket_connect("ws://127.0.0.1/agent/ws", headers=auth(ALICE)) as one, \
                http.websocket_connect("ws://127.0.0.1/agent/ws", headers=auth(ALICE)) as two:
            assert one.receive_json()["type"] == two.receive_json()["type"] == "session"
            with http.websocket_connect("ws://127.0.0.1/agent/ws", headers=auth(ALICE)) as third:
                refused = third.receive_json()
                assert refused["error"]["type"] == "rate_limit_error"
            with http.websocket_connect("ws://127.0.0.1/agent/ws", headers=auth(BOB)) as bobs:
                assert bobs.receive_json()["type"] == "session"  # another key is not affected
        with http.websocket_connect("ws://127.0.0.1/agent/ws", headers=auth(ALICE)) as again:
            assert again.receive_json()["type"] == "session"  # closed sessions gave their places back


def test_text_log_lines_escape_control_characters() -> None:
    record = logging.LogRecord("agent_server.access", logging.INFO, __file__, 1, "request", None, None)
    record.path = "/conversations/x\n12:00:00 INFO    forged line\r\x1b[31m"
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "\\x0a12:00:00 INFO    forged line\\x0d\\x1b[31m" in line
