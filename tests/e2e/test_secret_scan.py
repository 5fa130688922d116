"""No secret ever leaves the process: not in the log, not in a response, not in the database.

A `serve` process gets distinctive secrets (the upstream key and two client keys, with characters that URL-
and base64-encoding change), goes through a full session — every route, the stream, the WebSocket with
``?token=`` and with the header, and a set of errors, upstream ones included — and then the server log,
every response header and body and WebSocket frame received, and the raw bytes of the SQLite file and its
WAL are searched for each secret in its plain, URL-encoded, base64 and hex forms.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from agent_server.fake_upstream import Behaviour, FakeConfig, FakeUpstream
from tests.e2e.conftest import server_env
from tests.e2e.sse_client import SSEParser

pytestmark = pytest.mark.e2e


def encodings(secret: str) -> dict[str, bytes]:
    """The forms in which ``secret`` could leak, as bytes to search for."""
    raw = secret.encode()
    forms = {
        "plain": raw,
        "url-encoded": urllib.parse.quote(secret, safe="").encode(),
        "form-encoded": urllib.parse.quote_plus(secret).encode(),
        "hex": raw.hex().encode(),
        # The middle half: what a log of a mistyped key or a partly masked one would still show.
        "middle half": raw[len(raw) // 4: len(raw) - len(raw) // 4],
    }
    # Inside a longer base64 text the secret's encoding depends on its offset modulo 3; the middle of each
    # shifted encoding is the same wherever the secret sits.
    for shift in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            encoded = encode(b"\0" * shift + raw)
            forms[f"{name}+{shift}"] = encoded[4:-4]
    return forms


@dataclass
class Transcript:
    """Everything the client received, labelled by where it came from."""

    received: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, where: str, data: bytes | str) -> None:
        self.received.append((where, data.encode() if isinstance(data, str) else data))

    def http(self, response: httpx.Response) -> httpx.Response:
        where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
        self.add(f"{where} headers", b"\n".join(name + b": " + value for name, value in response.headers.raw))
        self.add(f"{where} body", response.content)
        return response


@dataclass
class Secrets:
    upstream: str
    alice: str
    bob: str
    metrics: str

    def items(self) -> dict[str, str]:
        return {"ANTHROPIC_API_KEY": self.upstream, "alice's key": self.alice, "bob's key": self.bob,
                "AGENT_METRICS_TOKEN": self.metrics}


def ws_session(url: str, transcript: Transcript, *, headers: dict | None = None, send: list[dict] | None = None):
    """Open a WebSocket, send ``send`` (waiting for each reply to end), record every frame; the close code."""
    with ws_connect(url, additional_headers=headers or {}, open_timeout=10) as ws:
        transcript.add(f"WS {url.split('?')[0]} handshake", b"\n".join(
            f"{name}: {value}".encode() for name, value in ws.response.headers.raw_items()
        ))
        try:
            first = ws.recv(timeout=10)
            transcript.add("WS frame", first)
            if json.loads(first)["type"] != "session":
                ws.recv(timeout=10)
            for frame in send or []:
                ws.send(json.dumps(frame))
                while True:
                    text = ws.recv(timeout=10)
                    transcript.add("WS frame", text)
                    if json.loads(text)["type"] in ("done", "error"):
                        break
        except ConnectionClosed as closed:
            if closed.rcvd is not None:
                transcript.add("WS close reason", closed.rcvd.reason)
            return closed.rcvd.code if closed.rcvd else None
    return 1000


def database_bytes(path: Path) -> dict[str, bytes]:
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return {f"database {f.name}": f.read_bytes() for f in files if f.exists()}


@pytest.mark.parametrize("log_level", ["info", "debug"])
def test_no_secret_appears_in_logs_responses_or_the_database(start_server, tmp_path, log_level):
    canary = "canary-" + secrets.token_hex(8)  # conversation content: stored, answered, never logged
    keys = Secrets(
        upstream="sk-ant-api03-SCAN" + secrets.token_urlsafe(24),
        # '/', '+', '=' and ':' change under URL and base64 encoding, so every form is distinct.
        alice="scan/alice+" + secrets.token_hex(12) + "==",
        bob="scan:bob+" + secrets.token_hex(12) + "/x",
        metrics="scan=metrics/" + secrets.token_hex(12) + "+",
    )
    database = tmp_path / "scan" / "agent.db"
    transcript = Transcript()
    with FakeUpstream(FakeConfig(require_key=keys.upstream)) as fake:
        env = server_env(
            f"sqlite+aiosqlite:///{database}", fake,
            ANTHROPIC_API_KEY=keys.upstream,
            AGENT_API_KEYS=f"scanalice:{keys.alice},scanbob:{keys.bob}",
            AGENT_METRICS_TOKEN=keys.metrics, AGENT_ADMIN_KEYS="scanalice",
            AGENT_UPSTREAM_MAX_RETRIES="0",
            AGENT_LOG_LEVEL=log_level,
        )
        server = start_server(env)
        alice = {"Authorization": f"Bearer {keys.alice}"}
        bob = {"Authorization": f"Bearer {keys.bob}"}
        with httpx.Client(base_url=server.base_url, timeout=15) as http:
            # The happy paths.
            created = transcript.http(http.post("/agent", json={"message": f"hello {canary}"}, headers=alice))
            assert created.status_code == 200, created.text
            conversation_id = created.json()["conversation_id"]
            assert transcript.http(http.post("/agent", json={"message": "again", "conversation_id": conversation_id},
                                             headers=alice)).status_code == 200
            streamed = transcript.http(http.post("/agent/stream", json={"message": "stream"}, headers=bob))
            assert [e.event for e in SSEParser().feed(streamed.content)][-1] == "done"

            token_url = f"{server.ws_url}?token={urllib.parse.quote(keys.alice, safe='')}"
            assert ws_session(f"{token_url}&conversation_id={conversation_id}", transcript,
                              send=[{"type": "message", "message": f"over the socket {canary}"}]) == 1000
            assert ws_session(server.ws_url, transcript, headers=bob,
                              send=[{"type": "message", "message": "with a header"}]) == 1000

            # The errors.
            wrong = {"Authorization": f"Bearer {keys.alice[:-1]}"}
            assert transcript.http(http.post("/agent", json={"message": "x"}, headers=wrong)).status_code == 401
            assert transcript.http(http.get("/conversations", headers=wrong)).status_code == 401
            assert transcript.http(http.get("/metrics")).status_code == 401
            assert ws_session(f"{server.ws_url}?token={urllib.parse.quote(keys.bob[:-1], safe='')}", transcript) == 4401
            assert ws_session(f"{server.ws_url}?conversation_id={conversation_id}", transcript, headers=bob) == 4404
            assert transcript.http(http.get("/conversations/conv_unknown", headers=alice)).status_code == 404
            assert transcript.http(http.get(f"/conversations/{conversation_id}", headers=bob)).status_code == 404
            assert transcript.http(http.post("/agent", json={"message": ""}, headers=alice)).status_code == 422
            assert transcript.http(http.post("/agent", content=b"{", headers=alice)).status_code == 400

            fake.script(Behaviour(status=500), Behaviour(status=529), Behaviour(error_after_tokens=1),
                        Behaviour(status=400, error_message="prompt is too long"))
            assert transcript.http(http.post("/agent", json={"message": "boom"}, headers=alice)).status_code == 502
            assert transcript.http(http.post("/agent", json={"message": "busy"}, headers=alice)).status_code == 503
            broken = transcript.http(http.post("/agent/stream", json={"message": "cut"}, headers=alice))
            assert [e.event for e in SSEParser().feed(broken.content)][-1] == "error"
            assert ws_session(server.ws_url, transcript, headers=alice,
                              send=[{"type": "message", "message": "rejected upstream"}]) == 1000

            # The audit and operations routes.
            for path in ("/conversations", f"/conversations/{conversation_id}", "/metrics"):
                assert transcript.http(http.get(path, headers=alice)).status_code == 200
            metrics = {"Authorization": f"Bearer {keys.metrics}"}
            assert transcript.http(http.get("/metrics", headers=metrics)).status_code == 200
            assert transcript.http(http.get("/metrics", headers=bob)).status_code == 403
            for path in ("/healthz", "/readyz", "/openapi.json"):
                assert transcript.http(http.get(path)).status_code == 200

        # Not vacuous: the upstream saw exactly the server's key (the fake refuses any other with 401), and
        # the scripted upstream failures did happen.
        statuses = [attempt["status"] for attempt in fake.requests()]
        assert 401 not in statuses and statuses.count(200) >= 6, statuses
        assert {500, 529, 400} <= set(statuses), statuses

        while_running = database_bytes(database)
        server.stop()
    haystacks = {
        "server log": server.log_path.read_bytes(),
        **{f"{where} (running)": data for where, data in while_running.items()},
        **database_bytes(database),
        **{f"response #{n}: {where}": data for n, (where, data) in enumerate(transcript.received)},
    }
    assert haystacks["server log"], "the server wrote no log"
    assert any(name.startswith("database agent.db") for name in haystacks)

    stored = b"".join(data for where, data in haystacks.items() if where.startswith("database"))
    assert canary.encode() in stored, "the scan did not see the conversation in the database files"

    leaks = [
        f"{secret_name} ({form}) in {where}"
        for secret_name, secret in keys.items().items()
        for form, needle in encodings(secret).items()
        for where, data in haystacks.items()
        if needle in data
    ]
    if canary.encode() in haystacks["server log"]:
        leaks.append("conversation content (the canary message) in server log")
    assert not leaks, "leaked:\n" + "\n".join(leaks)
