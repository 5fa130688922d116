"""The database interface: what the rest of the code knows of storage, whichever database is behind it.

Two sides implement it, chosen once from ``DATABASE_URL`` (``db.open_database``): ``sqlite.SqliteDatabase`` and
``postgres.PostgresDatabase``. Everything else writes dialect-neutral SQLAlchemy Core statements against two
calls:

- ``async with db.read() as conn``: one read transaction (a consistent snapshot) on an ``AsyncConnection``;
- ``await db.write(transaction, **kwargs)``: ``transaction(conn, **kwargs)`` in one write transaction,
  committed when it returns, rolled back when it raises. ``conn.execute()`` is awaited on both sides.

Write transactions are short: a few statements on a few rows. A transaction that may touch many rows (deleting
a conversation) says so with ``heavy=True``, and the SQLite side then runs it off the event loop.

Failures of the storage itself (disk full, read-only file, the server gone) raise ``StorageError``, which the
service reports as a typed 503 ``storage_error``; anything else is a bug and propagates as it is.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import errors

log = logging.getLogger(__name__)
T = TypeVar("T")
# The execution option that marks a plain write of ``db.writes`` (one table, no RETURNING, every value given): a
# side may run those its own, cheaper way (the SQLite side does: ``sqlite_direct``).
PLAIN = "agent_server_plain"
Transaction = Callable[..., Awaitable[T]]


class StorageError(errors.StorageUnavailable):
    """The database could not do what was asked for a reason of its own (full, read-only, unreachable)."""


def is_storage_failure(exc: BaseException) -> bool:
    """Operational failures of the database, not mistakes of ours (a constraint violation is a bug)."""
    if isinstance(exc, StorageError):
        return True
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OSError, ConnectionError))


def describe_storage_failure(exc: BaseException) -> str:
    """A short, safe description (never the SQL or its parameters)."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).splitlines()[0] if str(original) else type(original).__name__
    return text[:200]


class WriteHealth:
    """The outcome of recent writes, for readiness: failing since when, and why."""

    def __init__(self) -> None:
        self.failing_since: float | None = None
        self.reason: str | None = None

    def failed(self, exc: BaseException) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.reason = describe_storage_failure(exc)

    def succeeded(self) -> None:
        self.failing_since, self.reason = None, None


class Database(abc.ABC):
    """One process's connections to one database."""

    dialect: str
    url: str

    def __init__(self) -> None:
        self.health = WriteHealth()

    @abc.abstractmethod
    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A read-only transaction: one consistent snapshot."""

    @abc.abstractmethod
    async def _write(self, transaction: Transaction[T], heavy: bool, kwargs: dict[str, Any]) -> T:
        """Run ``transaction`` in one write transaction (the side's own way)."""

    async def write(self, transaction: Transaction[T], /, *, heavy: bool = False, **kwargs: Any) -> T:
        """Run ``transaction(conn, **kwargs)`` in one write transaction; storage failures are ``StorageError``.

        Once started, a transaction runs to its end even if the awaiting task is cancelled (it is shielded):
        a caller that must know whether it committed awaits it again, or checks afterwards.
        """
        task = asyncio.ensure_future(self._guarded(transaction, heavy, kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(_retrieve)
            raise

    async def _guarded(self, transaction: Transaction[T], heavy: bool, kwargs: dict[str, Any]) -> T:
        try:
            result = await self._write(transaction, heavy, kwargs)
        except BaseException as exc:
            if is_storage_failure(exc):
                self.health.failed(exc)
                if isinstance(exc, StorageError):
                    raise
                raise StorageError(f"The database could not store this ({describe_storage_failure(exc)}).") from exc
            raise
        self.health.succeeded()
        return result

    def identity_problem(self) -> str | None:
        """Why the database this process writes is no longer the one its URL names (SQLite: the file was
        replaced or removed), or None."""
        return None

    @abc.abstractmethod
    async def dispose(self) -> None:
        """Close every connection."""

    async def stream_rows(self, statement, *, batch: int = 500) -> AsyncIterator[Any]:
        """The rows of one large read, in batches, without holding them all in memory."""
        async with self.read() as conn:
            result = await conn.stream(statement)
            async for partition in result.partitions(batch):
                for row in partition:
                    yield row


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a write whose caller had gone failed: %s", type(task.exception()).__name__)
