"""`agent-server chat` with tools, end to end: a served WebSocket with a tools file, the fake upstream asking for
tools, the client as a subprocess (piped, or in a pseudo-terminal where a person would type the answer).

What the model asked for shows as `→` lines, results as `←` lines; approvals are asked on the terminal (or read
from the next piped line); client tools the chat knows are answered by themselves, others refused with an error
the model gets. What the upstream received next is checked at the fake.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.chat_pty import WAIT, chat_command, client_environment, in_terminal
from tests.e2e.conftest import ServerProcess, server_env

pytestmark = pytest.mark.e2e

TOOLS = """
[tools.calculator]
python = "agent_server.tools.examples:calculator"
timeout_seconds = 5

[tools.save_note]
python = "agent_server.tools.examples:save_note"
requires_approval = true

[client_tools.get_timezone]
description = "The user's local IANA time zone, from their device."
input_schema = { type = "object", properties = {} }

[client_tools.read_clipboard]
description = "The text on the user's clipboard (no chat client knows how)."
input_schema = { type = "object", properties = {} }
"""
NOTE = {"name": "save_note", "input": {"text": "buy milk"}}
QUESTION = 'approve save_note({"text": "buy milk"})? [y/N] '


@pytest.fixture(scope="module")
def tools_server(fake_upstream, tmp_path_factory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("chat-tools-server")
    (workdir / "tools.toml").write_text(TOOLS)
    env = server_env(f"sqlite+aiosqlite:///{workdir / 'data' / 'agent.db'}", fake_upstream,
                     AGENT_TOOLS_FILE=str(workdir / "tools.toml"))
    server = ServerProcess(env=env, workdir=workdir).start()
    yield server
    server.stop()


@pytest.fixture
def server(tools_server, fake) -> ServerProcess:
    return tools_server


def chat(server: ServerProcess, folder: Path, stdin: str, **env: str) -> subprocess.CompletedProcess:
    """The client with piped input and output; its state in ``folder``."""
    result = subprocess.run(chat_command(server.ws_url), input=stdin, env=client_environment(folder, **env),
                            capture_output=True, text=True, timeout=WAIT)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def last_tool_results(fake) -> list[dict]:
    """The tool_result blocks of the last message the upstream was sent."""
    content = fake.requests()[-1]["body"]["messages"][-1]["content"]
    return [block for block in content if isinstance(block, dict) and block.get("type") == "tool_result"]


def result_text(block: dict) -> str:
    content = block.get("content")
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content or [])


def test_tool_calls_their_results_and_thinking_are_shown_live_and_replayed(server, fake, tmp_path):
    fake.script({"thinking": "Six sevens, and a power too big", "tool_calls": [
        {"name": "calculator", "input": {"expression": "6*7"}},
        {"name": "calculator", "input": {"expression": "2**1000"}},
    ]})
    result = chat(server, tmp_path, "What is 6*7?\n")
    assert result.returncode == 0, result.stderr
    shown = ('you> What is 6*7?\n'
             '  (thinking) Six sevens, and a power too big\n'
             '  → calculator({"expression": "6*7"})\n'
             '  → calculator({"expression": "2**1000"})\n'
             '  ← 42\n'
             '  ← error: ')
    assert result.stdout.startswith(shown), result.stdout
    assert "exponents above 100 are not allowed" in result.stdout
    assert result.stdout.endswith("claude> Done. Results: 42; error: ValueError: exponents above 100 are not allowed\n")

    # The next run replays the stored turns the same way (tool turns from their blocks).
    again = chat(server, tmp_path, "")
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout


def test_a_long_tool_input_is_cut_to_one_line(server, fake, tmp_path):
    expression = " + ".join(["1"] * 50)
    fake.script({"tool_calls": [{"name": "calculator", "input": {"expression": expression}}]})
    result = chat(server, tmp_path, "Add them up\n")
    assert result.returncode == 0, result.stderr
    (call,) = [line for line in result.stdout.splitlines() if line.startswith("  → ")]
    assert call.startswith('  → calculator({"expression": "1 + 1 + ') and call.endswith("…")
    assert len(call) <= 4 + 120
    assert "  ← 50\n" in result.stdout


def test_approving_runs_the_tool_and_the_reply_goes_on(server, fake, tmp_path):
    fake.script({"tool_calls": [NOTE]})
    with in_terminal(chat_command(server.ws_url), client_environment(tmp_path)) as terminal:
        terminal.expect("you> ")
        terminal.type("Save a note: buy milk\n")
        terminal.expect('  → save_note({"text": "buy milk"})\n')
        terminal.expect(QUESTION)
        terminal.type("y\n")
        terminal.expect_match(r"  ← saved note \d+\n")
        terminal.expect("claude> Done. Results: saved note")
        terminal.expect("you> ")
        terminal.type("\x04")
        assert terminal.read_to_end() == 0, terminal.output
    assert "Traceback" not in terminal.output
    (block,) = last_tool_results(fake)
    assert not block.get("is_error") and result_text(block).startswith("saved note ")


def test_denying_with_a_reason_tells_the_model(server, fake, tmp_path):
    fake.script({"tool_calls": [NOTE]})
    result = chat(server, tmp_path, "Save a note: buy milk\nno\nnot today, thanks\n")  # piped: the next lines answer
    assert result.returncode == 0, result.stderr
    assert f"{QUESTION}no\nreason (optional): not today, thanks\n" in result.stderr
    assert "  ← error: The user denied this tool call: not today, thanks\n" in result.stdout
    (block,) = last_tool_results(fake)
    assert block["is_error"] is True and "not today, thanks" in result_text(block)


def test_a_pending_approval_is_asked_again_when_the_conversation_is_resumed(server, fake, tmp_path):
    fake.script({"tool_calls": [NOTE]})
    first = chat(server, tmp_path, "Save a note: buy milk\n")  # the input ends at the question
    assert first.returncode == 0, first.stderr
    assert QUESTION in first.stderr and "(left unanswered" in first.stderr
    requests = len(fake.requests())

    second = chat(server, tmp_path, "yes\n")
    assert second.returncode == 0, second.stderr
    assert f"{QUESTION}yes\n" in second.stderr
    assert second.stdout.startswith('you> Save a note: buy milk\n  → save_note({"text": "buy milk"})\n')
    assert "claude> Done. Results: saved note" in second.stdout
    assert len(fake.requests()) == requests + 1
    (block,) = last_tool_results(fake)
    assert not block.get("is_error") and result_text(block).startswith("saved note ")


def test_get_timezone_is_answered_by_the_client(server, fake, tmp_path):
    fake.script({"tool_calls": [{"name": "get_timezone", "input": {}}]})
    result = chat(server, tmp_path, "Which time zone am I in?\n", TZ="Pacific/Chatham")
    assert result.returncode == 0, result.stderr
    assert "  (answered get_timezone: Pacific/Chatham)\n" in result.stderr
    assert "  → get_timezone({})\n" in result.stdout and "  ← Pacific/Chatham\n" in result.stdout
    assert "claude> Done. Results: Pacific/Chatham\n" in result.stdout
    (block,) = last_tool_results(fake)
    assert not block.get("is_error") and result_text(block) == "Pacific/Chatham"


def test_a_client_tool_the_chat_does_not_know_is_refused_with_an_error(server, fake, tmp_path):
    fake.script({"tool_calls": [{"name": "read_clipboard", "input": {}}]})
    result = chat(server, tmp_path, "What is on my clipboard?\n")
    assert result.returncode == 0, result.stderr
    assert "the chat client cannot run read_clipboard; telling the model\n" in result.stderr
    assert "  ← error: The chat client cannot run the tool 'read_clipboard'" in result.stdout
    (block,) = last_tool_results(fake)
    assert block["is_error"] is True and "cannot run" in result_text(block)
