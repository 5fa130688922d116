"""One reply at a time per conversation, held in the database so it works across worker processes.

The lock lives on the conversation row: a random token, who holds it (machine, pid and the pid's start
time, so a reused pid is not mistaken for the holder) and an expiry that the holding process renews while
it works. It is free when unset, expired, or held by a process of this machine that no longer exists: a
process killed with ``kill -9`` on this machine releases its locks at once; one on another machine (the
database is on a shared volume) releases them when the expiry passes (``LOCK_TTL``).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .models import Conversation

LOCK_TTL = timedelta(seconds=30)
RENEW_EVERY_SECONDS = 10


@dataclass(frozen=True)
class Holder:
    machine: str
    pid: int
    pid_started: str | None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def process_started(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None where /proc is missing."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


@lru_cache(maxsize=1)
def this_machine() -> str:
    # The boot id changes at reboot, so pids from before a reboot are never taken for live ones.
    return f"{socket.gethostname()}/{_read('/proc/sys/kernel/random/boot_id') or 'no-boot-id'}"


def this_process() -> Holder:
    pid = os.getpid()
    return Holder(this_machine(), pid, process_started(pid))


def holder_is_dead(machine: str | None, pid: int | None, pid_started: str | None) -> bool:
    """True only when we can tell for sure: the holder ran on this machine and is gone."""
    if machine != this_machine() or pid is None:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return pid_started is not None and process_started(pid) != pid_started


def new_token() -> str:
    return secrets.token_hex(8)


async def try_acquire(
    conn: AsyncConnection, *, conversation_id: str, token: str, holder: Holder, now: datetime
) -> bool:
    """Take the lock inside the caller's write transaction; False when someone live holds it."""
    row = (
        await conn.execute(
            select(
                Conversation.lock_token,
                Conversation.lock_machine,
                Conversation.lock_pid,
                Conversation.lock_pid_started,
                Conversation.lock_expires_at,
            ).where(Conversation.id == conversation_id)
        )
    ).one_or_none()
    if row is None:
        return False
    held = row.lock_token is not None and row.lock_expires_at is not None and row.lock_expires_at > now
    if held and not holder_is_dead(row.lock_machine, row.lock_pid, row.lock_pid_started):
        return False
    await conn.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id)
        .values(
            lock_token=token,
            lock_machine=holder.machine,
            lock_pid=holder.pid,
            lock_pid_started=holder.pid_started,
            lock_expires_at=now + LOCK_TTL,
        )
    )
    return True


async def release(conn: AsyncConnection, *, conversation_id: str, token: str) -> None:
    await conn.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.lock_token == token)
        .values(lock_token=None, lock_machine=None, lock_pid=None, lock_pid_started=None, lock_expires_at=None)
    )


async def renew(conn: AsyncConnection, *, tokens: list[str], now: datetime) -> None:
    """Push back the expiry of the locks this process holds (called every ``RENEW_EVERY_SECONDS``)."""
    if tokens:
        await conn.execute(
            update(Conversation).where(Conversation.lock_token.in_(tokens)).values(lock_expires_at=now + LOCK_TTL)
        )
