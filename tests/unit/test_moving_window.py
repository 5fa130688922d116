"""The in-process moving window: exact counting, refusals that cost nothing, the reset time, forgetting."""

from __future__ import annotations

from agent_server.ratelimit import MovingWindow


def test_the_call_after_the_limit_is_refused_until_the_oldest_leaves_the_window() -> None:
    window = MovingWindow(limit=3, seconds=60)
    assert [window.hit("alice", now=t) for t in (100.0, 110.0, 120.0)] == [
        (True, 2, 60), (True, 1, 50), (True, 0, 40),
    ]
    assert window.hit("alice", now=130.0) == (False, 0, 30)
    assert window.hit("alice", now=160.0) == (False, 0, 1)  # the call at 100 is exactly on the edge: it counts
    assert window.hit("alice", now=160.5) == (True, 0, 10)  # ... until the window has passed it
    assert window.hit("alice", now=170.5) == (True, 0, 10)


def test_refused_calls_use_no_quota_and_callers_are_counted_apart() -> None:
    window = MovingWindow(limit=1, seconds=10)
    assert window.hit("alice", now=0.0)[0]
    assert [window.hit("alice", now=t)[0] for t in (1.0, 2.0, 3.0)] == [False, False, False]
    assert window.hit("bob", now=3.0)[0]
    assert window.hit("alice", now=10.5)[0]  # the refusals at 1, 2 and 3 did not extend alice's window


def test_callers_whose_calls_have_all_expired_are_forgotten() -> None:
    window = MovingWindow(limit=5, seconds=10)
    for i in range(MovingWindow.SWEEP_EVERY - 1):
        window.hit(f"ip:10.0.{i // 256}.{i % 256}", now=0.0)
    assert window.identities == MovingWindow.SWEEP_EVERY - 1
    window.hit("alice", now=20.0)  # the sweep runs on this call: everyone else is long out of the window
    assert window.identities == 1
