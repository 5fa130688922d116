"""The service's errors and their envelope.

Every failure a client can see is an ``AgentError`` subclass carrying its HTTP status and API type::

    AgentError                        500 api_error
    ├── InvalidJSON                   400 invalid_request_error   (body is not JSON)
    ├── UpstreamInvalidRequest        400 invalid_request_error   (upstream refused the request)
    ├── AuthenticationFailed          401 authentication_error
    ├── Forbidden                     403 permission_error        (a key without the right: metrics, others' usage)
    ├── NotFound                      404 not_found_error
    ├── Conflict                      409 conflict_error
    ├── RequestTooLarge               413 request_too_large
    ├── ValidationFailed              422 invalid_request_error
    ├── RateLimited                   429 rate_limit_error        (this server's limit)
    ├── UpstreamFailed                502 upstream_error
    ├── UpstreamOverloaded            503 overloaded_error        (upstream 529/429 after retries)
    ├── UpstreamTimeout               504 timeout_error
    ├── StorageUnavailable            503 storage_error           (the database cannot store: full, read-only, gone)
    └── ShuttingDown                  503 shutdown                (the server stopped mid-reply)

The envelope is ``{"error": {"type": ..., "message": ...}}``; messages are written for people and never
carry tracebacks, SQL or secrets.
"""

from __future__ import annotations

import re
from typing import Any

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class AgentError(Exception):
    status = 500
    type = "api_error"

    def __init__(self, message: str, *, retry_after: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.extra_headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        return {"error": error}

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class InvalidJSON(AgentError):
    status, type = 400, "invalid_request_error"


class UpstreamInvalidRequest(AgentError):
    status, type = 400, "invalid_request_error"


class AuthenticationFailed(AgentError):
    status, type = 401, "authentication_error"


class Forbidden(AgentError):
    status, type = 403, "permission_error"


class NotFound(AgentError):
    status, type = 404, "not_found_error"


class Conflict(AgentError):
    status, type = 409, "conflict_error"


class RequestTooLarge(AgentError):
    status, type = 413, "request_too_large"


class ValidationFailed(AgentError):
    status, type = 422, "invalid_request_error"


class RateLimited(AgentError):
    status, type = 429, "rate_limit_error"


class UpstreamFailed(AgentError):
    status, type = 502, "upstream_error"


class UpstreamOverloaded(AgentError):
    status, type = 503, "overloaded_error"


class UpstreamTimeout(AgentError):
    status, type = 504, "timeout_error"


class StorageUnavailable(AgentError):
    status, type = 503, "storage_error"

    def __init__(self, message: str = "The database cannot store this right now; try again shortly.", **kwargs):
        kwargs.setdefault("retry_after", 5)
        super().__init__(message, **kwargs)


class ShuttingDown(AgentError):
    status, type = 503, "shutdown"


class InternalError(AgentError):
    """A bug: the message names the request id under which the traceback was logged."""

    def __init__(self, request_id: str):
        super().__init__(f"Internal error; it was logged under request id {request_id}.")


def conversation_not_found(conversation_id: str) -> NotFound:
    # The id is echoed only when it looks like one of ours, so a client cannot make us reflect arbitrary text.
    shown = conversation_id if _SAFE_ID.fullmatch(conversation_id) else "given"
    return NotFound(f"Conversation {shown} was not found.")
