"""Driving the web page in Chromium (Playwright's sync API): a browser per module, pages that record what they did.

Every page opened through ``Pages`` records its requests, WebSockets, console messages, CSP violations and
JavaScript dialogs; ``Pages.check()`` (run when the test ends) asserts that every request went to the server's own
origin, that nothing was logged as an error (but what the test allowed), that no CSP violation and no dialog
happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TIMEOUT_MS = 10_000
KEY_STORAGE = "agent.key"
CONVERSATION_STORAGE = "agent.conversation"

# Runs before the page's own scripts (Playwright injects it outside the page's CSP): collects CSP violations.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


def missing_browser() -> str | None:
    """Why the web page tests cannot run here (no Chromium, no Playwright), or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium); the web page tests drive it"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    return None


def require_browser():
    """Playwright's sync API; without a browser: a skip on a developer's machine, a failure in CI (which must run
    these tests)."""
    reason = missing_browser()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    import playwright.sync_api

    return playwright.sync_api


@dataclass
class Recorded:
    base_url: str
    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    allowed_errors: list[re.Pattern] = field(default_factory=list)


class Pages:
    """Factory of pages in their own browser contexts (own sessionStorage, as two people on two machines)."""

    def __init__(self, browser):
        self.browser = browser
        self.contexts: list = []
        self.records: list[tuple[object, Recorded]] = []

    def open(self, base_url: str, *, viewport: dict | None = None, timezone_id: str | None = None,
             allow_errors: tuple[str, ...] = (), **context_options):
        context = self.browser.new_context(viewport=viewport or {"width": 1280, "height": 800}, locale="en-US",
                                           timezone_id=timezone_id, service_workers="block", **context_options)
        self.contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(RECORD_VIOLATIONS)
        page = context.new_page()
        record = Recorded(base_url, allowed_errors=[re.compile(p) for p in allow_errors])
        page.on("request", lambda request: record.requests.append(request.url))
        page.on("websocket", lambda ws: record.websockets.append(ws.url))
        page.on("console", lambda message: record.console.append((message.type, message.text)))
        page.on("pageerror", lambda error: record.page_errors.append(str(error)))

        def on_dialog(dialog) -> None:
            record.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        self.records.append((page, record))
        return page

    def record_of(self, page) -> Recorded:
        return next(record for p, record in self.records if p is page)

    def check(self) -> None:
        problems: list[str] = []
        for page, record in self.records:
            origin = urlsplit(record.base_url)
            for url in record.requests:
                parts = urlsplit(url)
                if (parts.scheme, parts.netloc) != (origin.scheme, origin.netloc) and parts.scheme != "data":
                    problems.append(f"a request left the server's origin: {url}")
            for url in record.websockets:
                parts = urlsplit(url)
                if (parts.scheme, parts.netloc, parts.path) != ("ws", origin.netloc, "/agent/ws"):
                    problems.append(f"a WebSocket went elsewhere: {url}")
            for kind, text in record.console:
                if "Content Security Policy" in text or "Content-Security-Policy" in text:
                    problems.append(f"CSP console message: {text}")
                elif kind == "error" and not any(p.search(text) for p in record.allowed_errors):
                    problems.append(f"console error: {text}")
            problems += [f"page error: {error}" for error in record.page_errors]
            problems += [f"a JavaScript dialog opened: {dialog}" for dialog in record.dialogs]
            if not page.is_closed():
                violations = page.evaluate("window.__cspViolations || []")
                problems += [f"CSP violation: {v}" for v in violations]
        assert not problems, "\n".join(problems)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), animations="disabled")
    return path


def sign_in(page, base_url: str, key: str) -> None:
    """Open the page, enter the key, wait for the chat (a session is open: Send is enabled)."""
    page.goto(base_url + "/")
    page.fill("#key-input", key)
    page.press("#key-input", "Enter")
    wait_connected(page)


def wait_connected(page) -> None:
    page.wait_for_selector("#app:not([hidden])")
    # Attached, not visible: while a reply runs, Stop takes Send's place.
    page.wait_for_selector("#send-btn:not([disabled])", state="attached")


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def last_reply(page):
    return page.locator(".reply").last


def wait_reply_ended(page, count: int = 1, state: str = "reply-done") -> None:
    """Until ``count`` replies carry ``state`` (reply-done, reply-cancelled, reply-failed) and nothing runs."""
    page.wait_for_function(
        "([n, cls]) => document.querySelectorAll('.reply.' + cls).length >= n"
        " && document.getElementById('stop-btn').hidden", arg=[count, state])


def stored(page, name: str):
    return page.evaluate("(name) => sessionStorage.getItem(name)", name)


class TcpProxy:
    """127.0.0.1:<port> forwarded to the server: ``cut()`` makes the server unreachable (connections reset, new ones
    refused), ``restore()`` listens again on the same port. Cheaper than stopping and starting a server."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:  # shutdown wakes the pumps blocked in recv(); close alone would not
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.start()
