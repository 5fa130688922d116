"""What uvicorn's protocol lets a client hold, against `agent-server serve` on raw sockets.

Big bodies pass whatever the client's writes look like (the head's size is counted, not the body's); a real
oversized head is a 431; a head that never completes is a 408 after the header timeout; connections beyond the
bound get a 503 at once while another client is still served, and the server never runs out of descriptors.
"""

from __future__ import annotations

import json
import resource
import socket
import time

import httpx
import pytest

from tests.conftest import ALICE
from tests.e2e.conftest import server_env

pytestmark = pytest.mark.e2e

MESSAGE_LIMIT = 200_000


def exchange(port: int, head: bytes, body: bytes, *, pieces: int = 1, timeout: float = 30) -> tuple[int, bytes]:
    """Send ``head`` + ``body`` in ``pieces`` writes; return the status and the whole response."""
    payload = head + body
    step = max(1, -(-len(payload) // pieces))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(payload), step):
            sock.sendall(payload[start:start + step])
            if pieces > 1:
                time.sleep(0.001)  # let each write arrive as its own read
        response = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
            if b"\r\n\r\n" in response and _complete(response):
                break
    return int(response.split(b" ", 2)[1]), response


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return body.endswith(b"0\r\n\r\n") or b"event: done" in body or b"event: error" in body


def request_bytes(path: str, body: bytes, *, chunked: bool) -> tuple[bytes, bytes]:
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {ALICE}",
            "Content-Type: application/json", "Connection: close"]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        framed = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n"
                          for part in (body[i:i + 50_000] for i in range(0, len(body), 50_000)))
        body = framed + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode(), body


def body_of(size: int) -> bytes:
    """A JSON body of ``size`` bytes whose message is one long word (the fake echoes it as one token), of
    three-byte characters so that 300 KiB stays within the message limit of 200,000 characters."""
    room = size - len(json.dumps({"message": ""}).encode())
    body = json.dumps({"message": "€" * (room // 3) + "x" * (room % 3)}, ensure_ascii=False).encode()
    assert len(body) == size
    return body


@pytest.fixture(scope="module")
def limits_server(fake_upstream, tmp_path_factory):
    from tests.e2e.conftest import ServerProcess

    workdir = tmp_path_factory.mktemp("limits")
    env = server_env(f"sqlite+aiosqlite:///{workdir / 'agent.db'}", fake_upstream, AGENT_HEADER_TIMEOUT_SECONDS="1")
    server = ServerProcess(env=env, workdir=workdir).start()
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/agent", "/agent/stream"])
@pytest.mark.parametrize("size", [65 * 1024, 300 * 1024, None])
@pytest.mark.parametrize("pieces", [1, 40])
@pytest.mark.parametrize("chunked", [False, True])
def test_big_bodies_pass_however_they_are_written(limits_server, fake, path, size, pieces, chunked):
    body = body_of(size) if size else json.dumps({"message": "y" * MESSAGE_LIMIT}).encode()
    head, framed = request_bytes(path, body, chunked=chunked)
    status, response = exchange(limits_server.port, head, framed, pieces=pieces)
    assert status == 200, response[:300]
    assert b"x-request-id" in response.lower()


def test_a_real_100_kb_header_is_431_with_the_envelope_and_a_request_id(limits_server):
    head = (f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * 100_000}\r\n\r\n").encode()
    status, response = exchange(limits_server.port, head, b"", pieces=1)
    assert status == 431
    assert b"x-request-id: rq_" in response.lower()
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "request_too_large"


def test_a_head_that_never_completes_gets_408_after_the_header_timeout(limits_server):
    with socket.create_connection(("127.0.0.1", limits_server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # one header line, then nothing
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
        waited = time.monotonic() - started
    assert response.startswith(b"HTTP/1.1 408")
    assert 0.8 <= waited < 5
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "timeout_error"


def test_a_silent_connection_is_closed_after_the_header_timeout(limits_server):
    with socket.create_connection(("127.0.0.1", limits_server.port), timeout=10) as sock:
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    assert response.startswith(b"HTTP/1.1 408")


def test_connections_beyond_the_bound_are_refused_and_others_are_served_after(start_server, e2e_database_url, fake,
                                                                             tmp_path):
    # A descriptor limit of 256 for the server: 300 idle sockets would exhaust it without the bound.
    env = server_env(e2e_database_url, fake, AGENT_HEADER_TIMEOUT_SECONDS="2")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        server = start_server(env)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        refused = 0
        for sock in idle[-20:]:
            sock.settimeout(5)
            if sock.recv(4096).startswith(b"HTTP/1.1 503"):
                refused += 1
        assert refused == 20
        # Once the idle ones are dropped by the header timeout, another client is served.
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{server.base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.2)
    finally:
        for sock in idle:
            sock.close()
    assert "AGENT_MAX_CONNECTIONS" in server.log()
    assert server.proc.poll() is None
