"""The reply lease across processes: a dead holder on this machine frees it at once, a live one keeps it,
one on another machine keeps it until its expiry passes. On SQLite and PostgreSQL alike.

Lease columns are written straight into the database, as another worker process or instance would leave them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.engine import make_url

from agent_server.db import lease, open_database, writes
from agent_server.db.lease import this_machine
from agent_server.db.models import Conversation, new_id
from tests.conftest import ALICE

COLUMNS = [getattr(Conversation, name) for name in lease.COLUMNS]


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]


def sync_engine(database_url: str):  # type: ignore[no-untyped-def]
    url = make_url(database_url)
    return create_engine(url.set(drivername="sqlite+pysqlite" if url.get_backend_name() == "sqlite"
                                 else "postgresql+psycopg"))


def set_lock(database_url: str, conversation_id: str, *, machine: str, pid: int, started: str | None,
             expires: datetime) -> None:
    engine = sync_engine(database_url)
    try:
        with engine.begin() as conn:
            changed = conn.execute(update(Conversation).where(Conversation.id == conversation_id).values(
                lock_token="0123456789abcdef", lock_machine=machine, lock_pid=pid, lock_pid_started=started,
                lock_expires_at=expires, lock_reply_id="reply_elsewhere")).rowcount
    finally:
        engine.dispose()
    assert changed == 1


def lock_columns(database_url: str, conversation_id: str) -> tuple:
    engine = sync_engine(database_url)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(select(*COLUMNS).where(Conversation.id == conversation_id)).one())
    finally:
        engine.dispose()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A live process that is not this one."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture
async def conversation_id(client) -> str:
    response = await client.post("/agent", json={"message": "first"})
    assert response.status_code == 200, response.text
    return response.json()["conversation_id"]


async def turn_count(client, conversation_id: str) -> int:
    response = await client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200
    return len(response.json()["turns"])


def assert_conflict(response) -> None:
    assert response.status_code == 409, response.text
    assert response.json()["error"]["type"] == "conflict_error"
    assert set(response.json()["error"]) == {"type", "message"}
    assert ALICE not in response.text


async def test_lock_of_a_dead_process_on_this_machine_is_free_at_once(client, fake, database_url, conversation_id):
    process = subprocess.Popen(["sleep", "60"])
    started = start_time(process.pid)
    process.kill()
    process.wait(timeout=10)
    set_lock(database_url, conversation_id, machine=this_machine(), pid=process.pid, started=started,
             expires=now() + timedelta(seconds=30))

    response = await client.post("/agent", json={"message": "again", "conversation_id": conversation_id})
    assert response.status_code == 200, response.text
    # Taken over and released again when the reply was stored.
    assert lock_columns(database_url, conversation_id) == (None,) * len(lease.COLUMNS)


async def test_lock_of_a_live_process_is_held(client, fake, database_url, conversation_id, sleeper):
    set_lock(database_url, conversation_id, machine=this_machine(), pid=sleeper.pid, started=start_time(sleeper.pid),
             expires=now() + timedelta(seconds=30))
    calls = len(fake.requests())
    turns = await turn_count(client, conversation_id)

    response = await client.post("/agent", json={"message": "blocked", "conversation_id": conversation_id})
    assert_conflict(response)
    assert len(fake.requests()) == calls
    assert await turn_count(client, conversation_id) == turns
    assert lock_columns(database_url, conversation_id)[2] == sleeper.pid

    # The holder dies (say, kill -9): the lock is free at once, without waiting for its expiry.
    sleeper.kill()
    sleeper.wait(timeout=10)
    response = await client.post("/agent", json={"message": "free now", "conversation_id": conversation_id})
    assert response.status_code == 200, response.text


async def test_reused_pid_is_not_taken_for_the_holder(client, fake, database_url, conversation_id, sleeper):
    # The pid is alive, but it started at another time: it is not the process that took the lock.
    set_lock(database_url, conversation_id, machine=this_machine(), pid=sleeper.pid, started="1",
             expires=now() + timedelta(seconds=30))
    response = await client.post("/agent", json={"message": "again", "conversation_id": conversation_id})
    assert response.status_code == 200, response.text


async def test_lock_of_another_machine_is_held_until_it_expires(client, fake, database_url, conversation_id):
    # A pid that does not exist here proves nothing about a process on another machine.
    set_lock(database_url, conversation_id, machine="worker-2/another-boot-id", pid=4_000_000, started="123",
             expires=now() + timedelta(seconds=30))
    for _ in range(2):
        response = await client.post("/agent", json={"message": "blocked", "conversation_id": conversation_id})
        assert_conflict(response)

    set_lock(database_url, conversation_id, machine="worker-2/another-boot-id", pid=4_000_000, started="123",
             expires=now() - timedelta(seconds=1))
    response = await client.post("/agent", json={"message": "expired", "conversation_id": conversation_id})
    assert response.status_code == 200, response.text
    assert lock_columns(database_url, conversation_id)[0] is None


async def test_a_conflict_does_not_disturb_the_holder(client, fake, database_url, conversation_id, sleeper):
    expires = now() + timedelta(seconds=30)
    set_lock(database_url, conversation_id, machine=this_machine(), pid=sleeper.pid, started=start_time(sleeper.pid),
             expires=expires)
    before = lock_columns(database_url, conversation_id)
    assert_conflict(await client.post("/agent", json={"message": "x", "conversation_id": conversation_id}))
    assert lock_columns(database_url, conversation_id) == before


async def test_renewing_pushes_back_only_the_given_leases(database_url):
    """What the supervisor runs every few seconds for the replies this process is generating."""
    db = open_database(database_url)
    holder = lease.this_process()
    taken = now().replace(microsecond=0)
    renewed, untouched = new_id("conv"), new_id("conv")
    try:
        await db.write(writes.apply, ops=[
            writes.insert_conversation(id=cid, owner="alice", model="m", system=None, created_at=taken,
                                       updated_at=taken, **lease.claim_values(token=token, reply_id="r",
                                                                              holder=holder, now=taken))
            for cid, token in ((renewed, "token-renewed"), (untouched, "token-left-as-is"))])
        later = taken + timedelta(seconds=20)
        # A token that no longer holds its conversation (the lease was taken over) is not renewed either.
        await db.write(lease.renew, held=[(renewed, "token-renewed"), (untouched, "token-renewed"),
                                          (renewed, "no-such-token")], now=later)
    finally:
        await db.dispose()
    expiry = {cid: lock_columns(database_url, cid)[4] for cid in (renewed, untouched)}
    assert expiry[renewed] == later + lease.LEASE_TTL
    assert expiry[untouched] == taken + lease.LEASE_TTL
