"""`agent-server chat` end to end: the terminal client as a subprocess against a served WebSocket.

Piped input (one message a line) where the terminal does not matter, and a real pseudo-terminal
(`chat_pty`) where it does: Ctrl-C and Ctrl-D go through the terminal's line discipline exactly as a
person's keystrokes would. One server serves the module; each test has its own client state folder.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from agent_server.chat import format_usd
from tests.conftest import ALICE, BOB, auth, plain_messages
from tests.e2e.chat_pty import WAIT, chat_command, client_environment, in_terminal
from tests.e2e.conftest import ServerProcess, free_port, server_env

pytestmark = pytest.mark.e2e

NEW_CONVERSATION = r"\(new conversation (conv_[A-Za-z0-9]+)\)"
USAGE_LINE = r"^\((\d+) in / (\d+) out tokens, \$(\d+\.\d+)\)$"


@pytest.fixture(scope="module")
def shared_server(fake_upstream, tmp_path_factory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("chat-server")
    server = ServerProcess(env=server_env(f"sqlite+aiosqlite:///{workdir / 'data' / 'agent.db'}", fake_upstream),
                           workdir=workdir).start()
    yield server
    server.stop()


@pytest.fixture
def server(shared_server, fake) -> ServerProcess:
    return shared_server


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """The client's environment: its state (the last conversation id) kept in this test's folder."""
    return client_environment(tmp_path)


def state_path(env: dict[str, str]) -> Path:
    return Path(env["XDG_STATE_HOME"]) / "agent-server" / "chat.json"


def run_chat(url: str, env: dict[str, str], stdin: str, *args: str, token: str | None = ALICE
             ) -> subprocess.CompletedProcess:
    """The client with piped input and output."""
    return subprocess.run(chat_command(url, *args, token=token), input=stdin, env=env, capture_output=True,
                          text=True, timeout=WAIT)


def get(server: ServerProcess, path: str, **params) -> dict:
    response = httpx.get(f"{server.base_url}{path}", params=params, headers=auth(), timeout=WAIT)
    assert response.status_code == 200, response.text
    return response.json()


def newest_conversation(server: ServerProcess) -> str:
    return get(server, "/conversations", limit=1)["conversations"][0]["id"]


def new_conversations(stderr: str) -> list[str]:
    return re.findall(NEW_CONVERSATION, stderr)


def test_piped_exchange_then_a_second_run_resumes(server, fake, client_env):
    first = run_chat(server.ws_url, client_env, "Hello\nHow are you\n")
    assert first.returncode == 0, first.stderr
    # stdout is the conversation: with piped input, what was sent is shown there too.
    assert first.stdout == "you> Hello\nclaude> Echo: Hello\nyou> How are you\nclaude> Echo: How are you\n"

    conversation_id = newest_conversation(server)
    assert new_conversations(first.stderr) == [conversation_id]  # said once, when the first reply started
    assert conversation_id in state_path(client_env).read_text()

    second = run_chat(server.ws_url, client_env, "And now?\n")
    assert second.returncode == 0, second.stderr
    assert f"(resuming {conversation_id}: 4 turns" in second.stderr
    # The history replayed, with exactly the labels of the live turns, then the new exchange.
    assert second.stdout == first.stdout + "you> And now?\nclaude> Echo: And now?\n"
    assert new_conversations(second.stderr) == []
    assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Echo: Hello"},
        {"role": "user", "content": "How are you"},
        {"role": "assistant", "content": "Echo: How are you"},
        {"role": "user", "content": "And now?"},
    ]
    assert newest_conversation(server) == conversation_id

    afresh = run_chat(server.ws_url, client_env, "Start over\n", "--new")
    assert afresh.returncode == 0, afresh.stderr
    assert "resuming" not in afresh.stderr
    (other,) = new_conversations(afresh.stderr)
    assert other != conversation_id
    assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [{"role": "user", "content": "Start over"}]


def test_each_reply_ends_with_a_usage_line_and_a_plain_decimal_cost(server, fake, client_env):
    result = run_chat(server.ws_url, client_env, "Hello\n")
    assert result.returncode == 0, result.stderr
    (line,) = re.findall(USAGE_LINE, result.stderr, re.MULTILINE)
    (call,) = get(server, f"/conversations/{newest_conversation(server)}")["requests"]
    assert "e-" in repr(call["cost_usd"])  # the case a float would print as 6.8e-05
    assert (int(line[0]), int(line[1]), Decimal(line[2])) == (
        call["input_tokens"], call["output_tokens"], Decimal(repr(call["cost_usd"])))


def test_a_server_that_wants_a_key_says_how_to_give_one(server, client_env):
    for token, says in ((None, "wants a client key"), ("not-a-key-of-this-server", "refused this client key")):
        result = run_chat(server.ws_url, client_env, "Hello\n", token=token)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert says in line and "--token" in line and "AGENT_TOKEN" in line


def test_an_unreachable_server_is_one_line_and_status_1(client_env):
    result = run_chat(f"ws://127.0.0.1:{free_port()}/agent/ws", client_env, "Hello\n")
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot reach the server at ws://127.0.0.1:" in line


def test_a_remembered_conversation_the_server_does_not_have_starts_a_new_one(server, fake, client_env):
    state = state_path(client_env)
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({server.ws_url: "conv_gone0123456789"}))

    result = run_chat(server.ws_url, client_env, "Hi there\n")
    assert result.returncode == 0, result.stderr
    assert ("conversation conv_gone0123456789 is not on this server (or not yours); starting a new one"
            in result.stderr)
    assert "Echo: Hi there" in result.stdout
    (started,) = new_conversations(result.stderr)
    assert json.loads(state.read_text()) == {server.ws_url: started}

    # Another key's conversation (bob's, remembered for this server URL) is not alice's: the same.
    bobs = run_chat(server.ws_url, client_env, "Bob's secret\n", token=BOB)
    (bob_conversation,) = new_conversations(bobs.stderr)
    alices = run_chat(server.ws_url, client_env, "Alice here\n")
    assert alices.returncode == 0, alices.stderr
    assert f"conversation {bob_conversation} is not on this server (or not yours)" in alices.stderr
    assert "Bob's secret" not in alices.stdout
    assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [{"role": "user", "content": "Alice here"}]


def test_commands_are_never_sent_to_the_model(server, fake, client_env):
    lines = ["/help", "/bogus thing", "/cost", "/open conv_nope0123", "//slash", "/quit", "not sent"]
    result = run_chat(server.ws_url, client_env, "".join(f"{line}\n" for line in lines))
    assert result.returncode == 0, result.stderr
    for command in ("/new", "/list", "/open ID", "/cost", "/help", "/quit"):
        assert command in result.stderr
    assert "unknown command /bogus; /help lists them" in result.stderr
    assert "conversation conv_nope0123 is not on this server (or not yours); staying in" in result.stderr
    bodies = json.dumps([request["body"] for request in fake.requests()])
    assert "bogus" not in bodies and "/help" not in bodies and "not sent" not in bodies
    assert [plain_messages(request["body"]["messages"]) for request in fake.requests()] == [
        [{"role": "user", "content": "/slash"}]]


def test_new_list_and_cost(server, fake, client_env):
    long_one = "A second, rather different topic to talk about at length, so long that its title is cut short somewhere"
    result = run_chat(server.ws_url, client_env, f"First question for the list\n/cost\n/new\n{long_one}\n/list\n")
    assert result.returncode == 0, result.stderr
    first, second = new_conversations(result.stderr)  # /new: a new id once the next reply started
    assert first != second

    totals = get(server, f"/conversations/{first}")["totals"]
    cost = format(Decimal(repr(totals["cost_usd"])), "f")
    assert (f"{first}: 1 request, {totals['input_tokens']} in / {totals['output_tokens']} out tokens, ${cost}"
            in result.stderr)

    rows = [line for line in result.stderr.splitlines() if re.match(r"[* ] conv_", line)]  # /list, newest first
    assert 2 <= len(rows) <= 10
    # The title: by default the first message's first 80 characters.
    assert rows[0].startswith(f"* {second}") and rows[0].endswith(f"  {long_one[:80]}")
    assert rows[1].startswith(f"  {first}") and rows[1].endswith("First question for the list")
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d +\$\d+\.\d+ ", rows[1])


def test_ctrl_c_at_the_idle_prompt_quits(server, client_env):
    with in_terminal(chat_command(server.ws_url), client_env) as terminal:
        terminal.expect("you> ")
        terminal.type("\x03")  # Ctrl-C
        assert terminal.read_to_end() == 0, terminal.output
    assert "Traceback" not in terminal.output


def test_ctrl_c_cancels_the_reply_and_open_replays_the_conversation(server, fake, client_env):
    fake.script({"n_tokens": 200, "token_delay": 0.05})
    with in_terminal(chat_command(server.ws_url), client_env) as terminal:
        terminal.expect("you> ")
        terminal.type("Talk slowly\n")
        conversation = terminal.expect_match(NEW_CONVERSATION)[1]
        terminal.expect("tok2 ")  # mid-reply
        terminal.type("\x03")  # Ctrl-C
        terminal.expect("(cancelled)")
        fake.wait_for(outcome="disconnected", timeout=WAIT)  # the upstream call was stopped

        # Typed at once (maybe before the prompt is back: the line then waits in the terminal until read).
        terminal.type("Once more\n")  # still running: the next message gets its reply
        terminal.expect("claude> Echo: Once more\n")
        terminal.expect_match(USAGE_LINE, re.MULTILINE)

        fake.script({"tokens": ["Half ", "an ", "answer"], "error_after_tokens": 2, "error_type": "api_error"})
        terminal.type("Break it\n")
        terminal.expect("error (")  # an error frame: said, and back to the prompt
        terminal.expect("you> ")

        terminal.type("/new\n")
        terminal.expect("(new conversation: its id comes with the first reply)")
        terminal.type(f"/open {conversation}\n")
        terminal.expect(f"(opened {conversation}: 6 turns)")
        terminal.expect("you> Talk slowly\n")  # the same labels as the live turns, and the marks
        terminal.expect_match(r"claude> tok0 tok1 tok2 (tok\d+ )*\(cancelled\)\n")
        terminal.expect("you> Once more\nclaude> Echo: Once more\nyou> Break it\nclaude> Half an (failed)\n")

        terminal.type("Still there?\n")  # in the opened conversation again
        terminal.expect("claude> Echo: Still there?")
        terminal.type("\x04")  # Ctrl-D on an empty line: end of input
        assert terminal.read_to_end() == 0, terminal.output
    assert "tok199" not in terminal.output
    assert "Traceback" not in terminal.output
    requests = fake.requests()
    assert plain_messages(requests[1]["body"]["messages"]) == [{"role": "user", "content": "Once more"}]
    assert plain_messages(requests[-1]["body"]["messages"])[-1] == {"role": "user", "content": "Still there?"}
    assert {"role": "assistant", "content": "Echo: Once more"} in plain_messages(requests[-1]["body"]["messages"])


@pytest.mark.parametrize(("value", "shown"), [
    (6.8e-05, "$0.000068"), (0.000123456789, "$0.000123457"), (1.5, "$1.50"), (0, "$0.00"), (12, "$12.00"),
    (None, "cost unknown"),
])
def test_costs_print_as_plain_decimals(value, shown):
    assert format_usd(value) == shown
