"""Reading request bodies: size enforced while reading, JSON parsed, shape validated."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .. import errors
from .schemas import Limits

Model = TypeVar("Model", bound=BaseModel)


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``max_bytes`` (Content-Length is not trusted)."""
    declared = request.headers.get("content-length")
    # isdigit() alone accepts "²", which int() refuses: ASCII digits only.
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise errors.RequestTooLarge(f"The request body is larger than {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise errors.RequestTooLarge(f"The request body is larger than {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes | str) -> object:
    try:
        # JSON on the wire is UTF-8 (RFC 8259 section 8.1). json.loads(bytes) would also take UTF-16/32 and let
        # encoded surrogates through ('surrogatepass'); a strict decode refuses both. UnicodeDecodeError is a
        # ValueError.
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (ValueError, RecursionError):
        raise errors.InvalidJSON("The body is not valid JSON.") from None


def describe(error: ValidationError) -> str:
    """One sentence naming each problem, without echoing the input."""
    problems = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return "Invalid request: " + "; ".join(problems) + "."


def validate(model: type[Model], data: object, limits: Limits) -> Model:
    if not isinstance(data, dict):
        raise errors.ValidationFailed("Invalid request: the body must be a JSON object.")
    try:
        return model.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        raise errors.ValidationFailed(describe(exc)) from None


async def read_model(request: Request, model: type[Model], *, max_bytes: int, limits: Limits) -> Model:
    return validate(model, parse_json(await read_limited(request, max_bytes)), limits)


async def read_json_object(request: Request, max_bytes: int) -> dict:
    data = parse_json(await read_limited(request, max_bytes))
    if not isinstance(data, dict):
        raise errors.ValidationFailed("Invalid request: the body must be a JSON object.")
    return data
