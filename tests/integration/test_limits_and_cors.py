"""Hostile requests: oversized, malformed and deeply nested bodies, bad query values, cross-origin callers,
and headers too large for the HTTP server. Each gets a 4xx with the error envelope (or, for what never
reaches the app, a refusal by uvicorn); none gets a 500, and every HTTP response carries an X-Request-ID.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from agent_server.app import AgentServerApp
from agent_server.http.schemas import AgentRequest
from tests.conftest import ALICE, auth, lifespan, make_settings
from tests.e2e.conftest import e2e_database_url, server_env, start_server  # noqa: F401  (fixtures)

MAX_BODY = 1024  # the smallest AGENT_MAX_BODY_BYTES the settings accept: cheap to exceed
ORIGIN = "https://app.example"


@asynccontextmanager
async def hostile_client(settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with alice's key; a bug comes back as the 500 a real server would send, not as a raise."""
    app = AgentServerApp(settings)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=auth(),
                                     timeout=30) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def small(database_url, fake) -> AsyncIterator[httpx.AsyncClient]:
    async with hostile_client(make_settings(database_url, fake, AGENT_MAX_BODY_BYTES=MAX_BODY)) as client:
        yield client


@pytest.fixture
async def roomy(database_url, fake) -> AsyncIterator[httpx.AsyncClient]:
    """Default body limit (1 MiB): room for 100k levels of nesting."""
    async with hostile_client(make_settings(database_url, fake)) as client:
        yield client


def assert_error(response: httpx.Response, status: int | tuple[int, ...], error_type: str | None = None) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"type", "message"}, body
    if error_type is not None:
        assert body["error"]["type"] == error_type
    assert "Traceback" not in body["error"]["message"]


def body_of_size(size: int) -> bytes:
    """A valid request body of exactly ``size`` bytes."""
    empty = json.dumps({"message": ""}).encode()
    body = json.dumps({"message": "x" * (size - len(empty))}).encode()
    assert len(body) == size
    return body


async def chunks(data: bytes, size: int = 100):
    for start in range(0, len(data), size):
        yield data[start:start + size]


# -- body size ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/agent", "/agent/stream"])
async def test_a_body_over_the_limit_is_413_with_content_length(small, path):
    response = await small.post(path, content=body_of_size(MAX_BODY + 1), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "request_too_large")


@pytest.mark.parametrize("path", ["/agent", "/agent/stream"])
async def test_a_chunked_body_over_the_limit_is_413(small, path):
    request = small.build_request("POST", path, content=chunks(body_of_size(MAX_BODY * 3)))
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    assert_error(await small.send(request), 413, "request_too_large")


async def test_a_body_of_exactly_the_limit_is_served(small):
    for content in (body_of_size(MAX_BODY), chunks(body_of_size(MAX_BODY))):
        response = await small.post("/agent", content=content)
        assert response.status_code == 200, response.text


async def test_content_length_is_not_trusted(small):
    """The size read decides: a small declared length does not let a big body in, a bogus one breaks nothing."""
    big, fine = body_of_size(MAX_BODY * 4), body_of_size(100)
    assert_error(await small.post("/agent", content=big, headers={"Content-Length": "10"}), 413, "request_too_large")
    for declared in (b"abc", b"-1", b"1e3", "\u00b2".encode("latin-1"), "\u0661".encode("utf-8"), b" 12", b""):
        for content, expected in ((fine, 200), (big, 413)):
            response = await small.post("/agent", content=content, headers={"Content-Length": declared})
            assert response.status_code == expected, (declared, response.status_code, response.text[:200])
    # A declared length over the limit may be refused before reading.
    declared_huge = await small.post("/agent", content=fine, headers={"Content-Length": "9" * 30})
    assert_error(declared_huge, 413, "request_too_large")


# -- body shape ---------------------------------------------------------------------------------------------


async def test_a_message_over_the_character_limit_is_422(database_url, fake):
    async with hostile_client(make_settings(database_url, fake, AGENT_MAX_MESSAGE_CHARS=100)) as client:
        assert (await client.post("/agent", json={"message": "x" * 100})).status_code == 200
        # Characters, not bytes: 100 two-byte characters fit.
        assert (await client.post("/agent", json={"message": "\u00e9" * 100})).status_code == 200
        for message in ("x" * 101, "\U0001f600" * 101):
            for path in ("/agent", "/agent/stream"):
                assert_error(await client.post(path, json={"message": message}), 422, "invalid_request_error")


async def test_max_tokens_above_the_ceiling_is_422(database_url, fake):
    settings = make_settings(database_url, fake, AGENT_MAX_TOKENS=100, AGENT_MAX_TOKENS_CEILING=200)
    async with hostile_client(settings) as client:
        accepted = await client.post("/agent", json={"message": "hi", "max_tokens": 200})
        assert accepted.status_code == 200, accepted.text
        assert fake.requests()[-1]["body"]["max_tokens"] == 200
        for value in (201, 10**30, 0, -1, 1.5, 200.0, "5", True, [], {}):
            response = await client.post("/agent", json={"message": "hi", "max_tokens": value})
            assert_error(response, 422, "invalid_request_error")


@pytest.mark.parametrize("content", [
    b"",
    b"{",
    b"not json",
    b'{"message": "hi"',
    b'{"message": "hi"} trailing',
    b"\x00\x01\x02",
], ids=["empty", "open brace", "text", "unterminated", "trailing garbage", "binary"])
async def test_a_body_that_is_not_json_is_400(small, content):
    assert_error(await small.post("/agent", content=content), 400, "invalid_request_error")


@pytest.mark.parametrize("content", [
    b'{"message": "\xff\xfe"}',
    b'{"message": "\xc0\xaf"}',  # overlong encoding of "/"
    b'{"message": "\xed\xa0\x80"}',  # an encoded surrogate
    b'{"message": "caf\xe9"}',  # latin-1, not UTF-8
    b'{"message": "\xf4\x90\x80\x80"}',  # past U+10FFFF
    b'{"message": "trunc\xe2\x82"}',  # a sequence cut short
    '{"message": "utf-16"}'.encode("utf-16"),
    '{"message": "utf-32"}'.encode("utf-32"),
], ids=["invalid bytes", "overlong", "encoded surrogate", "latin-1", "past U+10FFFF", "truncated", "utf-16",
        "utf-32"])
async def test_a_body_that_is_not_utf8_is_400(small, content):
    assert_error(await small.post("/agent", content=content), 400, "invalid_request_error")


@pytest.mark.parametrize("content", [
    b"null", b"[]", b'"message"', b"42", b"true",
    b'{"message": null}', b'{"message": ""}', b'{"message": "   \\n\\t "}', b'{"message": 5}',
    b'{"message": ["hi"]}', b'{"message": {"text": "hi"}}', b'{"message": "hi", "extra": 1}',
    b'{"message": "hi", "model": "gpt-4"}', b'{"message": "hi", "model": ""}',
    b'{"message": "hi", "conversation_id": 7}', b'{"message": "hi", "system": ["x"]}',
    b'{"message": "hi", "max_tokens": NaN}', b'{"message": "hi", "max_tokens": Infinity}',
    b'{"message": "hi", "max_tokens": 1e999}', b'{"message": "\\ud800"}',
    b'{"MESSAGE": "hi"}', b'{"message": "hi", "message": ""}',
], ids=lambda raw: raw.decode()[:40])
async def test_json_of_the_wrong_shape_is_422(small, content):
    assert_error(await small.post("/agent", content=content), 422, "invalid_request_error")


@pytest.mark.parametrize("content", [
    b"[" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000,
    b'{"message": "hi", "system": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"message": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001,
], ids=["open brackets", "balanced brackets", "open objects", "deep system", "deep message"])
@pytest.mark.parametrize("path", ["/agent", "/agent/stream"])
async def test_deeply_nested_json_is_refused_not_crashed(roomy, content, path):
    assert_error(await roomy.post(path, content=content), (400, 422), "invalid_request_error")
    assert (await roomy.get("/healthz")).status_code == 200


async def test_conversation_ids_are_data_not_code(small):
    for hostile in ("' OR 1=1 --", '"; DROP TABLE turns; --', "../../etc/passwd", "%00", "\u0000", "<script>"):
        response = await small.post("/agent", json={"message": "hi", "conversation_id": hostile})
        assert_error(response, 404, "not_found_error")
        assert hostile not in response.json()["error"]["message"]  # arbitrary input is not reflected
    assert_error(await small.post("/agent", json={"message": "hi", "conversation_id": "c" * 64}), 404)
    assert_error(await small.post("/agent", json={"message": "hi", "conversation_id": "c" * 65}), 422)
    for path in ("/conversations/%27%20OR%201%3D1--", "/conversations/%00", "/conversations/" + "a" * 5000,
                 "/conversations/%F0%9F%98%80", "/conversations/..%2Fmetrics"):
        assert_error(await small.get(path), 404, "not_found_error")


@pytest.mark.parametrize("query", [
    "limit=0", "limit=-1", "limit=201", "limit=1e3", "limit=abc", "limit=" + "9" * 100, "limit=",
    "limit=%C2%B2", "limit=%E2%91%A0", "limit=%D9%A3", "limit=1.0", "limit=%201",
], ids=lambda q: q[:20])
async def test_a_bad_page_size_is_422(small, query):
    assert_error(await small.get(f"/conversations?{query}"), 422, "invalid_request_error")


@pytest.mark.parametrize("cursor", ["%00", "zzzz", "A" * 10_000, "fHw", "%FF%FE", "..", "%E2%98%83"],
                         ids=lambda c: c[:20])
async def test_a_forged_cursor_is_422(small, cursor):
    assert_error(await small.get(f"/conversations?before={cursor}"), 422, "invalid_request_error")


# -- CORS ----------------------------------------------------------------------------------------------------


def preflight(origin: str, path: str = "/agent") -> dict:
    return {"method": "OPTIONS", "url": path, "headers": {
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }}


@pytest.fixture
async def cors(database_url, fake) -> AsyncIterator[httpx.AsyncClient]:
    async with hostile_client(make_settings(database_url, fake, AGENT_CORS_ORIGINS=ORIGIN)) as client:
        yield client


async def test_a_preflight_from_the_allowed_origin_is_answered(cors):
    response = await cors.request(**preflight(ORIGIN))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "x-request-id" in response.headers


@pytest.mark.parametrize("origin", [
    "https://evil.example", "https://app.example.evil.com", "https://evilapp.example", "http://app.example",
    "https://app.example:8443", "null", "https://evil.example/https://app.example", "*",
])
async def test_other_origins_get_no_cors_headers(cors, origin):
    response = await cors.request(**preflight(origin))
    assert "access-control-allow-origin" not in response.headers
    assert response.status_code != 500
    simple = await cors.get("/healthz", headers={"Origin": origin})
    assert "access-control-allow-origin" not in simple.headers


async def test_responses_to_the_allowed_origin_are_readable_by_the_page(cors):
    ok = await cors.post("/agent", json={"message": "hi"}, headers={"Origin": ORIGIN})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    exposed = ok.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed
    refused = await cors.get("/conversations", headers={"Origin": ORIGIN, "Authorization": "Bearer nope"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


async def test_without_the_setting_there_are_no_cors_headers(small):
    for origin in (ORIGIN, "https://evil.example"):
        response = await small.request(**preflight(origin))
        assert response.status_code != 500
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]
        simple = await small.post("/agent", json={"message": "hi"}, headers={"Origin": origin})
        assert simple.status_code == 200
        assert not [name for name in simple.headers if name.lower().startswith("access-control-")]


async def test_a_wildcard_set_explicitly_allows_any_origin(database_url, fake):
    async with hostile_client(make_settings(database_url, fake, AGENT_CORS_ORIGINS="*")) as client:
        response = await client.request(**preflight("https://anyone.example"))
        assert response.headers["access-control-allow-origin"] in ("*", "https://anyone.example")


def test_websocket_handshakes_from_other_origins_are_refused(database_url, fake):
    settings = make_settings(database_url, fake, AGENT_CORS_ORIGINS=ORIGIN)
    with TestClient(AgentServerApp(settings), base_url="http://127.0.0.1") as client:
        for headers in ({}, {"Origin": ORIGIN}):
            with client.websocket_connect("ws://127.0.0.1/agent/ws", headers={**auth(), **headers}) as ws:
                assert ws.receive_json()["type"] == "session"
        for origin in ("https://evil.example", "null", "https://app.example.evil.com"):
            with pytest.raises((WebSocketDisconnect, WebSocketDenialResponse)) as refused:
                with client.websocket_connect("ws://127.0.0.1/agent/ws", headers={**auth(), "Origin": origin}) as ws:
                    ws.receive_json()
            if isinstance(refused.value, WebSocketDenialResponse):
                assert 400 <= refused.value.status_code < 500
            else:
                assert refused.value.code == 1008


# -- request ids and the OpenAPI description ----------------------------------------------------------------


async def test_every_response_carries_a_request_id(database_url, fake):
    settings = make_settings(database_url, fake, AGENT_MAX_BODY_BYTES=MAX_BODY, AGENT_CORS_ORIGINS=ORIGIN,
                             AGENT_RATE_LIMIT="2/minute")
    async with hostile_client(settings) as client:
        responses = [
            await client.post("/agent", json={"message": "hi"}),
            await client.post("/agent/stream", json={"message": "hi"}),
            await client.post("/agent", json={"message": "hi"}),  # 429: over 2/minute
            await client.post("/agent", content=b"{"),
            await client.post("/agent", json={"message": ""}),
            await client.post("/agent", content=body_of_size(MAX_BODY + 1)),
            await client.get("/conversations", headers={"Authorization": "Bearer nope"}),
            await client.get("/conversations/nope"),
            await client.get("/no/such/route"),
            await client.get("/agent"),  # 405
            await client.request(**preflight(ORIGIN)),
            await client.request(**preflight("https://evil.example")),
            await client.get("/conversations"),
            await client.get("/healthz"),
            await client.get("/readyz"),
            await client.get("/metrics"),
            await client.get("/openapi.json"),
        ]
    statuses = {r.status_code for r in responses}
    assert {200, 400, 401, 404, 405, 413, 422, 429} <= statuses, statuses
    ids = [r.headers.get("x-request-id") for r in responses]
    missing = [(r.request.method, r.request.url.path, r.status_code)
               for r, request_id in zip(responses, ids, strict=True) if not request_id]
    assert not missing, missing
    assert len(set(ids)) == len(ids)


async def test_a_bug_answers_500_with_the_request_id_in_header_and_message(small, monkeypatch):
    async def broken(**kwargs):
        raise RuntimeError("a bug, with SELECT * FROM secrets in its text")

    monkeypatch.setattr(small.app.runtime.conversations, "audit", broken)
    response = await small.get("/conversations/anything")
    assert_error(response, 500, "api_error")
    assert "SELECT" not in response.text and "RuntimeError" not in response.text
    request_id = response.headers.get("x-request-id")
    assert request_id, dict(response.headers)
    assert request_id in response.json()["error"]["message"]


def test_the_websocket_handshake_carries_a_request_id(database_url, fake):
    with TestClient(AgentServerApp(make_settings(database_url, fake)), base_url="http://127.0.0.1") as client:
        with client.websocket_connect("ws://127.0.0.1/agent/ws", headers=auth()) as ws:
            assert ws.receive_json()["type"] == "session"
            headers = dict(ws.extra_headers or [])
            assert headers.get(b"x-request-id")


async def test_openapi_is_valid_3_1_and_describes_the_request_model(small):
    response = await small.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(spec).validate()
    expected = AgentRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in expected.pop("$defs", {}).items():
        assert spec["components"]["schemas"][name] == schema
    assert spec["components"]["schemas"]["AgentRequest"] == expected
    for path in ("/agent", "/agent/stream"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/AgentRequest"}


# -- what uvicorn refuses before the app sees it (e2e) ------------------------------------------------------


def raw_exchange(port: int, request: bytes, timeout: float) -> str:
    """Send raw bytes; the status line of the answer, "closed" if the server hung up without one, or
    "no answer" if it was still waiting for more after ``timeout`` seconds."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may hang up before reading it all
            sock.sendall(request)
        try:
            while b"\r\n" not in received and (chunk := sock.recv(65536)):
                received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            return "no answer"
    return received.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"


@pytest.mark.e2e
def test_oversized_headers_are_refused_by_the_server(start_server, e2e_database_url, fake):  # noqa: F811
    server = start_server(server_env(e2e_database_url, fake))
    big = b"a" * 100_000
    attempts = {
        "one 100 KB header": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + big + b"\r\n\r\n",
        "100 KB bearer token": b"GET /conversations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                               + big + b"\r\n\r\n",
        "2000 headers": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        + b"".join(b"X-H%d: %s\r\n" % (n, b"v" * 40) for n in range(2000)) + b"\r\n",
        "100 KB path": b"GET /conversations/" + big + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "100 KB header, never ended": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + big,
    }
    outcomes = {name: raw_exchange(server.port, request, timeout=3) for name, request in attempts.items()}

    def refused(outcome: str) -> bool:
        if outcome == "closed":
            return True
        parts = outcome.split()
        return len(parts) >= 2 and parts[1].isdigit() and 400 <= int(parts[1]) < 500

    report = "\n".join(f"{name}: {outcome}" for name, outcome in outcomes.items())
    assert all(refused(outcome) for outcome in outcomes.values()), "not refused:\n" + report
    assert server.proc.poll() is None, server.log()[-2000:]
    assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
    response = httpx.post(f"{server.base_url}/agent", json={"message": "still here"}, headers=auth(ALICE), timeout=10)
    assert response.status_code == 200, response.text
    assert '"level": "error"' not in server.log(), server.log()[-3000:]
