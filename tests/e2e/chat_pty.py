"""A program run in a real pseudo-terminal, for the chat client's end-to-end tests.

The pty's slave side is the program's stdin, stdout and stderr and its controlling terminal, so what the
test types on the master goes through the terminal's line discipline exactly as a person's keystrokes
would: Ctrl-C (``\\x03``) becomes SIGINT, Ctrl-D (``\\x04``) on an empty line the end of input, and typed
lines wait in the terminal until the program reads them. Every wait is for text on the terminal, bounded.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ALICE

WAIT = 20  # seconds: an upper bound on any single wait (the client is a fresh Python process)

# Makes the pseudo-terminal on fd 0 the controlling terminal of the (new) session, then runs the program:
# Ctrl-C typed on the master then reaches it as SIGINT from the line discipline, as in a real terminal.
WITH_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                 "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


class Terminal:
    """The master side of a pseudo-terminal: type into it and wait for text to appear on it."""

    def __init__(self, master: int, proc: subprocess.Popen):
        self.master = master
        self.proc = proc
        self.output = ""  # everything shown so far, with the terminal's "\r\n" as "\n"
        self._raw = b""
        self._seen = 0

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, text: str, timeout: float = WAIT) -> None:
        """Read until ``text`` appears after what earlier waits consumed."""
        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, self._seen)) < 0:
            self._read_or_fail(deadline, text)
        self._seen = found + len(text)

    def expect_match(self, pattern: str, flags: int = 0, timeout: float = WAIT) -> re.Match:
        """Read until the regular expression matches after what earlier waits consumed; the match."""
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern, flags)
        while (match := compiled.search(self.output, self._seen)) is None:
            self._read_or_fail(deadline, pattern)
        self._seen = match.end()
        return match

    def read_to_end(self, timeout: float = WAIT) -> int:
        """Read until the program has exited and closed the terminal; its exit status."""
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 1))

    def _read_or_fail(self, deadline: float, waiting_for: str) -> None:
        if not self._read(deadline - time.monotonic(), waiting_for=waiting_for):
            raise AssertionError(f"the program exited before {waiting_for!r} appeared:\n{self.output}")

    def _read(self, timeout: float, waiting_for: str = "the program to exit") -> bool:
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if not ready:
            raise AssertionError(f"timed out waiting for {waiting_for!r}; the terminal shows:\n{self.output}")
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every slave descriptor is closed, the program has exited
            return False
        self._raw += data
        self.output = self._raw.decode(errors="replace").replace("\r\n", "\n")
        return bool(data)


@contextmanager
def in_terminal(command: list[str], env: dict[str, str]) -> Iterator[Terminal]:
    """Run ``command`` (``[python, args...]``) with a new pseudo-terminal as its controlling terminal."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", WITH_TERMINAL, *command[1:]], env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        yield Terminal(master, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def chat_command(url: str, *args: str, token: str | None = ALICE) -> list[str]:
    """``agent-server chat`` on ``url``, with alice's key unless told otherwise."""
    return [sys.executable, "-m", "agent_server", "chat", "--url", url, *(["--token", token] if token else []),
            *args]


def client_environment(folder: Path, **extra: str) -> dict[str, str]:
    """The client's environment: none of the developer's settings, its state (the last conversation id) kept in
    ``folder``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "ANTHROPIC_", "XDG_"))}
    env.update(XDG_STATE_HOME=str(folder / "state"), PYTHONUNBUFFERED="1", **extra)
    return env
