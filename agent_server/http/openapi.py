"""``GET /openapi.json``: the HTTP routes described from the pydantic models that validate requests.

Response models here document the JSON that ``serialize`` builds; the schemathesis run in CI checks every
real response against them, so the description cannot drift from the behaviour unnoticed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import __version__
from .schemas import AgentRequest


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


class StreamStart(BaseModel):
    conversation_id: str
    model: str


class StreamToken(BaseModel):
    text: str


class StreamDone(BaseModel):
    """The POST /agent response without ``content``."""

    conversation_id: str
    turn_id: str
    model: str
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    usage: UsageOut
    estimated_cost_usd: float | None


class AgentResponse(StreamDone):
    """The whole reply: the stream's ``done`` plus the text."""

    content: str


class TurnOut(BaseModel):
    id: str
    seq: int
    role: Literal["user", "assistant"]
    content: str
    status: Literal["complete", "incomplete", "failed"]
    created_at: str


class CacheCreationOut(BaseModel):
    ephemeral_5m_input_tokens: int | None
    ephemeral_1h_input_tokens: int | None


class RequestOut(BaseModel):
    id: str
    turn_id: str | None
    prompt_turn_id: str
    route: Literal["agent", "stream", "ws"]
    model: str
    upstream_request_id: str | None
    status: Literal["ok", "error", "cancelled"]
    error_type: str | None
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation: CacheCreationOut
    cache_read_input_tokens: int
    cost_usd: float | None
    latency_ms: int | None
    ttft_ms: int | None
    attempts: int
    created_at: str


class TotalsOut(BaseModel):
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float | None


class ConversationOut(BaseModel):
    id: str
    owner: str
    model: str
    system: str | None
    created_at: str
    updated_at: str
    turns: list[TurnOut]
    requests: list[RequestOut]
    totals: TotalsOut


class ConversationSummary(BaseModel):
    id: str
    model: str
    created_at: str
    updated_at: str
    totals: TotalsOut


class ConversationList(BaseModel):
    conversations: list[ConversationSummary]
    next_cursor: str | None


class Health(BaseModel):
    status: str
    offline_stub: bool
    version: str


MODELS: list[type[BaseModel]] = [
    AgentRequest, AgentResponse, ErrorEnvelope, ConversationOut, ConversationList, Health,
    StreamStart, StreamToken, StreamDone,
]


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _event(name: str, model: type[BaseModel]) -> dict:
    """One Server-Sent Event: its name, and its data line, which is JSON of ``model``.

    Before OpenAPI 3.2 (``itemSchema``), the ``schema`` of ``text/event-stream`` describes each event, the
    convention schemathesis checks streams against.
    """
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref(model)},
        },
    }


def _errors(*statuses: int) -> dict:
    return {str(s): _json(ErrorEnvelope, "Error envelope") for s in statuses}


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
                "operationId": "postAgent", "summary": "Ask for a whole reply", "security": secured,
                "requestBody": body, "responses": {"200": _json(AgentResponse, "The reply"), **model_call_errors},
            }},
            "/agent/stream": {"post": {
                "operationId": "postAgentStream", "summary": "Ask for a reply as Server-Sent Events",
                "security": secured, "requestBody": body,
                "responses": {
                    "200": {"description": "start, token..., then done or error",
                            "content": {"text/event-stream": {"schema": {"oneOf": [
                                _event("start", StreamStart), _event("token", StreamToken),
                                _event("done", StreamDone), _event("error", ErrorEnvelope),
                            ]}}}},
                    **model_call_errors,
                },
            }},
            "/conversations": {"get": {
                "operationId": "listConversations", "summary": "The caller's conversations, newest first",
                "security": secured,
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                    {"name": "before", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _json(ConversationList, "One page"), **_errors(401, 422)},
            }},
            "/conversations/{id}": {"get": {
                "operationId": "getConversation", "summary": "Audit: every turn and upstream call",
                "security": secured,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(ConversationOut, "The conversation"), **_errors(401, 404)},
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
