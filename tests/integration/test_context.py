"""The context window (API.md "Context and caching"): a conversation longer than the model's window keeps answering.

The window is made small on both sides: the server's through AGENT_PRICES_FILE ``context_window``, the fake's through
``set_models`` (the fake counts ~4 characters a token over everything sent and refuses a longer prompt with 400
"prompt is too long: N tokens > M maximum"). What is checked each time: every reply answers; every turn stays
stored, unchanged; ``start``/``done`` say how many turns were sent and left out, and the fake got exactly that many
(the newest, whole); no request the fake refused (no tool_use without its tool_result); the cut moves in steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from agent_server.fake_upstream import Behaviour, ToolCall
from tests.conftest import app_client, auth, make_settings

MODEL = "claude-sonnet-5-5"
MAX_TOKENS = 256
FILLER = "lorem ipsum dolor sit amet " * 15  # ~400 characters: ~100 tokens a message, as much again its echo


def big_output(size: int) -> str:
    """A tool whose result is ``size`` characters long (it overflows a small context window)."""
    return "r" * size


def prices_file(tmp_path: Path, window: int) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {MODEL: {"input": "2", "output": "10", "context_window": window}}}))
    return path


def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.toml"
    path.write_text('[tools.big_output]\npython = "tests.integration.test_context:big_output"\n\n'
                    '[tools.calculator]\npython = "agent_server.tools.examples:calculator"\n\n'
                    '[client_tools.read_file]\ndescription = "A file on the user\'s machine."\n'
                    'input_schema = { type = "object", properties = {} }\n')
    return path


def settings(database_url: str, fake, tmp_path: Path, *, server_window: int, **extra):  # type: ignore[no-untyped-def]
    return make_settings(database_url, fake, AGENT_PRICES_FILE=str(prices_file(tmp_path, server_window)),
                         AGENT_TOOLS_FILE=str(tools_file(tmp_path)), AGENT_MAX_TOKENS=MAX_TOKENS, **extra)


def sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next(line[len("event: "):] for line in lines if line.startswith("event: "))
        events.append((name, json.loads("".join(line[len("data: "):] for line in lines if line.startswith("data: ")))))
    return events


async def stream(client: httpx.AsyncClient, body: dict) -> tuple[dict, dict]:
    """One streamed reply: its ``start`` and ``done`` data (it must end with ``done``)."""
    response = await client.post("/agent/stream", json=body)
    assert response.status_code == 200, response.text
    events = sse(response.text)
    assert events[0][0] == "start" and events[-1][0] == "done", events[-3:]
    return events[0][1], events[-1][1]


async def audit(client: httpx.AsyncClient, conversation_id: str) -> dict:
    response = await client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()


def sent_messages(fake) -> list[list[dict]]:  # type: ignore[no-untyped-def]
    return [r["body"]["messages"] for r in fake.requests() if r["path"] == "/v1/messages"]


def blocks_of(message: dict) -> list[dict]:
    """A message's blocks as stored (the server adds cache markers to what it sends)."""
    content = message["content"]
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{k: v for k, v in block.items() if k != "cache_control"} for block in content]


def stored_messages(turns: list[dict]) -> list[dict]:
    """Complete turns as the API sees them: consecutive turns of one role are one message."""
    merged: list[dict] = []
    for turn in turns:
        if turn["status"] != "complete":
            continue
        if merged and merged[-1]["role"] == turn["role"]:
            merged[-1]["content"] = merged[-1]["content"] + turn["blocks"]
        else:
            merged.append({"role": turn["role"], "content": list(turn["blocks"])})
    return merged


# -- a long conversation ----------------------------------------------------------------------------------------


async def test_a_conversation_far_longer_than_the_window_keeps_answering_cut_in_steps(database_url, fake,
                                                                                      tmp_path) -> None:
    window = 2048
    fake.set_models({MODEL: {"context_window": window}})
    async with app_client(settings(database_url, fake, tmp_path, server_window=window)) as client:
        client.headers.update(auth())
        conversation_id = None
        omitted_per_reply: list[int] = []
        stored_before: list[dict] = []
        for number in range(24):
            tool_reply = number % 4 == 2  # some replies hold a tool pair, which a cut must never split
            if tool_reply:
                fake.script(Behaviour(tool_calls=[ToolCall(name="calculator", input={"expression": f"{number}*7"})]),
                            Behaviour(text=f"It is {number * 7}. " + FILLER))
            body = {"message": f"question {number}: {FILLER}"}
            if conversation_id is not None:
                body["conversation_id"] = conversation_id
            requests_before = len(fake.requests())
            start, done = await stream(client, body)
            conversation_id = done["conversation_id"]
            assert done["status"] == "complete"
            assert start["context"] == done["context"]
            context = done["context"]
            # Every stored turn before this reply was either sent or left out; the prompt is sent.
            assert context["turns_sent"] + context["turns_omitted"] == len(stored_before) + 1, (number, context)
            omitted_per_reply.append(context["turns_omitted"])

            first = sent_messages(fake)[requests_before]
            history = stored_messages(stored_before[context["turns_omitted"]:])
            expected = history + [{"role": "user", "content": [{"type": "text", "text": body["message"]}]}]
            # The fake got exactly the newest turns, whole: the first one a user's, oldest first.
            assert [{"role": m["role"], "content": blocks_of(m)} for m in first] == expected, number
            assert first[0]["role"] == "user"
            assert all(m["role"] == "user" for m in first[::2])

            now = await audit(client, conversation_id)
            # The audit keeps every turn, unchanged: the stored history never changes.
            assert now["turns"][:len(stored_before)] == stored_before
            assert len(now["turns"]) == len(stored_before) + (4 if tool_reply else 2)
            assert all(turn["status"] == "complete" for turn in now["turns"])
            stored_before = now["turns"]

        assert fake.violations() == []
        assert max(omitted_per_reply) > 0  # it grew well past the window...
        # ... and was cut in steps: the first omitted turn stays the same over several replies, then jumps.
        changes = [i for i in range(1, len(omitted_per_reply)) if omitted_per_reply[i] != omitted_per_reply[i - 1]]
        assert len(changes) >= 2, omitted_per_reply
        assert omitted_per_reply == sorted(omitted_per_reply)  # only ever forward
        runs = [b - a for a, b in zip([0, *changes], [*changes, len(omitted_per_reply)])]
        assert max(runs[1:]) >= 3, omitted_per_reply  # after a cut, several replies keep the same prefix
        # The audit's replies say the same as the events did.
        replies = now["replies"]
        assert [r["context"]["turns_omitted"] for r in replies] == omitted_per_reply


async def test_the_window_counts_a_long_system_prompt_once_not_three_times(database_url, fake, tmp_path) -> None:
    """The estimate is calibrated by the previous call's real tokens; that call counted the system prompt, so the
    calibration must too (it did not: every reply after the first left out the whole history)."""
    window = 4096
    fake.set_models({MODEL: {"context_window": window}})
    async with app_client(settings(database_url, fake, tmp_path, server_window=window)) as client:
        client.headers.update(auth())
        system = "You are terse. " * 260  # ~3,900 characters: ~1,000 tokens, a quarter of the window
        conversation_id, contexts = None, []
        for number in range(5):
            body = {"message": f"question {number}: {FILLER}", "system": system}
            if conversation_id is not None:
                body["conversation_id"] = conversation_id
            response = await client.post("/agent", json=body)
            assert response.status_code == 200, response.text
            conversation_id = response.json()["conversation_id"]
            contexts.append(response.json()["context"])
        # Five exchanges of ~200 tokens and the system prompt fit in 4,096 tokens: nothing is left out.
        assert contexts == [{"turns_sent": 2 * n + 1, "turns_omitted": 0} for n in range(5)]
        assert fake.violations() == []


# -- a tool loop that overflows the window mid-reply ---------------------------------------------------------------


async def test_a_tool_loop_whose_results_overflow_the_window_leaves_out_older_exchanges(database_url, fake,
                                                                                         tmp_path) -> None:
    window = 4096
    fake.set_models({MODEL: {"context_window": window}})
    async with app_client(settings(database_url, fake, tmp_path, server_window=window)) as client:
        client.headers.update(auth())
        conversation_id = None
        for number in range(12):  # ~2,500 tokens of history: it fits, with room to spare
            body = {"message": f"question {number}: {FILLER}"}
            if conversation_id is not None:
                body["conversation_id"] = conversation_id
            response = await client.post("/agent", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["context"]["turns_omitted"] == 0
            conversation_id = response.json()["conversation_id"]
        before = (await audit(client, conversation_id))["turns"]

        # Four tool results of ~400 tokens each: by the fourth, history and results no longer fit together.
        fake.script(*[Behaviour(tool_calls=[ToolCall(name="big_output", input={"size": 1600})]) for _ in range(4)],
                    Behaviour(text="All four read."))
        requests_before = len(fake.requests())
        response = await client.post("/agent", json={"message": "read four big things", "conversation_id":
                                                     conversation_id})
        assert response.status_code == 200, response.text
        done = response.json()
        assert done["status"] == "complete" and done["steps"] == 5 and done["content"].endswith("All four read.")
        assert fake.violations() == []

        calls = sent_messages(fake)[requests_before:]
        assert len(calls) == 5  # no refused request, no retry: the server saw it coming
        # Messages before this reply's prompt, per step (each step adds its tool_use and its tool_result).
        history_sent = [len(messages) - 1 - 2 * step for step, messages in enumerate(calls)]
        assert history_sent[0] == len(before)  # the first step sent the whole history
        # Older exchanges were left out as the results grew, the newest kept.
        assert 0 < history_sent[-1] < history_sent[0], history_sent
        assert history_sent == sorted(history_sent, reverse=True)
        for messages in calls:
            assert messages[0]["role"] == "user"
            text = "".join(block.get("text", "") for block in blocks_of(messages[0]))
            assert text.startswith("question ")  # a whole exchange: it starts with its question
        assert done["context"]["turns_omitted"] == len(before) - history_sent[-1]
        assert done["context"]["turns_sent"] == history_sent[-1] + 1

        after = (await audit(client, conversation_id))
        assert after["turns"][:len(before)] == before  # nothing stored changed
        assert len(after["turns"]) == len(before) + 1 + 4 * 2 + 1
        # The next reply starts where this one left off, and answers.
        response = await client.post("/agent", json={"message": "and now?", "conversation_id": conversation_id})
        assert response.status_code == 200, response.text
        assert fake.violations() == []


@pytest.mark.parametrize("size", [6000, 9000])
async def test_a_large_answer_to_a_paused_reply_leaves_out_older_exchanges(database_url, fake, tmp_path,
                                                                           size: int) -> None:
    """The reply that continues a pause starts with the client's tool result: the window counts it at once, and
    never leaves out the paused step it answers (its tool_use), even when the result alone fills the window."""
    window = 4096
    fake.set_models({MODEL: {"context_window": window}})
    async with app_client(settings(database_url, fake, tmp_path, server_window=window)) as client:
        client.headers.update(auth())
        conversation_id = None
        for number in range(12):
            body = {"message": f"question {number}: {FILLER}"}
            if conversation_id is not None:
                body["conversation_id"] = conversation_id
            response = await client.post("/agent", json=body)
            assert response.status_code == 200, response.text
            conversation_id = response.json()["conversation_id"]
        fake.script(Behaviour(tool_calls=[ToolCall(name="read_file", id="toolu_file")]), Behaviour(text="read"))
        paused = await client.post("/agent", json={"message": "read my file", "conversation_id": conversation_id})
        assert paused.status_code == 200 and paused.json()["status"] == "requires_action", paused.text
        requests_before = len(fake.requests())
        answered = await client.post("/agent", json={"conversation_id": conversation_id, "tool_results": [
            {"tool_use_id": "toolu_file", "content": "f" * size}]})  # ~1,500 or ~2,250 tokens
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == "complete"
        assert answered.json()["context"]["turns_omitted"] > 0
        assert len(fake.requests()) == requests_before + 1  # no refusal, no retry
        assert fake.violations() == []
        sent = fake.requests()[-1]["body"]["messages"]
        assert sent[-2]["content"][-1]["type"] == "tool_use" and sent[-2]["content"][-1]["id"] == "toolu_file"
        assert sent[0]["role"] == "user"


# -- "prompt is too long" from the upstream ------------------------------------------------------------------------


async def test_prompt_too_long_from_the_upstream_leaves_out_more_and_tries_once_more(database_url, fake,
                                                                                     tmp_path) -> None:
    """The server's estimate is too low (its window says 8,192, the model's is 2,048): the upstream refuses, the
    server leaves out more and tries once more, and the reply succeeds; the refused call is in the ledger."""
    fake.set_models({MODEL: {"context_window": 2048}})
    async with app_client(settings(database_url, fake, tmp_path, server_window=8192)) as client:
        client.headers.update(auth())
        conversation_id, stored, refused_reply = None, [], None
        for number in range(16):
            body = {"message": f"question {number}: {FILLER}"}
            if conversation_id is not None:
                body["conversation_id"] = conversation_id
            violations_before = len(fake.violations())
            requests_before = len(fake.requests())
            response = await client.post("/agent", json=body)
            assert response.status_code == 200, (number, response.text)
            done = response.json()
            conversation_id = done["conversation_id"]
            assert done["context"]["turns_sent"] + done["context"]["turns_omitted"] == len(stored) + 1
            if len(fake.violations()) > violations_before:
                refused = fake.violations()[violations_before:]
                assert len(refused) == 1 and refused[0]["message"].startswith("prompt is too long")
                calls = sent_messages(fake)[requests_before:]
                assert len(calls) == 2 and len(calls[1]) < len(calls[0])  # once more, with less
                assert done["context"]["turns_omitted"] > 0
                refused_reply = refused_reply or done["reply_id"]
            now = (await audit(client, conversation_id))
            assert now["turns"][:len(stored)] == stored
            stored = now["turns"]
        assert refused_reply is not None  # the upstream did refuse at least once
        assert len(stored) == 32 and all(turn["status"] == "complete" for turn in stored)
        ledger = [row for row in now["requests"] if row["reply_id"] == refused_reply]
        assert [(row["step"], row["status"], row["error_type"]) for row in ledger] == [
            (1, "error", "invalid_request_error"), (2, "ok", None)]


async def test_a_second_too_long_answer_fails_the_reply_and_the_next_one_still_answers(database_url, fake,
                                                                                       tmp_path) -> None:
    """Once more means once: a second refusal fails the reply (400), and the conversation stays usable."""
    fake.set_models({MODEL: {"context_window": 4096}})
    async with app_client(settings(database_url, fake, tmp_path, server_window=4096)) as client:
        client.headers.update(auth())
        response = await client.post("/agent", json={"message": f"question: {FILLER}"})
        conversation_id = response.json()["conversation_id"]
        response = await client.post("/agent", json={"message": f"again: {FILLER}", "conversation_id":
                                                     conversation_id})
        assert response.status_code == 200
        too_long = Behaviour(status=400, error_message="prompt is too long: 9999 tokens > 4096 maximum")
        fake.script(too_long, too_long)
        response = await client.post("/agent", json={"message": "third", "conversation_id": conversation_id})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        response = await client.post("/agent", json={"message": "fourth", "conversation_id": conversation_id})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("window", [1024, 2000])
async def test_a_single_exchange_larger_than_the_window_is_left_out_whole(database_url, fake, tmp_path,
                                                                          window: int) -> None:
    """A tool exchange that alone overflows what is left: it is left out whole, and the next reply's window
    starts after all of it (not inside it, which would send a tool_result without its tool_use)."""
    fake.set_models({MODEL: {"context_window": window}})
    async with app_client(settings(database_url, fake, tmp_path, server_window=window)) as client:
        client.headers.update(auth())
        # A result of three quarters of the window: the exchange fits once, not with anything after it.
        fake.script(Behaviour(tool_calls=[ToolCall(name="big_output", input={"size": 3 * window})]),
                    Behaviour(text="read it"))
        response = await client.post("/agent", json={"message": "read one big thing"})
        assert response.status_code == 200, response.text
        conversation_id = response.json()["conversation_id"]
        for number in range(3):
            response = await client.post("/agent", json={"message": f"next {number}", "conversation_id":
                                                         conversation_id})
            assert response.status_code == 200, response.text
            context = response.json()["context"]
            # The tool exchange (prompt, tool_use, tool_result, answer) is left out, the replies after it are sent.
            assert context == {"turns_omitted": 4, "turns_sent": 2 * number + 1}, context
        assert fake.violations() == []
