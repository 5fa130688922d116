"""The project documents itself, and its documents stay true: every route of the app is in docs/api.md and in the
OpenAPI description, every error type and event is in docs/api.md, every setting is in docs/configuration.md and
.env.example, and nothing points outside the repository."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from starlette.routing import Route, WebSocketRoute

from agent_server import errors
from agent_server.app import ROUTES
from agent_server.config import Settings
from agent_server.engine import events
from agent_server.http.openapi import build_spec

ROOT = Path(__file__).resolve().parents[2]
API = (ROOT / "docs" / "api.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
# Described on the page, not in OpenAPI (a page and its files, a WebSocket, the description itself).
NOT_IN_OPENAPI = {"/", "/static", "/static/{path:path}", "/agent/ws", "/openapi.json", "/metrics"}
INTERNAL_SETTINGS = {"AGENT_BIND_HOST", "AGENT_WORKERS"}  # set by `agent-server serve` for its workers


def http_routes() -> set[tuple[str, str]]:
    found = set()
    for route in ROUTES:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((method, route.path))
    return found


def documented(method: str, path: str) -> bool:
    shown = path.replace("{path:path}", "{name}")
    return f"`{method} {shown}" in API or (method == "GET" and path == "/static")


def test_every_http_route_is_on_the_api_page() -> None:
    # A plain HTTP request on the WebSocket's path is the 426 of the errors table.
    missing = sorted(f"{m} {p}" for m, p in http_routes() if not documented(m, p) and p != "/agent/ws")
    assert not missing, f"not in docs/api.md: {missing}"


def test_the_websocket_and_its_close_codes_are_on_the_api_page() -> None:
    assert any(isinstance(r, WebSocketRoute) and r.path == "/agent/ws" for r in ROUTES)
    assert "## WebSocket `/agent/ws`" in API
    for code in ("4401", "4404", "1008", "1009"):
        assert f"| {code} |" in API, code


def test_every_http_route_is_in_the_openapi_description_and_back() -> None:
    spec = {(method.upper(), path) for path, item in build_spec()["paths"].items() for method in item}
    routes = {(m, p) for m, p in http_routes() if p not in NOT_IN_OPENAPI and not p.startswith("/agent/ws")}
    assert routes - spec == set(), f"routes missing from /openapi.json: {sorted(routes - spec)}"
    assert spec - routes == set(), f"described but not routes: {sorted(spec - routes)}"
    for method, path in spec:
        assert documented(method, path), f"{method} {path} is in OpenAPI but not in docs/api.md"


def test_every_error_type_is_on_the_api_page() -> None:
    types = {cls.type for _, cls in inspect.getmembers(errors, inspect.isclass)
             if issubclass(cls, errors.AgentError)}
    types |= {"budget_exceeded_error", "interrupted", "timeout_error", "request_too_large", "overloaded_error"}
    missing = sorted(t for t in types if f"`{t}`" not in API)
    assert not missing, missing


def test_every_event_is_on_the_api_page() -> None:
    names = {cls.name for _, cls in inspect.getmembers(events, inspect.isclass)
             if issubclass(cls, events.Event) and cls is not events.Event}
    assert names >= {"start", "token", "thinking", "tool_use", "tool_result", "step", "requires_action", "done",
                     "error", "cancelled"}
    table = API.split("## Events", 1)[1].split("\n## ", 1)[0]
    missing = sorted(n for n in names if f"| `{n}` |" not in table)
    assert not missing, missing


def test_every_setting_is_documented_with_its_default() -> None:
    aliases = {field.alias for field in Settings.model_fields.values()} - INTERNAL_SETTINGS
    missing = sorted(a for a in aliases if f"`{a}`" not in CONFIGURATION)
    assert not missing, f"not in docs/configuration.md: {missing}"
    example = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE, re.MULTILINE))
    assert aliases - example == set(), f"not in .env.example: {sorted(aliases - example)}"
    for alias in INTERNAL_SETTINGS:
        assert f"`{alias}`" in CONFIGURATION  # said to be internal


def test_nothing_points_outside_the_repository() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared" not in text, path
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"
