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

from sqlite3 import Connection

from . import writes

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


def is_free(row, now: datetime) -> bool:
    """The rule: a lock is free when unset, expired, or held by a dead process of this machine.

    ``row`` has the ``lock_*`` columns of the conversation.
    """
    held = row.lock_token is not None and row.lock_expires_at is not None and row.lock_expires_at > now
    return not held or holder_is_dead(row.lock_machine, row.lock_pid, row.lock_pid_started)


def claim_values(*, token: str, holder: Holder, now: datetime) -> dict:
    """The column values that mark the lock as held by ``holder`` (for an INSERT or an UPDATE)."""
    return {
        "lock_token": token,
        "lock_machine": holder.machine,
        "lock_pid": holder.pid,
        "lock_pid_started": holder.pid_started,
        "lock_expires_at": now + LOCK_TTL,
    }


def claim(conn: Connection, *, conversation_id: str, token: str, holder: Holder, now: datetime) -> None:
    """Mark the lock held, inside the write transaction that found it free."""
    values = claim_values(token=token, holder=holder, now=now)
    writes.set_reply_lock(conn, conversation_id=conversation_id, values=values)


def release(conn: Connection, *, conversation_id: str, token: str, now: datetime) -> None:
    """Free the lock if ``token`` still holds it, and mark the conversation updated at ``now``."""
    writes.clear_reply_lock(conn, conversation_id=conversation_id, token=token, now=now)


def renew(conn: Connection, *, held: list[tuple[str, str]], now: datetime) -> None:
    """Push back the expiry of the locks this process holds, given as ``(conversation_id, token)`` pairs
    (called every ``RENEW_EVERY_SECONDS``)."""
    if held:
        writes.extend_reply_locks(conn, held=held, expires_at=now + LOCK_TTL)
