"""Several instances on one PostgreSQL database (and one Redis): two `agent-server serve` processes, each with two
workers, hold every guarantee together — one reply at a time per conversation, a conversation started on one
continued on the other, a dead instance's conversation taken over, rate limits and concurrency caps shared.

(Cancel and resume across instances: test_resume.py. The copy from SQLite: tests/integration/test_copy.py.)
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALICE, BOB, auth
from tests.e2e.conftest import metrics_auth, server_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def instances(database_backend, e2e_database_url, fake, start_server, request):  # type: ignore[no-untyped-def]
    """Two instances (two workers each) on one PostgreSQL database and one Redis."""
    if database_backend != "postgresql":
        pytest.skip("several instances share a PostgreSQL database: run with --databases=postgresql (CI does)")
    redis_url = request.getfixturevalue("redis_url")
    # Emptied here: the autouse flush sees only fixtures a test names, not one asked for at run time. A slot left in
    # Redis by an earlier test's killed instance would refuse this test's first reply under a cap of one.
    request.getfixturevalue("redis_server").flush()
    env = server_env(e2e_database_url, fake, AGENT_RATE_LIMIT_STORAGE=redis_url)

    def start(**extra: str):  # type: ignore[no-untyped-def]
        return start_server({**env, **extra}, args=("--workers", "2"))

    return start


def kill_9_with_its_workers(server) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of an instance: its supervisor and every worker (killing the supervisor alone leaves them serving)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server.proc.pid:
            children.append(int(stat.parent.name))
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    server.kill()


def post(server, body: dict, key: str = ALICE) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{server.base_url}/agent", json=body, headers=auth(key), timeout=30)


def test_a_conversation_started_on_one_instance_continues_on_the_other(instances, fake) -> None:
    one, two = instances(), instances()
    first = post(one, {"message": "Hello from one"})
    assert first.status_code == 200, first.text
    conversation_id = first.json()["conversation_id"]
    second = post(two, {"message": "And from two", "conversation_id": conversation_id})
    assert second.status_code == 200, second.text
    audit = httpx.get(f"{two.base_url}/conversations/{conversation_id}", headers=auth(), timeout=30).json()
    assert [t["content"] for t in audit["turns"]] == ["Hello from one", "Echo: Hello from one", "And from two",
                                                       "Echo: And from two"]
    # Another key sees it on neither.
    for server in (one, two):
        assert httpx.get(f"{server.base_url}/conversations/{conversation_id}", headers=auth(BOB),
                         timeout=30).status_code == 404
    # Metrics are per instance (each adds up its own workers).
    counts = []
    for server in (one, two):
        text = httpx.get(f"{server.base_url}/metrics", headers=metrics_auth(), timeout=30).text
        counts.append(sum(float(line.split()[-1]) for line in text.splitlines()
                          if line.startswith("agent_upstream_calls_total{")))
    assert counts == [1.0, 1.0]


def test_one_reply_at_a_time_per_conversation_across_instances(instances, fake) -> None:
    one, two = instances(), instances()
    conversation_id = post(one, {"message": "start"}).json()["conversation_id"]
    fake.script({"n_tokens": 30, "token_delay": 0.1})  # the next reply takes ~3 s
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(post, one, {"message": "slow one", "conversation_id": conversation_id})
        fake.wait_for_requests(2)  # the slow reply is upstream now
        raced = [post(server, {"message": "meanwhile", "conversation_id": conversation_id})
                 for server in (two, one, two)]
        assert [r.status_code for r in raced] == [409, 409, 409], [r.text for r in raced]
        assert all(r.json()["error"]["type"] == "conflict_error" for r in raced)
        assert slow.result(timeout=30).status_code == 200
    after = post(two, {"message": "now", "conversation_id": conversation_id})
    assert after.status_code == 200, after.text
    assert len(fake.requests()) == 3  # the refused ones never went upstream


def test_a_killed_instances_conversation_is_taken_over_by_the_other(instances, fake) -> None:
    one, two = instances(), instances()
    conversation_id = post(one, {"message": "start"}).json()["conversation_id"]
    fake.script({"n_tokens": 200, "token_delay": 0.05})
    with httpx.Client(timeout=30) as client:
        body = {"message": "long", "conversation_id": conversation_id}
        with client.stream("POST", f"{one.base_url}/agent/stream", json=body, headers=auth()) as response:
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    break
            kill_9_with_its_workers(one)  # mid-reply
    # On the same machine a dead holder's lease is free at once; on another machine it would be after its expiry.
    deadline = time.monotonic() + 20
    while True:
        again = post(two, {"message": "taken over", "conversation_id": conversation_id})
        if again.status_code == 200 or time.monotonic() > deadline:
            break
    assert again.status_code == 200, again.text
    audit = httpx.get(f"{two.base_url}/conversations/{conversation_id}", headers=auth(), timeout=30).json()
    statuses = [reply["status"] for reply in audit["replies"]]
    assert statuses == ["complete", "interrupted", "complete"], statuses
    assert all(call["status"] != "running" for call in audit["requests"])


def test_rate_limits_and_concurrency_caps_are_shared_through_redis(instances, fake) -> None:
    one, two = instances(AGENT_RATE_LIMIT="4/minute"), instances(AGENT_RATE_LIMIT="4/minute")
    statuses = [post(server, {"message": f"call {n}"}).status_code for n, server in enumerate((one, two) * 3)]
    assert statuses == [200, 200, 200, 200, 429, 429], statuses


def test_the_concurrency_cap_is_shared_through_redis(instances, fake) -> None:
    one = instances(AGENT_MAX_CONCURRENT_REPLIES="1")
    two = instances(AGENT_MAX_CONCURRENT_REPLIES="1")
    fake.script({"n_tokens": 20, "token_delay": 0.1})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, one, {"message": "slow"})
        fake.wait_for_requests(1)
        refused = post(two, {"message": "another conversation"})
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error", refused.text
        assert post(two, {"message": "bob's own"}, key=BOB).status_code == 200  # per key
        assert slow.result(timeout=30).status_code == 200
    assert post(two, {"message": "now there is room"}).status_code == 200
