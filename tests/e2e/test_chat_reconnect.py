"""`agent-server chat` when the connection drops: the client reconnects by itself and carries on the reply.

Two ways to drop it: kill the server (SIGKILL, mid-reply) and start a new one on the same port and database; or
run the client through a small TCP proxy that the test cuts while the server, unaware, goes on with the reply. The
text the client showed is compared with the stored turn: no gap, no duplicate.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import auth
from tests.e2e.chat_pty import WAIT, chat_command, client_environment, in_terminal
from tests.e2e.conftest import ServerProcess, server_env

pytestmark = pytest.mark.e2e

NEW_CONVERSATION = r"\(new conversation (conv_[A-Za-z0-9]+)\)"
USAGE_LINE = r"^\((\d+) in / (\d+) out tokens, \$(\d+\.\d+)\)$"
LOST = "connection to the server lost (the connection dropped); reconnecting (Ctrl-C quits)\n"


class Proxy:
    """A TCP proxy to a local port. ``cut()`` drops every connection at once (no close frame: to either side it
    looks like a network failure); while ``held``, new connections are accepted and closed at once."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.ws_url = f"ws://127.0.0.1:{self.port}/agent/ws"
        self.held = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.held.is_set():
                downstream.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for end in sockets:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture(scope="module")
def shared_server(fake_upstream, tmp_path_factory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("chat-reconnect-server")
    server = ServerProcess(env=server_env(f"sqlite+aiosqlite:///{workdir / 'data' / 'agent.db'}", fake_upstream),
                           workdir=workdir).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(shared_server, fake) -> Iterator[Proxy]:
    proxy = Proxy(shared_server.port)
    yield proxy
    proxy.close()


def audit(server: ServerProcess, conversation_id: str) -> dict:
    response = httpx.get(f"{server.base_url}/conversations/{conversation_id}", headers=auth(), timeout=WAIT)
    assert response.status_code == 200, response.text
    return response.json()


def stored_reply(server: ServerProcess, conversation_id: str) -> dict:
    """The assistant turn of the conversation's one reply."""
    (turn,) = [t for t in audit(server, conversation_id)["turns"] if t["role"] == "assistant"]
    return turn


def wait_until_finished(server: ServerProcess, conversation_id: str) -> None:
    """Until the conversation's last reply is stored as finished (bounded)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        replies = audit(server, conversation_id)["replies"]
        if replies and all(reply["status"] != "running" for reply in replies):
            return
        time.sleep(0.05)
    raise AssertionError(f"the reply of {conversation_id} did not finish within {WAIT} s")


def reply_shown(output: str) -> str:
    """The reply's text as the terminal showed it: its first part, then what carried on (``claude> …``)."""
    parts = re.findall(r"^claude> (…?)(.*)$", output, re.MULTILINE)
    assert [mark for mark, _ in parts][1:] == ["…"] * (len(parts) - 1), output
    return "".join(text for _, text in parts)


def tokens(n: int) -> str:
    return "".join(f"tok{i} " for i in range(n))


def test_a_cut_connection_is_reconnected_and_the_running_reply_carries_on(shared_server, proxy, fake, tmp_path):
    fake.script({"n_tokens": 60, "token_delay": 0.05})
    with in_terminal(chat_command(proxy.ws_url), client_environment(tmp_path)) as terminal:
        terminal.expect("you> ")
        terminal.type("Talk slowly\n")
        conversation = terminal.expect_match(NEW_CONVERSATION)[1]
        terminal.expect("tok5 ")
        proxy.cut()  # the server sees its client go; the reply goes on
        terminal.expect(LOST)
        terminal.expect("(reconnected: the reply carries on)\n")
        terminal.expect("claude> …")
        terminal.expect_match(USAGE_LINE, re.MULTILINE)
        shown = terminal.output
        terminal.expect("you> ")
        terminal.type("And now?\n")  # the new session works as the old one did
        terminal.expect("claude> Echo: And now?\n")
        terminal.type("\x04")
        assert terminal.read_to_end() == 0, terminal.output
    assert "Traceback" not in terminal.output
    assert terminal.output.count(LOST) == 1
    turns = audit(shared_server, conversation)["turns"]
    assert turns[1]["status"] == "complete" and turns[1]["content"] == tokens(60)
    assert reply_shown(shown) == tokens(60)


def test_ctrl_c_stops_reconnecting(shared_server, proxy, fake, tmp_path):
    fake.script({"n_tokens": 60, "token_delay": 0.05})
    with in_terminal(chat_command(proxy.ws_url), client_environment(tmp_path)) as terminal:
        terminal.expect("you> ")
        terminal.type("Talk slowly\n")
        conversation = terminal.expect_match(NEW_CONVERSATION)[1]
        terminal.expect("tok2 ")
        proxy.held.set()  # no reconnection will get through
        proxy.cut()
        terminal.expect(f"\n{LOST}")  # one line, and the client keeps trying...
        terminal.type("\x03")  # ...until Ctrl-C
        terminal.expect(f"(stopped reconnecting; run agent-server chat again to resume {conversation})\n")
        assert terminal.read_to_end() == 1, terminal.output
    assert "Traceback" not in terminal.output


def test_a_reply_that_finished_while_disconnected_is_shown_to_its_end(shared_server, proxy, fake, tmp_path):
    fake.script({"n_tokens": 30, "token_delay": 0.03})
    with in_terminal(chat_command(proxy.ws_url), client_environment(tmp_path)) as terminal:
        terminal.expect("you> ")
        terminal.type("Talk slowly\n")
        conversation = terminal.expect_match(NEW_CONVERSATION)[1]
        terminal.expect("tok3 ")
        proxy.held.set()  # no reconnection gets through...
        proxy.cut()
        terminal.expect(LOST)
        wait_until_finished(shared_server, conversation)  # ...until the reply has finished without the client
        proxy.held.clear()
        terminal.expect("(reconnected)\n")
        usage = terminal.expect_match(USAGE_LINE, re.MULTILINE)
        shown = terminal.output
        terminal.expect("you> ")
        terminal.type("\x04")
        assert terminal.read_to_end() == 0, terminal.output
    assert "Traceback" not in terminal.output
    turn = stored_reply(shared_server, conversation)
    assert turn["status"] == "complete" and turn["content"] == tokens(30)
    assert reply_shown(shown) == tokens(30)
    (call,) = audit(shared_server, conversation)["requests"]
    assert (int(usage[1]), int(usage[2])) == (call["input_tokens"], call["output_tokens"])


def test_a_reply_still_running_when_the_chat_starts_is_shown_to_its_end(shared_server, fake, tmp_path):
    fake.script({"n_tokens": 60, "token_delay": 0.05})
    env = client_environment(tmp_path)
    with in_terminal(chat_command(shared_server.ws_url), env) as terminal:
        terminal.expect("you> ")
        terminal.type("Talk slowly\n")
        conversation = terminal.expect_match(NEW_CONVERSATION)[1]
        terminal.expect("tok5 ")
        terminal.proc.kill()  # the client goes; the reply goes on
    with in_terminal(chat_command(shared_server.ws_url), env) as terminal:  # resumes the remembered conversation
        terminal.expect(f"(resuming {conversation}: 1 turn;")
        terminal.expect("you> Talk slowly\n")
        terminal.expect_match(USAGE_LINE, re.MULTILINE)
        shown = terminal.output
        terminal.expect("you> ")
        terminal.type("\x04")
        assert terminal.read_to_end() == 0, terminal.output
    assert "Traceback" not in terminal.output
    assert stored_reply(shared_server, conversation)["content"] == tokens(60)
    assert reply_shown(shown) == tokens(60)  # from its first token: the resumed session replays it all


def test_a_server_killed_mid_reply_and_started_again_is_reconnected_to(start_server, e2e_database_url, fake,
                                                                      tmp_path):
    env = server_env(e2e_database_url, fake)
    first = start_server(env)
    fake.script({"n_tokens": 60, "token_delay": 0.05})
    with in_terminal(chat_command(first.ws_url), client_environment(tmp_path)) as terminal:
        terminal.expect("you> ")
        terminal.type("Talk slowly\n")
        conversation = terminal.expect_match(NEW_CONVERSATION)[1]
        terminal.expect("tok5 ")
        first.kill()  # kill -9: no close frame, the reply's process gone
        terminal.expect(LOST)
        second = start_server(env, port=first.port)  # same port, same database
        terminal.expect("(reconnected)\n")
        terminal.expect("error (interrupted): ")  # how the reply ended: the new server closed it
        shown = reply_shown(terminal.output)
        terminal.expect("you> ")
        terminal.type("Still there?\n")
        terminal.expect("claude> Echo: Still there?\n")
        terminal.type("\x04")
        assert terminal.read_to_end() == 0, terminal.output
    assert "Traceback" not in terminal.output
    turns = audit(second, conversation)["turns"]
    assert [(t["role"], t["status"]) for t in turns[:2]] == [("user", "complete"), ("assistant", "incomplete")]
    assert shown.startswith(turns[1]["content"]) and tokens(60).startswith(shown)  # what was stored, was shown


def test_a_server_stopped_gently_finishes_the_reply_and_the_client_reconnects_to_the_next(
        start_server, e2e_database_url, fake, tmp_path):
    env = server_env(e2e_database_url, fake)  # a grace period of 3 s: the reply fits in it
    first = start_server(env)
    fake.script({"n_tokens": 30, "token_delay": 0.05})
    with in_terminal(chat_command(first.ws_url), client_environment(tmp_path)) as terminal:
        terminal.expect("you> ")
        terminal.type("Talk slowly\n")
        conversation = terminal.expect_match(NEW_CONVERSATION)[1]
        terminal.expect("tok5 ")
        first.signal(signal.SIGTERM)  # the server drains: the reply ends, then the socket closes
        terminal.expect_match(USAGE_LINE, re.MULTILINE)
        shown = terminal.output
        terminal.expect("connection to the server lost (the server is restarting); reconnecting (Ctrl-C quits)\n")
        assert first.wait(timeout=WAIT) == 0
        start_server(env, port=first.port)
        terminal.expect("(reconnected)\n")
        terminal.expect("you> ")
        terminal.type("Still there?\n")
        terminal.expect("claude> Echo: Still there?\n")
        terminal.type("\x04")
        assert terminal.read_to_end() == 0, terminal.output
    assert "Traceback" not in terminal.output
    assert reply_shown(shown) == tokens(30)
    assert audit(first, conversation)["turns"][1]["content"] == tokens(30)
