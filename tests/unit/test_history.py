"""Which stored turns go upstream: completed exchanges only, always alternating user/assistant."""

from __future__ import annotations

import random

import pytest

from agent_server.history import upstream_messages


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def rows(*turns: tuple[str, str]) -> list[tuple[int, str, str]]:
    """(seq, role, content) rows numbered from 1, as the repository returns complete turns."""
    return [(seq, role, content) for seq, (role, content) in enumerate(turns, start=1)]


def test_no_history_sends_only_the_new_message() -> None:
    assert upstream_messages([], "Hi") == [user("Hi")]


def test_one_exchange() -> None:
    history = rows(("user", "Hi"), ("assistant", "Hello!"))
    assert upstream_messages(history, "How are you?") == [user("Hi"), assistant("Hello!"), user("How are you?")]


def test_two_exchanges() -> None:
    history = rows(("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"))
    assert upstream_messages(history, "q3") == [user("q1"), assistant("a1"), user("q2"), assistant("a2"), user("q3")]


@pytest.mark.parametrize("n", [3, 10, 50])
def test_n_exchanges_oldest_first(n: int) -> None:
    history: list[tuple[str, str]] = []
    expected: list[dict] = []
    for i in range(n):
        history += [("user", f"q{i}"), ("assistant", f"a{i}")]
        expected += [user(f"q{i}"), assistant(f"a{i}")]
    assert upstream_messages(rows(*history), "last") == [*expected, user("last")]


def test_accepts_any_iterable_of_rows() -> None:
    history = iter(rows(("user", "q1"), ("assistant", "a1")))
    assert upstream_messages(history, "q2") == [user("q1"), assistant("a1"), user("q2")]


def test_failed_reply_without_text_is_left_out_with_its_user_turn() -> None:
    # seq 2 asked, the upstream failed before any text: no assistant turn was stored at all.
    history = [(1, "user", "q1"), (2, "user", "q2"), (3, "user", "q3"), (4, "assistant", "a3")]
    assert upstream_messages(history, "q4") == [user("q3"), assistant("a3"), user("q4")]


def test_failed_or_incomplete_reply_with_text_is_left_out_with_its_user_turn() -> None:
    # Only complete turns are passed in: the failed (seq 2) and incomplete (seq 6) replies leave gaps.
    history = [
        (1, "user", "q1"),
        (3, "user", "q2"),
        (4, "assistant", "a2"),
        (5, "user", "q3"),
        (7, "user", "q4"),
        (8, "assistant", "a4"),
    ]
    assert upstream_messages(history, "q5") == [user("q2"), assistant("a2"), user("q4"), assistant("a4"), user("q5")]


def test_user_turn_whose_reply_never_came_is_left_out() -> None:
    # The server died after committing seq 3: the next message must not make two user turns in a row.
    history = rows(("user", "q1"), ("assistant", "a1"), ("user", "lost"))
    assert upstream_messages(history, "q2") == [user("q1"), assistant("a1"), user("q2")]


def test_crash_in_the_middle_is_left_out() -> None:
    history = rows(("user", "q1"), ("assistant", "a1"), ("user", "lost"), ("user", "q2"), ("assistant", "a2"))
    assert upstream_messages(history, "q3") == [user("q1"), assistant("a1"), user("q2"), assistant("a2"), user("q3")]


def test_empty_assistant_reply_is_left_out_with_its_user_turn() -> None:
    # The API refuses empty text blocks.
    history = rows(("user", "q1"), ("assistant", ""), ("user", "q2"), ("assistant", "a2"))
    assert upstream_messages(history, "q3") == [user("q2"), assistant("a2"), user("q3")]


@pytest.mark.parametrize("blank", [" ", "\n\n", " \t\n"])
def test_whitespace_only_assistant_reply_is_left_out(blank: str) -> None:
    # The API refuses these too ("text content blocks must contain non-whitespace text"): sending one
    # would make every later reply of the conversation fail with a 400.
    history = rows(("user", "q1"), ("assistant", blank), ("user", "q2"), ("assistant", "a2"))
    assert upstream_messages(history, "q3") == [user("q2"), assistant("a2"), user("q3")]


def test_assistant_turn_without_its_user_turn_is_left_out() -> None:
    history = [(2, "assistant", "orphan"), (3, "user", "q2"), (4, "assistant", "a2")]
    assert upstream_messages(history, "q3") == [user("q2"), assistant("a2"), user("q3")]


def test_text_is_sent_exactly_as_stored() -> None:
    history = rows(("user", "  line one\nline two  "), ("assistant", "reply\n\nwith blank lines "))
    assert upstream_messages(history, " new ") == [
        user("  line one\nline two  "),
        assistant("reply\n\nwith blank lines "),
        user(" new "),
    ]


def test_input_rows_are_not_changed() -> None:
    history = rows(("user", "q1"), ("assistant", "a1"))
    snapshot = list(history)
    upstream_messages(history, "q2")
    assert history == snapshot


def _simulate(rng: random.Random, exchanges: int) -> tuple[list[tuple[int, str, str]], list[dict]]:
    """Stored complete turns of a random life of a conversation, and the history that should go upstream."""
    stored: list[tuple[int, str, str]] = []
    expected: list[dict] = []
    seq = 0
    for i in range(exchanges):
        seq += 1
        stored.append((seq, "user", f"q{i}"))
        fate = rng.choice(["complete", "complete", "failed-no-text", "failed", "incomplete", "crash", "empty"])
        if fate == "failed-no-text" or fate == "crash":
            continue  # no assistant turn stored
        seq += 1
        if fate == "complete":
            stored.append((seq, "assistant", f"a{i}"))
            expected += [user(f"q{i}"), assistant(f"a{i}")]
        elif fate == "empty":
            stored.append((seq, "assistant", ""))
        # failed / incomplete: the assistant turn exists but is not complete, so it is not passed in
    return stored, expected


@pytest.mark.parametrize("seed", range(20))
def test_random_histories_alternate_and_keep_only_complete_exchanges(seed: int) -> None:
    rng = random.Random(seed)
    stored, expected = _simulate(rng, rng.randint(0, 30))
    messages = upstream_messages(stored, "now")
    assert messages == [*expected, user("now")]
    roles = [m["role"] for m in messages]
    assert roles[0] == "user" and roles[-1] == "user"
    assert all(a != b for a, b in zip(roles, roles[1:])), roles
    assert all(m["content"].strip() for m in messages)
