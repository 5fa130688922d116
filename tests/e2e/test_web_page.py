"""The web page end to end: Chromium (Playwright) against `agent-server serve` in a subprocess, the fake upstream
scripted per test, the repository's tools.example.toml.

One server for the module (tests make their own conversations); the browser is Debian's Chromium, never a
downloaded one. Each test's pages must only talk to the server's own origin, log no errors, break no CSP rule and
open no JavaScript dialog (``Pages.check``). Screenshots of the main states go to docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALICE, BOB
from tests.e2e.conftest import ServerProcess, server_env
from tests.e2e.web_helpers import (
    CHROMIUM, CHROMIUM_ARGS, CONVERSATION_STORAGE, KEY_STORAGE, Pages, TcpProxy, last_reply, missing_browser,
    require_browser, screenshot, send, sign_in, stored, wait_connected, wait_reply_ended,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

if missing_browser() and os.environ.get("CI") != "true":  # in CI the `browser` fixture fails instead
    pytest.skip(missing_browser(), allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
TOOLS_FILE = ROOT / "tools.example.toml"
CAROL = "carol-secret-0123456789-budget"  # a key whose budget is spent from the start
WEB_FILES = ("app.js", "api.js", "dom.js", "format.js", "transcript.js", "audit.js", "style.css", "icon.svg")


def api(server: ServerProcess, key: str = ALICE) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture(scope="module")
def web_server(fake_upstream, tmp_path_factory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("web-server")
    env = server_env(
        f"sqlite+aiosqlite:///{workdir / 'data' / 'agent.db'}", fake_upstream,
        AGENT_API_KEYS=f"alice:{ALICE},bob:{BOB},carol:{CAROL}",
        AGENT_BUDGETS="carol:0/day",
        AGENT_TOOLS_FILE=str(TOOLS_FILE),
        AGENT_UPSTREAM_MAX_RETRIES="0",
    )
    server = ServerProcess(env=env, workdir=workdir).start()
    yield server
    server.stop()


@pytest.fixture
def server(web_server, fake) -> ServerProcess:
    """The module's server, with the fake upstream reset for this test."""
    return web_server


@pytest.fixture(scope="module")
def browser():
    sync_api = require_browser()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def pages(browser) -> Iterator[Pages]:
    opened = Pages(browser)
    try:
        yield opened
        opened.check()
    finally:
        opened.close()


def audit_of(server: ServerProcess, conversation_id: str, key: str = ALICE) -> dict:
    with api(server, key) as client:
        response = client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()


def conversation_id(page) -> str:
    value = stored(page, CONVERSATION_STORAGE)
    assert value and value.startswith("conv_"), value
    return value


def last_tool_result(fake) -> dict:
    """The tool_result block of the newest upstream request (what the model was told)."""
    messages = fake.requests()[-1]["body"]["messages"]
    blocks = [block for block in messages[-1]["content"] if block.get("type") == "tool_result"]
    assert blocks, messages[-1]
    return blocks[-1]


# -- the page and its headers ---------------------------------------------------------------------------------


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in filter(None, (p.strip() for p in header.split(";"))):
        name, *values = part.split()
        directives[name] = values
    return directives


def test_page_and_files_are_served_with_a_strict_policy(server):
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        csp = csp_directives(page.headers["content-security-policy"])
        assert csp == {
            "default-src": ["'none'"], "script-src": ["'self'"], "style-src": ["'self'"],
            "img-src": ["'self'", "data:"], "connect-src": ["'self'", f"ws://127.0.0.1:{server.port}"],
            "base-uri": ["'none'"], "form-action": ["'self'"], "frame-ancestors": ["'none'"],
        }
        assert "unsafe" not in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        html = page.text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script"
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", html, re.I), "inline style or handler"
        assert not re.search(r"(src|href)=\"(https?:)?//", html), "a file from another origin"

        types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
        for name in WEB_FILES:
            response = client.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"] == types[Path(name).suffix]
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert re.fullmatch(r"public, max-age=\d{1,4}", response.headers["cache-control"])
            assert "content-security-policy" in response.headers
            if name.endswith(".js"):
                for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                               "new Function", "http://", "https://"):
                    assert banned not in response.text, f"{name} uses {banned}"
            again = client.get(f"/static/{name}", headers={"If-None-Match": response.headers["etag"]})
            assert again.status_code == 304

        for bad in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/x/../../app.py", "/static/.hidden",
                    "/static/index.html", "/static/app.py", "/static/nope.js", "/static/", "/static/%00.js"):
            assert client.get(bad).status_code == 404, bad

        # A Host header that is not a plain host:port never reaches the policy.
        odd = client.get("/", headers={"Host": "evil.example; script-src *"})
        assert csp_directives(odd.headers["content-security-policy"])["connect-src"] == ["'self'"]


# -- the key ----------------------------------------------------------------------------------------------


def test_a_bad_key_is_refused_and_a_good_key_opens_the_list(pages, server):
    with api(server) as client:
        seeded = client.post("/agent", json={"message": "seeded conversation"}).json()
    page = pages.open(server.base_url)
    page.goto(server.base_url + "/")
    page.wait_for_selector("#key-screen:not([hidden])")
    assert page.locator("#key-input").get_attribute("type") == "password"
    screenshot(page, "key.png")

    page.fill("#key-input", "not-a-key-0123456789")
    page.click("#key-submit")
    page.wait_for_selector("#key-error:not([hidden])")
    assert "not accepted" in page.inner_text("#key-error")
    assert page.locator("#app").is_hidden()
    assert stored(page, KEY_STORAGE) is None

    page.fill("#key-input", ALICE)
    page.press("#key-input", "Enter")
    wait_connected(page)
    item = page.locator(f'.conv[data-id="{seeded["conversation_id"]}"]')
    item.wait_for()
    assert "seeded conversation" in item.inner_text()
    assert ALICE not in page.url and "token" not in page.url
    assert ALICE not in page.inner_text("body")
    assert stored(page, KEY_STORAGE) == ALICE  # sessionStorage, not localStorage or a cookie
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""

    # A key kept in the tab that the server no longer accepts: the WebSocket closes with 4401.
    stale = pages.open(server.base_url)
    stale.add_init_script(f"sessionStorage.setItem({KEY_STORAGE!r}, 'revoked-key-0123456789')")
    stale.goto(server.base_url + "/")
    stale.wait_for_selector("#key-error:not([hidden])")
    assert "not accepted" in stale.inner_text("#key-error")


# -- streaming, usage, stop, keyboard ------------------------------------------------------------------------


def test_a_new_conversation_streams_and_shows_usage(pages, server, fake):
    words = [f"word{i} " for i in range(12)]
    fake.script({"tokens": words, "token_delay": 0.12, "usage": {"cache_read_input_tokens": 1234,
                                                                 "cache_creation_input_tokens": 56}})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    send(page, "Tell me twelve words")
    reply = last_reply(page)
    # An intermediate state: some words shown, not all yet, the reply still running (Stop offered).
    page.wait_for_function("() => { const r = document.querySelector('.reply .text');"
                           " return r && r.textContent.includes('word2') && !r.textContent.includes('word11'); }")
    assert page.locator("#stop-btn").is_visible()
    assert page.locator(".reply .usage").is_hidden() or "usage-live" in reply.locator(".usage").get_attribute("class")
    wait_reply_ended(page)
    assert reply.locator(".text").text_content() == "".join(words)

    audit = audit_of(server, conversation_id(page))
    call = audit["requests"][0]
    usage = reply.locator(".usage")
    assert usage.locator(".u-in .u-value").inner_text() == f"{call['input_tokens']:,}"
    assert usage.locator(".u-out .u-value").inner_text() == f"{call['output_tokens']:,}"
    assert usage.locator(".u-cache-read .u-value").inner_text() == "1,234"
    assert usage.locator(".u-cache-write .u-value").inner_text() == "56"
    assert usage.locator(".u-cost .u-value").inner_text() == f"${call['cost_usd']:.6f}"

    item = page.locator(f'.conv[data-id="{audit["id"]}"]')
    item.wait_for()
    assert "Tell me twelve words" in item.locator(".conv-title").inner_text()
    page.wait_for_function("(id) => document.querySelector(`.conv[data-id='${id}'] .conv-cost`).textContent"
                           " !== '$0'", arg=audit["id"])
    assert page.locator(".conv[aria-current=true]").count() == 1
    screenshot(page, "chat.png")


def test_stop_cancels_the_reply_on_the_server(pages, server, fake):
    fake.script({"n_tokens": 400, "token_delay": 0.03})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    send(page, "a long answer please")
    page.wait_for_function("() => (document.querySelector('.reply .text') || {}).textContent?.length > 10")
    page.click("#stop-btn")
    wait_reply_ended(page, state="reply-cancelled")
    assert "Stopped" in last_reply(page).inner_text()
    audit = audit_of(server, conversation_id(page))
    assert audit["replies"][-1]["status"] == "cancelled"


def test_keyboard_enter_sends_shift_enter_breaks_escape_stops(pages, server, fake):
    fake.script({"n_tokens": 400, "token_delay": 0.03})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    page.focus("#input")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#input") == "first line\nsecond line"
    page.keyboard.press("Enter")
    page.locator(".msg.user").last.wait_for()
    assert page.locator(".msg.user .text").last.inner_text() == "first line\nsecond line"
    assert page.input_value("#input") == ""
    page.wait_for_function("() => (document.querySelector('.reply .text') || {}).textContent?.length > 10")
    page.keyboard.press("Escape")
    wait_reply_ended(page, state="reply-cancelled")
    assert audit_of(server, conversation_id(page))["replies"][-1]["status"] == "cancelled"
    # Everything clickable is a button (or a form control): no clickable divs.
    assert page.locator("[onclick], [role=button]:not(button), a:not([href])").count() == 0
    # Tab order reaches the composer and then its button.
    page.focus("#input")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send-btn"


# -- tools ------------------------------------------------------------------------------------------------


def test_a_tool_call_and_its_result_are_shown(pages, server, fake):
    fake.script({"tool_calls": [{"name": "calculator", "input": {"expression": "12 * 34"}}]},
                {"tokens": ["It is ", "408."]})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    send(page, "what is 12 * 34?")
    wait_reply_ended(page)
    card = page.locator('.tool[data-tool="calculator"]')
    assert card.locator(".tool-name").inner_text() == "calculator"
    card.locator(".tool-input summary").click()
    assert '"expression": "12 * 34"' in card.locator(".tool-input pre").inner_text()
    assert card.locator(".tool-result pre").inner_text() == "408"
    assert "It is 408." in last_reply(page).inner_text()


def test_approve_a_pending_action_and_the_reply_goes_on(pages, server, fake):
    fake.script({"tool_calls": [{"name": "save_note", "input": {"text": "buy milk"}}]},
                {"tokens": ["Saved ", "your note."]})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    send(page, "save a note: buy milk")
    card = page.locator('.tool[data-tool="save_note"]')
    card.locator("button.approve").wait_for()
    assert "needs your approval" in card.inner_text()
    page.wait_for_selector(".reply.reply-paused")
    screenshot(page, "tools-approval.png")
    card.locator("button.approve").click()
    wait_reply_ended(page, 2)
    assert "Saved your note." in page.locator(".reply").last.inner_text()
    assert re.fullmatch(r"saved note \d+", card.locator(".tool-result pre").inner_text())
    assert "You approved" in card.inner_text()
    told = last_tool_result(fake)
    assert not told.get("is_error")
    runs = audit_of(server, conversation_id(page))["tool_runs"]
    assert runs[0]["decision"] == "approved"


def test_deny_with_a_reason_tells_the_model(pages, server, fake):
    fake.script({"tool_calls": [{"name": "save_note", "input": {"text": "sell the car"}}]}, {})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    send(page, "save a note: sell the car")
    page.wait_for_selector(".reply.reply-paused")
    # The pending action outlives a reload: the session frame lists it again.
    page.reload()
    wait_connected(page)
    card = page.locator('.tool[data-tool="save_note"]')
    card.locator("input.reason").fill("not today, thanks")
    card.locator("button.deny").click()
    wait_reply_ended(page, 2)
    told = last_tool_result(fake)
    assert told["is_error"] is True
    assert "not today, thanks" in str(told["content"])
    assert "not today, thanks" in card.locator(".tool-result").inner_text()
    runs = audit_of(server, conversation_id(page))["tool_runs"]
    assert runs[0]["decision"] == "denied" and runs[0]["reason"] == "not today, thanks"


def test_the_page_answers_get_timezone(pages, server, fake):
    fake.script({"tool_calls": [{"name": "get_timezone", "input": {}}]}, {})
    page = pages.open(server.base_url, timezone_id="Asia/Tokyo")
    sign_in(page, server.base_url, ALICE)
    send(page, "what is my time zone?")
    wait_reply_ended(page, 2)
    card = page.locator('.tool[data-tool="get_timezone"]')
    assert "Asia/Tokyo" in card.locator(".tool-action").inner_text()
    assert last_tool_result(fake)["content"] == "Asia/Tokyo"
    assert "Asia/Tokyo" in page.locator(".reply").last.inner_text()


# -- reload mid-reply, audit, rename, delete -------------------------------------------------------------------


def test_a_reload_mid_reply_shows_the_reply_going_on(pages, server, fake):
    words = [f"w{i} " for i in range(45)]
    fake.script({"tokens": words, "token_delay": 0.06})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    send(page, "a slow reply")
    page.wait_for_function("() => (document.querySelector('.reply .text') || {}).textContent?.includes('w4 ')")
    page.reload()
    wait_connected(page)
    # After the reload the reply is still running (Stop is offered) and its text is rebuilt from the start.
    page.wait_for_selector("#stop-btn:not([hidden])")
    page.wait_for_function("() => (document.querySelector('.reply .text') || {}).textContent?.includes('w0 ')")
    assert "w44" not in page.locator(".reply .text").inner_text()
    wait_reply_ended(page)
    assert page.locator(".msg.user").count() == 1
    assert page.locator(".reply").count() == 1
    assert page.locator(".reply .text").text_content() == "".join(words)
    assert page.locator(".reply .usage .u-out .u-value").inner_text() != "0"


def test_the_audit_view_shows_steps_calls_and_tool_runs(pages, server, fake):
    fake.script({"tool_calls": [{"name": "calculator", "input": {"expression": "2 + 3"}}]}, {"tokens": ["5."]})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    send(page, "what is 2 + 3?")
    wait_reply_ended(page)
    page.click("#audit-btn")
    dialog = page.locator("#audit-dialog")
    dialog.locator(".audit-calls table").wait_for()
    calls = dialog.locator(".audit-calls tbody tr")
    assert calls.count() == 2
    assert "tool_use" in calls.nth(0).inner_text() and "end_turn" in calls.nth(1).inner_text()
    runs = dialog.locator(".audit-tools tbody tr")
    assert runs.count() == 1
    assert "calculator" in runs.first.inner_text() and "5" in runs.first.inner_text()
    assert "complete" in dialog.locator(".audit-replies tbody").inner_text()
    audit = audit_of(server, conversation_id(page))
    assert f"${audit['totals']['cost_usd']:.6f}" == dialog.locator(".audit-cost").inner_text()
    screenshot(page, "audit.png")
    page.keyboard.press("Escape")
    page.wait_for_selector("#audit-dialog", state="hidden")


def test_rename_and_delete_a_conversation(pages, server, fake):
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    send(page, "to be renamed")
    wait_reply_ended(page)
    conv = conversation_id(page)
    page.locator(f'.conv[data-id="{conv}"]').wait_for()

    page.click("#rename-btn")
    page.fill("#rename-input", "Groceries")
    page.press("#rename-input", "Enter")
    page.wait_for_function("(id) => document.querySelector(`.conv[data-id='${id}'] .conv-title`).textContent"
                           " === 'Groceries'", arg=conv)
    assert page.inner_text("#chat-title") == "Groceries"
    assert audit_of(server, conv)["title"] == "Groceries"

    page.click("#delete-btn")
    page.wait_for_selector("#confirm-dialog[open]")
    assert "Groceries" in page.inner_text("#confirm-text")
    page.click("#confirm-cancel")  # changing one's mind keeps it
    assert page.locator(f'.conv[data-id="{conv}"]').count() == 1
    page.click("#delete-btn")
    page.click("#confirm-ok")
    page.wait_for_selector(f'.conv[data-id="{conv}"]', state="detached")
    assert page.inner_text("#chat-title") == "New conversation"
    assert stored(page, CONVERSATION_STORAGE) is None
    with api(server) as client:
        assert client.get(f"/conversations/{conv}").status_code == 404


def test_a_long_conversation_shows_its_earlier_messages_on_demand(pages, server, fake):
    with api(server) as client:
        conv = client.post("/agent", json={"message": "message number 0"}).json()["conversation_id"]
        for n in range(1, 27):  # 54 turns: more than the session frame's 50
            assert client.post("/agent", json={"message": f"message number {n}", "conversation_id": conv}).is_success
    page = pages.open(server.base_url)
    page.add_init_script(f"sessionStorage.setItem({CONVERSATION_STORAGE!r}, {conv!r})")
    sign_in(page, server.base_url, ALICE)
    page.locator(".msg.user", has_text="message number 26").wait_for()
    assert page.locator(".msg.user", has_text="message number 0").count() == 0
    page.click(".earlier button")
    page.locator(".msg.user", has_text="message number 0").wait_for()
    texts = page.locator(".msg.user .text").all_inner_texts()
    assert texts == [f"message number {n}" for n in range(27)]
    assert page.locator(".earlier").is_hidden()
    assert page.locator(".reply").count() == 27
    # Past replies show their usage too (from the audit).
    page.wait_for_function("() => [...document.querySelectorAll('.reply .usage')].every(u => !u.hidden)")


# -- isolation, hostile text ----------------------------------------------------------------------------------


def test_two_keys_never_see_each_others_conversations(pages, server, fake):
    alice = pages.open(server.base_url)
    bob = pages.open(server.base_url)
    sign_in(alice, server.base_url, ALICE)
    sign_in(bob, server.base_url, BOB)
    send(alice, "alice's secret plan")
    send(bob, "bob's shopping list")
    wait_reply_ended(alice)
    wait_reply_ended(bob)
    alice_conv, bob_conv = conversation_id(alice), conversation_id(bob)
    alice.locator(f'.conv[data-id="{alice_conv}"]').wait_for()
    bob.locator(f'.conv[data-id="{bob_conv}"]').wait_for()
    alice.click("#new-btn")
    alice.wait_for_function("() => document.querySelectorAll('.conv').length > 0")
    assert "bob's" not in alice.inner_text("#conv-list")
    assert "alice's" not in bob.inner_text("#conv-list")
    assert bob.locator(f'.conv[data-id="{alice_conv}"]').count() == 0

    # Bob's tab pointed at Alice's conversation: the server says 4404, the page opens a new one, shows nothing.
    bob.evaluate("([name, id]) => sessionStorage.setItem(name, id)", [CONVERSATION_STORAGE, alice_conv])
    bob.reload()
    bob.wait_for_selector("#banner:not([hidden])")
    assert "does not exist" in bob.inner_text("#banner-text")
    wait_connected(bob)
    assert "secret plan" not in bob.inner_text("body")
    assert stored(bob, CONVERSATION_STORAGE) != alice_conv


def test_model_and_user_text_is_shown_as_text(pages, server, fake):
    hostile = ["<script>alert(1)</script>", " and ", "<img src=x onerror=alert(2)>"]
    fake.script({"tokens": hostile})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    message = "<b>bold?</b><img src=y onerror=alert(3)>"
    send(page, message)
    wait_reply_ended(page)
    assert last_reply(page).locator(".text").inner_text() == "".join(hostile)
    assert page.locator(".msg.user .text").inner_text() == message
    page.locator(".conv-title", has_text="<b>bold?</b>").wait_for()
    assert page.locator("#messages img, #messages script, #messages b, #conv-list img, #conv-list b").count() == 0
    page.click("#audit-btn")
    page.locator("#audit-dialog .facts").wait_for()
    assert "<b>bold?</b>" in page.inner_text("#audit-dialog .facts")
    assert page.locator("#audit-dialog img").count() == 0
    record = pages.record_of(page)
    assert not any(url.rstrip("/").endswith(("/x", "/y")) for url in record.requests)
    assert record.dialogs == []


# -- phone, errors --------------------------------------------------------------------------------------------


def test_a_phone_sized_screen_is_usable(pages, server, fake):
    page = pages.open(server.base_url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    sign_in(page, server.base_url, ALICE)
    assert page.locator("#sidebar").is_hidden()
    assert page.locator("#toggle-list").is_visible()
    send(page, "hello from a phone")
    wait_reply_ended(page)
    assert "hello from a phone" in last_reply(page).inner_text()
    for selector in ("#input", "#send-btn", "#audit-btn", "#delete-btn"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844, selector
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "phone.png")

    page.click("#toggle-list")
    page.locator("#sidebar").wait_for(state="visible")
    assert page.get_attribute("#toggle-list", "aria-expanded") == "true"
    screenshot(page, "phone-list.png")
    page.locator(".conv").first.click()
    page.locator("#sidebar").wait_for(state="hidden")


def test_a_spent_budget_is_explained(pages, server, fake):
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, CAROL)
    send(page, "anything")
    page.wait_for_selector("#banner[data-kind=budget]:not([hidden])")
    text = page.inner_text("#banner-text")
    assert "budget" in text and "renews" in text
    assert page.locator(".msg.user.msg-failed").count() == 1
    assert page.input_value("#input") == "anything"  # given back, to send later
    assert fake.requests() == []


def test_an_upstream_failure_is_shown_in_the_reply(pages, server, fake):
    fake.script({"status": 529})
    page = pages.open(server.base_url)
    sign_in(page, server.base_url, ALICE)
    send(page, "are you there?")
    wait_reply_ended(page, state="reply-failed")
    note = last_reply(page).locator(".reply-note.error").inner_text()
    assert note and "overloaded" in note.lower(), note
    send(page, "and now?")  # the chat goes on
    wait_reply_ended(page)
    assert "Echo: and now?" in last_reply(page).inner_text()


def test_an_unreachable_server_is_said_and_retried(pages, server, fake):
    proxy = TcpProxy(server.port).start()  # the page is served through it; cutting it makes the server unreachable
    try:
        page = pages.open(proxy.base_url, allow_errors=(r"WebSocket connection to .* failed",
                                                        r"ERR_CONNECTION_(REFUSED|RESET)", r"Failed to load resource"))
        sign_in(page, proxy.base_url, ALICE)
        proxy.cut()
        page.wait_for_selector("#banner[data-kind=offline]:not([hidden])")
        assert "cannot be reached" in page.inner_text("#banner-text")
        page.wait_for_function("() => /Retrying in/.test(document.getElementById('banner-text').textContent)")
        assert page.locator("#send-btn").is_disabled()
        time.sleep(2.5)  # a retry or two fails while the server is away
        proxy.restore()
        page.wait_for_selector("#banner", state="hidden", timeout=15_000)
        wait_connected(page)
        send(page, "back again")
        wait_reply_ended(page)
        assert "back again" in last_reply(page).inner_text()
    finally:
        proxy.cut()
