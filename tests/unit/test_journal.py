"""A running reply's journal: followers see every event in order, at once, and never hold each other up."""

from __future__ import annotations

import asyncio

from agent_server.engine import events as ev
from agent_server.engine.journal import Journal


class MemoryStore:
    """The store's side a journal talks to, without a database: nothing is flushed in these tests."""

    def __init__(self) -> None:
        self.dirty_journals: list[Journal] = []

    def dirty(self, journal: Journal) -> None:
        self.dirty_journals.append(journal)

    def forget(self, journal: Journal) -> None:
        pass

    def ended(self, reply_id: str) -> None:
        pass


async def _collect(journal: Journal, into: list[int], after: int = 0) -> None:
    async for event in journal.follow(after):
        into.append(event.seq)


async def _until_waiting(journal: Journal) -> None:
    while not journal.waiting:
        await asyncio.sleep(0)


async def test_a_waiting_follower_has_the_event_after_one_turn_of_the_loop() -> None:
    journal = Journal("reply_a", MemoryStore())
    seen: list[int] = []
    follower = asyncio.create_task(_collect(journal, seen))
    await _until_waiting(journal)

    journal.emit(ev.Token("hello"))
    assert not journal.waiting  # woken: it has an event to take
    await asyncio.sleep(0)  # the one turn a reply yields after its first delta
    assert seen == [1]

    journal.close()
    await follower


async def test_a_follower_that_leaves_does_not_stop_the_others() -> None:
    journal = Journal("reply_b", MemoryStore())
    kept: list[int] = []
    left: list[int] = []
    staying = asyncio.create_task(_collect(journal, kept))
    leaving = asyncio.create_task(_collect(journal, left))
    await _until_waiting(journal)
    journal.emit(ev.Token("one"))
    await asyncio.sleep(0)
    leaving.cancel()  # its client went away while it waited
    await asyncio.gather(leaving, return_exceptions=True)

    journal.emit(ev.Token("two"))
    journal.close()
    await staying
    assert kept == [1, 2]
    assert left == [1]


async def test_a_follower_that_comes_late_gets_everything_then_the_end() -> None:
    journal = Journal("reply_c", MemoryStore())
    for text in ("a", "b", "c"):
        journal.emit(ev.Token(text))
    seen: list[int] = []
    follower = asyncio.create_task(_collect(journal, seen, after=1))
    await _until_waiting(journal)
    assert seen == [2, 3]
    journal.close()
    await follower
    assert follower.done() and seen == [2, 3]
