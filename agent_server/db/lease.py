"""One reply at a time per conversation: a lease on the conversation row, across processes and instances.

The lease is a random token, the reply holding it, who holds it (machine, pid and the pid's start time, so a
reused pid is not mistaken for the holder) and an expiry that the holding process renews while it works. It is
free when unset, expired, or held by a process of this machine that no longer exists: a process killed with
``kill -9`` frees its leases at once for its neighbours on the same machine; one on another machine frees them
when the expiry passes (``LEASE_TTL``).

Taken inside a write transaction that first locks the conversation row (``SELECT ... FOR UPDATE``; on SQLite the
write transaction is already exclusive), so two instances can never both see it free.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from sqlalchemy import bindparam, null, update

from .models import Conversation

LEASE_TTL = timedelta(seconds=30)
RENEW_EVERY_SECONDS = 10
COLUMNS = ("lock_token", "lock_machine", "lock_pid", "lock_pid_started", "lock_expires_at", "lock_reply_id")


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


def is_free(row, now: datetime) -> bool:
    """``row`` has the ``lock_*`` columns of the conversation."""
    held = row.lock_token is not None and row.lock_expires_at is not None and row.lock_expires_at > now
    return not held or holder_is_dead(row.lock_machine, row.lock_pid, row.lock_pid_started)


def claim_values(*, token: str, reply_id: str, holder: Holder, now: datetime) -> dict:
    """The column values that mark the lease as held (for an INSERT or an UPDATE)."""
    return {
        "lock_token": token,
        "lock_machine": holder.machine,
        "lock_pid": holder.pid,
        "lock_pid_started": holder.pid_started,
        "lock_expires_at": now + LEASE_TTL,
        "lock_reply_id": reply_id,
    }


_table = Conversation.__table__
_CLAIM = (
    update(_table)
    .where(_table.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}") for name in COLUMNS})
)
_RELEASE = (
    update(_table)
    .where(_table.c.id == bindparam("b_id"), _table.c.lock_token == bindparam("b_token"))
    .values({**{name: null() for name in COLUMNS}, "updated_at": bindparam("b_now")})
)
_RENEW = (
    update(_table)
    .where(_table.c.id == bindparam("b_id"), _table.c.lock_token == bindparam("b_token"))
    .values(lock_expires_at=bindparam("b_expires"))
)


async def claim(conn, *, conversation_id: str, token: str, reply_id: str, holder: Holder, now: datetime) -> None:
    """Mark the lease held, inside the write transaction that found it free."""
    values = claim_values(token=token, reply_id=reply_id, holder=holder, now=now)
    await conn.execute(_CLAIM, {"b_id": conversation_id, **{f"b_{key}": value for key, value in values.items()}})


async def release(conn, *, conversation_id: str, token: str, now: datetime) -> None:
    """Free the lease if ``token`` still holds it, and mark the conversation updated at ``now``."""
    await conn.execute(_RELEASE, {"b_id": conversation_id, "b_token": token, "b_now": now})


async def renew(conn, *, held: list[tuple[str, str]], now: datetime) -> None:
    """Push back the expiry of each ``(conversation_id, token)`` lease this process still holds (by primary key:
    ``lock_token`` has no index)."""
    if held:
        expires = now + LEASE_TTL
        await conn.execute(_RENEW, [{"b_id": c, "b_token": t, "b_expires": expires} for c, t in held])
