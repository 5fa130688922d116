"""The tools file and its registry: Python tools' schemas and runs, every error of the TOML file (one line naming
it; the server does not start), ``${VAR}``, MCP servers as stdio children, and ``agent-server tools``.

The Python tools and the MCP server live in ``tests/e2e/mcp_servers.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent_server.engine.toolrun import ToolCall, run_calls, run_one
from agent_server.tools.base import ToolConfigError, ToolFailed
from agent_server.tools.python import PythonTool, as_output
from agent_server.tools.registry import ToolRegistry
from tests.conftest import lifespan, make_settings
from tests.e2e import mcp_servers

REPO = Path(__file__).resolve().parents[2]
MCP_SCRIPT = REPO / "tests" / "e2e" / "mcp_servers.py"
MODULE = "tests.e2e.mcp_servers"
WAIT = 20


def write(tmp_path: Path, text: str, name: str = "tools.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> ToolRegistry:
    return ToolRegistry.load(write(tmp_path, text))


def refused(tmp_path: Path, text: str) -> str:
    """The one-line reason the file is refused."""
    with pytest.raises(ToolConfigError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message, message
    assert "Traceback" not in message
    return message


async def until(condition, timeout: float = WAIT) -> None:  # type: ignore[no-untyped-def]
    """Wait for a condition that no event announces (the keeper's state), within ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def stdio_server_toml(name: str = "docs", **extra: str) -> str:
    lines = [f"[mcp.{name}]", f'command = "{sys.executable}"', f'args = ["{MCP_SCRIPT}", "stdio"]']
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


# -- Python tools: the schema from the signature ---------------------------------------------------------------


def test_a_python_tools_schema_comes_from_its_signature_hints_and_docstring(tmp_path) -> None:
    registry = load(tmp_path, f"""
[tools.lookup]
python = "{MODULE}:lookup"

[tools.add]
python = "{MODULE}:add"
description = "Adds, as the file says."
timeout_seconds = 2.5
requires_approval = true

[tools.note]
python = "{MODULE}:note"
""")
    assert registry.names() == ["add", "lookup", "note"]
    lookup = registry.get("lookup")
    assert lookup is not None and lookup.kind == "python" and lookup.source == f"{MODULE}:lookup"
    assert lookup.definition() == {
        "name": "lookup", "description": "Look a city up in the atlas.",
        "input_schema": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string"}, "limit": {"type": "integer", "default": 3},
            "exact": {"type": "boolean", "default": False}}},
    }
    add = registry.get("add")
    assert add is not None
    assert add.definition()["description"] == "Adds, as the file says."
    assert (add.timeout, add.requires_approval, lookup.timeout, lookup.requires_approval) == (2.5, True, None, False)
    # A parameter named like a schema keyword ("title") stays a parameter.
    assert registry.get("note").definition()["input_schema"] == {  # type: ignore[union-attr]
        "type": "object", "required": ["title"],
        "properties": {"title": {"type": "string"}, "body": {"type": "string", "default": ""}}}
    # The definitions are what a request declares: sorted by name, every one of them by default.
    assert [d["name"] for d in registry.definitions(None)] == ["add", "lookup", "note"]
    assert [d["name"] for d in registry.definitions(["note", "lookup"])] == ["note", "lookup"]
    assert registry.definitions([]) == []


def test_server_and_client_tools_are_declared_as_written(tmp_path) -> None:
    registry = load(tmp_path, """
[server_tools.web_search]
type = "web_search_20250305"
max_uses = 3
allowed_domains = ["example.com"]

[client_tools.get_location]
description = "The user's current city."
input_schema = { type = "object", properties = { precise = { type = "boolean" } } }
""")
    search, location = registry.get("web_search"), registry.get("get_location")
    assert search is not None and location is not None
    assert (search.kind, location.kind) == ("server", "client")
    assert search.definition() == {"type": "web_search_20250305", "name": "web_search", "max_uses": 3,
                                   "allowed_domains": ["example.com"]}
    assert location.definition() == {"name": "get_location", "description": "The user's current city.",
                                     "input_schema": {"type": "object",
                                                      "properties": {"precise": {"type": "boolean"}}}}
    assert not search.runs_here and not location.runs_here


# -- Python tools: running them ---------------------------------------------------------------------------------


def tool(name: str, **options) -> PythonTool:  # type: ignore[no-untyped-def]
    return PythonTool(name, f"{MODULE}:{name}", **options)


def call(name: str, arguments: dict | None = None, **options) -> ToolCall:  # type: ignore[no-untyped-def]
    return ToolCall(f"toolu_{name}", name, arguments or {}, tool(name, **options), True)


async def test_a_sync_tool_runs_in_a_thread_and_an_async_one_on_the_loop() -> None:
    sync = await tool("where_sync").run({})
    asynchronous = await tool("where_async").run({})
    assert sync.content == "thread=tool-where_sync loop=False"  # a thread of its own
    assert asynchronous.content == f"thread={threading.current_thread().name} loop=True"


async def test_what_a_tool_returns_becomes_text_json_text_or_content_blocks() -> None:
    assert (await tool("lookup").run({"city": "Oslo"})).content == "Oslo: 3 results"
    assert (await tool("add").run({"a": 2, "b": 40})).content == '{"sum":42}'
    assert (await tool("nothing").run({})).content == "(no output)"
    blocks = (await tool("blocks").run({})).content
    assert [block["type"] for block in blocks] == ["text", "image", "text"]
    assert as_output([1, 2]).content == "[1,2]"
    assert as_output({"when": object()}).content.startswith("{'when': <object")  # not JSON-able: its str()


async def test_invalid_input_is_a_short_error_for_the_model() -> None:
    with pytest.raises(ToolFailed) as missing:
        await tool("lookup").run({})
    assert str(missing.value) == "invalid input: city: Field required"
    with pytest.raises(ToolFailed) as extra:
        await tool("lookup").run({"city": "Oslo", "country": "NO"})
    assert "country: Extra inputs are not permitted" in str(extra.value)


async def test_a_raising_tool_gives_an_error_result_without_a_traceback() -> None:
    result = await run_one(call("boom", {"reason": "disk on fire\nsecond line"}), default_timeout=5,
                           output_limit=1000)
    assert (result.is_error, result.outcome, result.content) == (True, "error", "RuntimeError: disk on fire")
    assert result.block() == {"type": "tool_result", "tool_use_id": "toolu_boom",
                              "content": "RuntimeError: disk on fire", "is_error": True}


async def test_a_tool_past_its_timeout_is_an_error_and_the_tools_own_timeout_wins() -> None:
    result = await run_one(call("slow", {"seconds": 30}), default_timeout=0.2, output_limit=1000)
    assert (result.is_error, result.outcome) == (True, "timeout")
    assert result.content == "the tool did not finish within 0.2 s"
    assert 150 <= result.duration_ms < 5000
    own = await run_one(call("slow", {"seconds": 30}, timeout=0.1), default_timeout=30, output_limit=1000)
    assert own.content == "the tool did not finish within 0.1 s"
    # A sync tool cannot be stopped: it is abandoned in its thread, its result dropped.
    abandoned = await run_one(call("slow_sync", {"seconds": 1}), default_timeout=0.1, output_limit=1000)
    assert abandoned.outcome == "timeout" and abandoned.duration_ms < 900


async def test_huge_output_is_cut_with_a_notice_and_content_blocks_too() -> None:
    text = await run_one(call("huge", {"chars": 5000}), default_timeout=5, output_limit=1000)
    assert not text.is_error
    assert text.content == mcp_servers.huge(5000)[:1000] + "\n[output cut at 1000 of 5000 characters]"
    small = await run_one(call("huge", {"chars": 1000}), default_timeout=5, output_limit=1000)
    assert small.content == mcp_servers.huge(1000)
    whole = await run_one(call("blocks"), default_timeout=5, output_limit=100_000)
    assert whole.content == mcp_servers.blocks()
    size = 11 + len(json.dumps(mcp_servers.blocks()[1], separators=(",", ":"))) + 10
    # Blocks stay blocks: those that fit, a text cut at the limit, an image whole or not at all; then the notice.
    cut = await run_one(call("blocks"), default_timeout=5, output_limit=size - 4)
    assert cut.content == [*mcp_servers.blocks()[:2], {"type": "text", "text": "last b"},
                           {"type": "text", "text": f"[output cut at {size - 4} of {size} characters]"}]
    no_image = await run_one(call("blocks"), default_timeout=5, output_limit=20)
    assert no_image.content == [{"type": "text", "text": "first block"},
                                {"type": "text", "text": f"[output cut at 20 of {size} characters]"}]


async def test_an_unknown_or_unoffered_tool_is_an_error_result() -> None:
    unknown = await run_one(ToolCall("toolu_1", "nope", {}, None, True), default_timeout=5, output_limit=1000)
    assert (unknown.is_error, unknown.content) == (True, "unknown tool 'nope'")
    hidden = await run_one(ToolCall("toolu_2", "lookup", {}, tool("lookup"), False), default_timeout=5,
                           output_limit=1000)
    assert (hidden.is_error, hidden.content) == (True, "the tool 'lookup' is not available in this reply")


async def test_parallel_calls_run_at_once_and_each_is_heard_as_it_finishes() -> None:
    heard: list[str] = []
    calls = [call("slow", {"seconds": 0.3}), call("lookup", {"city": "Rome"}), call("boom")]
    calls[0].id = "toolu_slow"
    started = asyncio.get_running_loop().time()
    results = await run_calls(calls, default_timeout=5, output_limit=1000,
                              on_result=lambda c, r: heard.append(c.name))
    assert asyncio.get_running_loop().time() - started < 1.5
    assert heard[-1] == "slow" and sorted(heard) == ["boom", "lookup", "slow"]
    assert results["toolu_lookup"].content == "Rome: 3 results" and results["toolu_boom"].is_error


# -- the file's errors: one line naming what is wrong -------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("[tools.x\npython = 1", "is not valid TOML"),
    ("[plugins.x]\npython = 'a:b'", "unknown section [plugins]"),
    ("[tools.x]\ndescription = 'no python'", "[tools.x] needs python = \"module:function\""),
    ("[tools.x]\npython = 'no_colon'", "'no_colon' is not 'module:function'"),
    ("[tools.x]\npython = 'no_such_module_anywhere:f'", "cannot import 'no_such_module_anywhere'"),
    (f"[tools.x]\npython = '{MODULE}:missing'", f"'{MODULE}' has no 'missing'"),
    (f"[tools.x]\npython = '{MODULE}:NOT_CALLABLE'", "is not callable"),
    (f"[tools.x]\npython = '{MODULE}:takes_kwargs'", "takes *args or **kwargs"),
    (f"[tools.x]\npython = '{MODULE}:takes_opaque'", "the parameters of 'x' cannot be described"),
    (f"[tools.x]\npython = '{MODULE}:lookup'\ntimeout_seconds = 0", "timeout_seconds must be a positive number"),
    (f"[tools.x]\npython = '{MODULE}:lookup'\ntimeout_seconds = true", "timeout_seconds must be a positive"),
    (f"[tools.x]\npython = '{MODULE}:lookup'\nrequires_approval = 'yes'", "requires_approval must be true or false"),
    (f"[tools.'bad name']\npython = '{MODULE}:lookup'", "a tool name may use letters, digits, _ and -"),
    ("[tools]\nx = 3", "[tools.x] must be a table"),
    (f"[tools.dup]\npython = '{MODULE}:lookup'\n[client_tools.dup]\ndescription = 'again'",
     "the tool name 'dup' is declared twice"),
    ("[mcp.docs]\nallow = ['search']", "give exactly one of url or command"),
    ("[mcp.docs]\nurl = 'http://127.0.0.1:9/mcp'\ncommand = 'x'", "give exactly one of url or command"),
    ("[mcp.docs]\nurl = 'http://127.0.0.1:9/mcp'\nallow = 'search'", "allow must be a list of tool names"),
    (f"[mcp.docs]\nurl = 'http://127.0.0.1:9/mcp'\n[tools.docs__search]\npython = '{MODULE}:lookup'",
     "'docs__search' clashes with an MCP server's tool names"),
    ("[server_tools.web_search]\nmax_uses = 3", "[server_tools.web_search] needs type = \"...\""),
    ("[server_tools.web_search]\ntype = 'web_search_20250305'\nrequires_approval = true",
     "server tools cannot require approval"),
    ("[client_tools.where]\ninput_schema = { type = 'string' }", "input_schema must be a JSON schema of type object"),
])
def test_every_mistake_in_the_file_is_one_line_naming_it(tmp_path, text, expected) -> None:
    message = refused(tmp_path, text)
    assert expected in message, message
    assert str(tmp_path / "tools.toml") in message


def test_a_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ToolConfigError) as caught:
        ToolRegistry.load(tmp_path / "absent.toml")
    assert str(caught.value) == f"cannot read {tmp_path / 'absent.toml'}: No such file or directory"


async def test_the_server_refuses_to_start_with_a_bad_tools_file(tmp_path, database_url, fake) -> None:
    from agent_server.app import AgentServerApp

    path = write(tmp_path, "[tools.x]\npython = 'no_such_module_anywhere:f'\n")
    app = AgentServerApp(make_settings(database_url, fake, AGENT_TOOLS_FILE=str(path)))
    with pytest.raises(RuntimeError) as caught:
        async with lifespan(app):
            pass
    assert str(caught.value).startswith("not starting: AGENT_TOOLS_FILE: ")
    assert "cannot import 'no_such_module_anywhere'" in str(caught.value) and "\n" not in str(caught.value)


# -- ${VAR} ---------------------------------------------------------------------------------------------------


def test_variables_come_from_the_environment_in_mcp_and_server_tool_tables(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DOCS_TOKEN", "s3cret-token-value")
    monkeypatch.setenv("SEARCH_USES", "2")
    registry = load(tmp_path, """
[mcp.docs]
url = "http://127.0.0.1:9/mcp"
headers = { Authorization = "Bearer ${DOCS_TOKEN}", X-Plain = "$DOCS_TOKEN {DOCS_TOKEN}" }

[mcp.local]
command = "${DOCS_TOKEN}-bin"
env = { TOKEN = "${DOCS_TOKEN}", BOTH = "${DOCS_TOKEN}:${SEARCH_USES}" }
args = ["--uses=${SEARCH_USES}"]

[server_tools.web_search]
type = "web_search_20250305"
user_location = { type = "approximate", city = "${SEARCH_USES}" }
""")
    docs, local = registry.servers
    assert docs.headers == {"Authorization": "Bearer s3cret-token-value", "X-Plain": "$DOCS_TOKEN {DOCS_TOKEN}"}
    assert local.env == {"TOKEN": "s3cret-token-value", "BOTH": "s3cret-token-value:2"}
    assert (local.command, local.args) == ("s3cret-token-value-bin", ["--uses=2"])
    assert registry.get("web_search").definition()["user_location"]["city"] == "2"  # type: ignore[union-attr]


def test_a_missing_variable_is_named_and_no_value_is_shown(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRESENT_TOKEN", "visible-value-0001")
    message = refused(tmp_path, """
[mcp.docs]
url = "http://127.0.0.1:9/mcp"
headers = { A = "${PRESENT_TOKEN}", B = "Bearer ${ABSENT_TOKEN}" }
""")
    assert message.endswith("[mcp.docs]: the environment variable ABSENT_TOKEN is not set")
    assert "visible-value-0001" not in message


# -- MCP over stdio -------------------------------------------------------------------------------------------


async def test_an_mcp_servers_tools_are_offered_with_its_prefix_and_allow_list(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DOCS_SECRET", "from-the-environment-77")
    registry = load(tmp_path, stdio_server_toml(
        allow='["search", "whoami", "crash"]', env='{ MCP_SECRET = "${DOCS_SECRET}" }'))
    await registry.start()
    try:
        assert registry.names() == ["docs__crash", "docs__search", "docs__whoami"]
        search = registry.get("docs__search")
        assert search is not None and search.kind == "mcp" and search.source.endswith("mcp_servers.py stdio")
        definition = search.definition()
        assert definition["description"] == "Search the docs."
        assert definition["input_schema"]["required"] == ["query"]
        output = await search.run({"query": "tides"})
        assert output.content.startswith("results for 'tides' from pid ") and not output.is_error
        whoami = await registry.get("docs__whoami").run({})  # type: ignore[union-attr]
        assert whoami.content.endswith(" secret=from-the-environment-77")
        first_pid = whoami.content.split()[0]
        # The child dies in the middle of a call: an error for that call, and the next call reconnects.
        crash = await run_one(ToolCall("toolu_c", "docs__crash", {}, registry.get("docs__crash"), True),
                              default_timeout=WAIT, output_limit=10_000)
        assert crash.is_error and crash.outcome == "error"
        assert crash.content.startswith("the MCP server docs failed (")
        again = await asyncio.wait_for(registry.get("docs__whoami").run({}), WAIT)  # type: ignore[union-attr]
        assert not again.is_error and again.content.split()[0] != first_pid
    finally:
        await registry.close()


async def test_a_stdio_server_that_died_between_calls_is_noticed_and_restarted(tmp_path, monkeypatch) -> None:
    from agent_server.tools import mcp

    monkeypatch.setattr(mcp, "HEALTH_EVERY", 0.2)
    registry = load(tmp_path, stdio_server_toml())
    await registry.start()
    try:
        server = registry.servers[0]
        session = server._client
        first = (await registry.get("docs__whoami").run({})).content  # type: ignore[union-attr]
        os.kill(int(first.split()[0].removeprefix("pid=")), 9)
        # No call sees the dead session: the keeper's ping notices and starts a new child.
        await until(lambda: server._client is not None and server._client is not session)
        second = await asyncio.wait_for(registry.get("docs__whoami").run({}), WAIT)  # type: ignore[union-attr]
        assert not second.is_error and second.content.split()[0] != first.split()[0]
    finally:
        await registry.close()


async def test_a_server_that_never_answers_gives_error_results(tmp_path, monkeypatch) -> None:
    from agent_server.tools import mcp

    monkeypatch.setattr(mcp, "CALL_CONNECT_WAIT", 0.2)
    registry = load(tmp_path, "[mcp.gone]\ncommand = \"/nonexistent/mcp-binary\"\n")
    await registry.start()
    try:
        server = registry.servers[0]
        assert not server.connected and server.last_error
        assert registry.names() == []  # its tools were never listed
        with pytest.raises(ToolFailed) as caught:
            await server.call("search", {})
        assert str(caught.value).startswith("the MCP server gone is unavailable (")
    finally:
        await registry.close()


# -- agent-server tools ---------------------------------------------------------------------------------------


def run_cli(tmp_path: Path, tools_file: Path | None, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "ANTHROPIC_"))}
    environment.update(PYTHONPATH=str(REPO), **env)
    if tools_file is not None:
        environment["AGENT_TOOLS_FILE"] = str(tools_file)
    return subprocess.run([sys.executable, "-m", "agent_server", "tools"], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=60)


def test_the_tools_command_lists_every_tool_and_checks_the_mcp_servers(tmp_path) -> None:
    path = write(tmp_path, f"""
[tools.lookup]
python = "{MODULE}:lookup"

[tools.add]
python = "{MODULE}:add"
requires_approval = true

[server_tools.web_search]
type = "web_search_20250305"

[client_tools.get_location]
description = "The user's current city."

{stdio_server_toml(allow='["search"]')}
""")
    done = run_cli(tmp_path, path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows[0] == ["name", "kind", "approval", "source"]
    by_name = {row[0]: row for row in rows[1:]}
    assert sorted(by_name) == ["add", "docs__search", "get_location", "lookup", "web_search"]
    assert by_name["lookup"] == ["lookup", "python", "-", f"{MODULE}:lookup"]
    assert by_name["add"][1:3] == ["python", "required"]
    assert by_name["get_location"][1:3] == ["client", "client"]
    assert by_name["web_search"] == ["web_search", "server", "-", "web_search_20250305"]
    assert by_name["docs__search"][1] == "mcp" and by_name["docs__search"][-1] == "stdio"


def test_the_tools_command_fails_naming_an_mcp_server_that_does_not_answer(tmp_path) -> None:
    path = write(tmp_path, f"""
[tools.lookup]
python = "{MODULE}:lookup"

{stdio_server_toml()}
[mcp.broken]
url = "http://127.0.0.1:9/mcp"
""")
    done = run_cli(tmp_path, path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        "agent-server tools: the MCP server broken (http://127.0.0.1:9/mcp) does not answer: ")
    assert "docs__search" in done.stdout and "broken__*" in done.stdout and "NOT ANSWERING" in done.stdout


def test_the_tools_command_fails_naming_a_module_that_does_not_import(tmp_path) -> None:
    path = write(tmp_path, "[tools.lookup]\npython = \"no_such_module_anywhere:lookup\"\n")
    done = run_cli(tmp_path, path)
    assert done.returncode == 1
    assert "[tools.lookup]" in done.stderr and "cannot import 'no_such_module_anywhere'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_the_tools_command_without_a_file_says_so(tmp_path) -> None:
    done = run_cli(tmp_path, None)
    assert done.returncode == 0
    assert "AGENT_TOOLS_FILE is not set" in done.stdout


async def test_mcp_tools_the_api_would_refuse_are_not_offered_and_the_rest_are(tmp_path, caplog) -> None:
    registry = load(tmp_path, stdio_server_toml())
    await registry.start()
    try:
        assert registry.names() == ["docs__crash", "docs__fails", "docs__hang", "docs__hidden", "docs__search",
                                    "docs__whoami"]
        failed = await registry.get("docs__fails").run({"reason": "no index"})  # type: ignore[union-attr]
        assert failed.is_error and "no index" in failed.content
        for definition in registry.definitions(None):
            assert re.match(r"^[a-zA-Z0-9_-]{1,64}$", definition["name"])
            assert definition["input_schema"]["type"] == "object"
        warned = [r.getMessage() for r in caplog.records if "is not offered" in r.getMessage()]
        assert len(warned) == 2 and "'dotted.name'" in warned[0]
    finally:
        await registry.close()


async def test_an_mcp_call_past_its_timeout_leaves_the_session_usable_and_close_ends_the_child(tmp_path) -> None:
    registry = load(tmp_path, stdio_server_toml(timeout_seconds="0.5", allow='["hang", "whoami"]'))
    await registry.start()
    try:
        hang = registry.get("docs__hang")
        assert hang is not None and hang.timeout == 0.5
        late = await run_one(ToolCall("toolu_h", "docs__hang", {"seconds": 30}, hang, True), default_timeout=30,
                             output_limit=1000)
        assert (late.is_error, late.outcome) == (True, "timeout")
        who = await registry.get("docs__whoami").run({})  # type: ignore[union-attr]
        assert not who.is_error
        pid = int(who.content.split()[0].removeprefix("pid="))
    finally:
        await registry.close()
    with pytest.raises(ProcessLookupError):  # the child was ended with the registry, not left behind
        for _ in range(100):
            os.kill(pid, 0)
            await asyncio.sleep(0.05)


async def test_abandoned_sync_tools_hold_neither_other_tools_nor_the_loops_threads() -> None:
    hung = [call("slow_sync", {"seconds": 3}) for _ in range(12)]
    for n, item in enumerate(hung):
        item.id = f"toolu_hung{n}"
    results = await run_calls(hung, default_timeout=0.1, output_limit=1000, on_result=lambda c, r: None)
    assert {r.outcome for r in results.values()} == {"timeout"}
    # Twelve threads still sleep; a fast sync tool runs at once, and so does the loop's default executor.
    fast = await run_one(call("where_sync"), default_timeout=1, output_limit=1000)
    assert fast.outcome == "ok" and fast.content == "thread=tool-where_sync loop=False"
    await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo("127.0.0.1", 80), 1)
    assert all(t.daemon for t in threading.enumerate() if t.name == "tool-slow_sync")


@pytest.mark.parametrize(("name", "content"), [("exits", "SystemExit: 2"), ("exits_async", "SystemExit: 2"),
                                               ("cancels_itself", "the tool was cancelled")])
async def test_a_tool_that_exits_or_cancels_itself_is_an_error_result_and_its_siblings_finish(name, content) -> None:
    results = await run_calls([call(name), call("lookup", {"city": "Turku"})], default_timeout=5, output_limit=1000,
                              on_result=lambda c, r: None)
    assert (results[f"toolu_{name}"].is_error, results[f"toolu_{name}"].content) == (True, content)
    assert results["toolu_lookup"].content == "Turku: 3 results"


async def test_cancelling_the_step_still_cancels_its_tools() -> None:
    task = asyncio.ensure_future(run_calls([call("slow", {"seconds": 30})], default_timeout=60, output_limit=1000,
                                           on_result=lambda c, r: None))
    while "slow" not in mcp_servers.CALLS:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
