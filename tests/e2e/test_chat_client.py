"""`agent-server chat` end to end: the terminal client as a subprocess against a served WebSocket.

Piped input (one message a line) and a real pseudo-terminal, where Ctrl-C and Ctrl-D go through the
terminal's line discipline exactly as a person's keystrokes would.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALICE, auth
from tests.e2e.conftest import ServerProcess, server_env

pytestmark = pytest.mark.e2e

WAIT = 20  # seconds: an upper bound on any single wait (the client is a fresh Python process)


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "ANTHROPIC_", "XDG_"))}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), PYTHONUNBUFFERED="1")
    return env


def chat_command(server: ServerProcess) -> list[str]:
    return [sys.executable, "-m", "agent_server", "chat", "--url", server.ws_url, "--token", ALICE]


def run_chat(server: ServerProcess, env: dict[str, str], stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(chat_command(server), input=stdin, env=env, capture_output=True, text=True,
                          timeout=WAIT)


def newest_conversation(server: ServerProcess) -> str:
    response = httpx.get(f"{server.base_url}/conversations", params={"limit": 1}, headers=auth(), timeout=WAIT)
    assert response.status_code == 200, response.text
    return response.json()["conversations"][0]["id"]


def test_piped_exchange_then_a_second_run_resumes(server, fake, client_env, tmp_path):
    first = run_chat(server, client_env, "Hello\nHow are you\n")
    assert first.returncode == 0, first.stderr
    assert "Echo: Hello" in first.stdout
    assert "Echo: How are you" in first.stdout
    assert first.stdout.index("Echo: Hello") < first.stdout.index("Echo: How are you")

    conversation_id = newest_conversation(server)
    saved = "".join(p.read_text() for p in (tmp_path / "state").rglob("*") if p.is_file())
    assert conversation_id in saved

    second = run_chat(server, client_env, "And now?\n")
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr and conversation_id in second.stderr
    assert "Echo: And now?" in second.stdout
    assert fake.requests()[-1]["body"]["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Echo: Hello"},
        {"role": "user", "content": "How are you"},
        {"role": "assistant", "content": "Echo: How are you"},
        {"role": "user", "content": "And now?"},
    ]
    assert newest_conversation(server) == conversation_id


# Makes the pseudo-terminal on fd 0 the controlling terminal of the (new) session, then runs the client:
# Ctrl-C typed on the master then reaches it as SIGINT from the line discipline, as in a real terminal.
WITH_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                 "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


class Terminal:
    """The master side of a pseudo-terminal: type into it and wait for text to appear on it."""

    def __init__(self, master: int):
        self.master = master
        self.output = ""
        self._seen = 0

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, text: str, timeout: float = WAIT) -> None:
        """Read until ``text`` appears after what earlier calls consumed."""
        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, self._seen)) < 0:
            if not self._read(deadline - time.monotonic(), waiting_for=text):
                raise AssertionError(f"the program exited before {text!r} appeared:\n{self.output}")
        self._seen = found + len(text)

    def read_to_end(self, timeout: float = WAIT) -> None:
        """Read until the program has exited and closed the terminal."""
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass

    def _read(self, timeout: float, waiting_for: str = "the program to exit") -> bool:
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if not ready:
            raise AssertionError(f"timed out waiting for {waiting_for!r}; the terminal shows:\n{self.output}")
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every slave descriptor is closed, the program has exited
            return False
        self.output += data.decode(errors="replace")
        return bool(data)


def test_ctrl_c_in_a_terminal_cancels_the_reply_and_ctrl_d_quits(server, fake, client_env):
    slow = [f"w{i} " for i in range(30)]
    fake.script({"tokens": slow, "token_delay": 0.1})
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", WITH_TERMINAL, *chat_command(server)[1:]], env=client_env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    terminal = Terminal(master)
    try:
        # Typed lines wait in the terminal until the program reads them, as when a person types ahead.
        terminal.type("Talk slowly\n")
        terminal.expect(slow[1])  # mid-reply
        terminal.type("\x03")  # Ctrl-C
        terminal.expect("(cancelled)")
        fake.wait_for(outcome="disconnected", timeout=WAIT)  # the upstream call was stopped

        terminal.type("Once more\n")  # still running: the next message gets its reply
        terminal.expect("Echo: Once more")
        terminal.type("\x04")  # Ctrl-D on an empty line: end of input
        terminal.read_to_end()
        assert proc.wait(timeout=WAIT) == 0, terminal.output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert slow[-1] not in terminal.output
    assert fake.requests()[-1]["body"]["messages"] == [{"role": "user", "content": "Once more"}]
