"""``GET /openapi.json``: the HTTP routes described from the pydantic models that validate requests.

Response models here document the JSON that ``serialize`` and ``frames`` build; the schemathesis run in CI checks
every real response against them, and a test checks that every route of the app is described here and in
``docs/api.md``, so the description cannot drift from the behaviour unnoticed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request

from .. import __version__
from .responses import PlainJSONResponse as JSONResponse
from .schemas import AgentRequest


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class UsageOut(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    server_tool_uses: int


class ContextOut(BaseModel):
    turns_sent: int
    turns_omitted: int


class StreamStart(BaseModel):
    reply_id: str
    conversation_id: str
    model: str
    context: ContextOut


class StreamToken(BaseModel):
    text: str


class ToolUseOut(BaseModel):
    id: str
    name: str
    input: dict[str, Any]
    kind: Literal["python", "mcp", "server", "client", "unknown"]


class ToolResultOut(BaseModel):
    tool_use_id: str
    is_error: bool
    content: str
    duration_ms: int | None
    truncated: bool | None = None


class StepOut(BaseModel):
    step: int
    stop_reason: str | None
    usage: UsageOut
    cost_usd: float | None


class PendingOut(BaseModel):
    tool_use_id: str
    name: str
    input: dict[str, Any]
    kind: Literal["approval", "client_tool"]


class RequiresActionOut(BaseModel):
    pending: list[PendingOut]


class StreamDone(BaseModel):
    """The ``done`` event: the POST /agent response without ``content`` and ``tool_calls``."""

    reply_id: str
    conversation_id: str
    turn_id: str | None
    model: str
    status: Literal["complete", "requires_action"]
    stop_reason: str | None
    steps: int
    input_tokens: int
    output_tokens: int
    usage: UsageOut
    estimated_cost_usd: float | None
    context: ContextOut
    pending: list[PendingOut] | None = None


class CancelledOut(BaseModel):
    reply_id: str
    conversation_id: str
    turn_id: str | None


class ToolCallOut(BaseModel):
    id: str
    name: str
    kind: str
    input: dict[str, Any]
    is_error: bool
    content: str
    duration_ms: int | None


class AgentResponse(BaseModel):
    """The whole reply: ``done`` plus the text of every step and the tool calls."""

    conversation_id: str
    turn_id: str | None
    content: str
    reply_id: str
    model: str
    status: Literal["complete", "requires_action", "cancelled"]
    stop_reason: str | None
    steps: int
    input_tokens: int
    output_tokens: int
    usage: UsageOut
    estimated_cost_usd: float | None
    context: ContextOut
    pending: list[PendingOut] | None = None
    tool_calls: list[ToolCallOut]


class BackgroundReply(BaseModel):
    reply_id: str
    conversation_id: str
    status: Literal["running"]


class TurnOut(BaseModel):
    id: str
    seq: int
    role: Literal["user", "assistant"]
    content: str
    blocks: list[dict[str, Any]]
    status: Literal["complete", "incomplete", "failed"]
    reply_id: str | None
    step: int | None
    created_at: str


class CacheCreationOut(BaseModel):
    ephemeral_5m_input_tokens: int | None
    ephemeral_1h_input_tokens: int | None


class RequestOut(BaseModel):
    id: str
    reply_id: str | None
    step: int
    turn_id: str | None
    prompt_turn_id: str | None
    route: Literal["agent", "stream", "ws"]
    model: str
    upstream_request_id: str | None
    status: Literal["ok", "error", "cancelled", "running"]
    error_type: str | None
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation: CacheCreationOut
    cache_read_input_tokens: int
    server_tool_uses: int
    cost_usd: float | None
    cache_savings_usd: float | None
    latency_ms: int | None
    ttft_ms: int | None
    attempts: int
    created_at: str


class ToolRunOut(_Open):
    id: str
    reply_id: str
    step: int
    tool_use_id: str
    name: str
    kind: str
    is_error: bool
    status: Literal["pending", "done"]


class ReplyRowOut(_Open):
    id: str
    status: str
    steps: int
    created_at: str


class TotalsOut(BaseModel):
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    server_tool_uses: int
    cost_usd: float | None
    cache_savings_usd: float | None


class ConversationOut(BaseModel):
    id: str
    owner: str
    title: str | None
    model: str
    system: str | None
    created_at: str
    updated_at: str
    turns: list[TurnOut]
    requests: list[RequestOut]
    tool_runs: list[ToolRunOut]
    replies: list[ReplyRowOut]
    totals: TotalsOut


class TurnPageOut(BaseModel):
    turns: list[TurnOut]
    before: int | None


class ConversationSummary(BaseModel):
    id: str
    title: str | None
    model: str
    created_at: str
    updated_at: str
    totals: TotalsOut


class ConversationList(BaseModel):
    conversations: list[ConversationSummary]
    next_cursor: str | None


class ReplyStatusOut(BaseModel):
    reply_id: str
    conversation_id: str
    status: Literal["running", "complete", "requires_action", "failed", "cancelled", "interrupted"]
    turn_id: str | None
    steps: int
    last_seq: int
    usage: UsageOut
    estimated_cost_usd: float | None
    created_at: str
    finished_at: str | None


class TitleIn(BaseModel):
    title: str


class UsageGroup(BaseModel):
    group: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    server_tool_uses: int
    cost_usd: float | None


class UsageTotals(BaseModel):
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    server_tool_uses: int
    cost_usd: float | None


class UsageReport(BaseModel):
    owner: str
    since: str
    until: str
    groups: list[UsageGroup]
    totals: UsageTotals


class Health(BaseModel):
    status: str
    offline_stub: bool
    version: str


MODELS: list[type[BaseModel]] = [
    AgentRequest, AgentResponse, BackgroundReply, ErrorEnvelope, ConversationOut, ConversationList, TurnPageOut,
    ReplyStatusOut, Health, TitleIn, UsageReport, StreamStart, StreamToken, ToolUseOut, ToolResultOut, StepOut,
    RequiresActionOut, StreamDone, CancelledOut,
]
REPLY_EVENTS = [("start", StreamStart), ("token", StreamToken), ("thinking", StreamToken), ("tool_use", ToolUseOut),
                ("tool_result", ToolResultOut), ("step", StepOut), ("requires_action", RequiresActionOut),
                ("done", StreamDone), ("error", ErrorEnvelope), ("cancelled", CancelledOut)]


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _event(name: str, model: type[BaseModel]) -> dict:
    """One Server-Sent Event: its name, its ``id``, and its data line, which is JSON of ``model``.

    Before OpenAPI 3.2 (``itemSchema``), the ``schema`` of ``text/event-stream`` describes each event, the
    convention schemathesis checks streams against.
    """
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref(model)},
        },
    }


def _events(description: str) -> dict:
    return {"description": description, "content": {"text/event-stream": {"schema": {"oneOf": [
        _event(name, model) for name, model in REPLY_EVENTS]}}}}


def _errors(*statuses: int) -> dict:
    return {str(s): _json(ErrorEnvelope, "Error envelope") for s in statuses}


def _id(name: str = "id") -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "schema": schema}


@lru_cache(maxsize=1)
def build_spec() -> dict:
    schemas: dict = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    body = {"required": True, "content": {"application/json": {"schema": _ref(AgentRequest)}}}
    secured = [{"bearer": []}]
    model_call_errors = _errors(400, 401, 404, 409, 413, 422, 429, 500, 502, 503, 504)
    return {
        "openapi": "3.1.0",
        "info": {"title": "agent_server", "version": __version__},
        "servers": [{"url": "/"}],
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/agent": {"post": {
                "operationId": "postAgent", "summary": "Ask for a whole reply (or start one in the background)",
                "security": secured, "requestBody": body,
                "responses": {"200": _json(AgentResponse, "The reply"),
                              "202": _json(BackgroundReply, "Started in the background"), **model_call_errors},
            }},
            "/agent/stream": {"post": {
                "operationId": "postAgentStream", "summary": "Ask for a reply as Server-Sent Events",
                "security": secured, "requestBody": body,
                "responses": {"200": _events("start, token..., then done, error or cancelled"), **model_call_errors},
            }},
            "/replies/{id}": {"get": {
                "operationId": "getReply", "summary": "A reply's status, whichever instance runs it",
                "security": secured, "parameters": [_id()],
                "responses": {"200": _json(ReplyStatusOut, "The reply"), **_errors(401, 404)},
            }},
            "/replies/{id}/events": {"get": {
                "operationId": "getReplyEvents", "summary": "Replay a reply's events after Last-Event-ID, then live",
                "security": secured,
                "parameters": [_id(), _query("after", {"type": "integer", "minimum": 0}),
                               {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}],
                "responses": {"200": _events("The events after the given one"), **_errors(401, 404, 422)},
            }},
            "/replies/{id}/cancel": {"post": {
                "operationId": "cancelReply", "summary": "Stop a reply wherever it runs (idempotent)",
                "security": secured, "parameters": [_id()],
                "responses": {"200": _json(ReplyStatusOut, "The reply, stopped"), **_errors(401, 404)},
            }},
            "/conversations": {"get": {
                "operationId": "listConversations", "summary": "The caller's conversations, newest first",
                "security": secured,
                "parameters": [_query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                               _query("before", {"type": "string"})],
                "responses": {"200": _json(ConversationList, "One page"), **_errors(401, 422)},
            }},
            "/conversations/{id}": {
                "get": {
                    "operationId": "getConversation", "summary": "Audit: every turn, call, tool run and reply",
                    "security": secured, "parameters": [_id()],
                    "responses": {"200": _json(ConversationOut, "The conversation"), **_errors(401, 404)},
                },
                "patch": {
                    "operationId": "renameConversation", "summary": "Set the title", "security": secured,
                    "parameters": [_id()],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(TitleIn)}}},
                    "responses": {"200": _json(ConversationSummary, "The conversation, as in the list"),
                                  **_errors(400, 401, 404, 413, 422)},
                },
                "delete": {
                    "operationId": "deleteConversation", "summary": "Delete every piece of its content",
                    "security": secured, "parameters": [_id()],
                    "responses": {"204": {"description": "Deleted"}, **_errors(401, 404, 503)},
                },
            },
            "/conversations/{id}/turns": {"get": {
                "operationId": "getTurns", "summary": "History in pages: the newest turns before a seq",
                "security": secured,
                "parameters": [_id(), _query("before", {"type": "integer", "minimum": 1}),
                               _query("limit", {"type": "integer", "minimum": 1, "maximum": 200})],
                "responses": {"200": _json(TurnPageOut, "One page, oldest first"), **_errors(401, 404, 422)},
            }},
            "/export": {"get": {
                "operationId": "export", "summary": "Every conversation of the caller, one audit a line",
                "security": secured,
                "responses": {"200": {"description": "NDJSON, streamed",
                                      "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                              **_errors(401)},
            }},
            "/usage": {"get": {
                "operationId": "usage", "summary": "Spend by day, model, conversation (admin keys: by owner)",
                "security": secured,
                "parameters": [_query("since", {"type": "string", "format": "date"}),
                               _query("until", {"type": "string", "format": "date"}),
                               _query("group_by", {"type": "string",
                                                   "enum": ["day", "model", "conversation", "owner"]}),
                               _query("owner", {"type": "string"})],
                "responses": {"200": _json(UsageReport, "The report"), **_errors(401, 422)},
            }},
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": _json(Health, "Up")}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": {"description": "Ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": {"description": "Not ready", "content": {"application/json": {"schema": {"type": "object"}}}},
            }}},
        },
    }


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(build_spec())
