"""What handlers get from the lifespan, and who is calling."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from ..runtime import Runtime
from .auth import bearer_token, owner_for


def runtime_of(connection: HTTPConnection) -> Runtime:
    return connection.state.runtime


def caller(connection: HTTPConnection) -> str:
    """The owner name of the calling key (raises 401), remembered on the scope for the access log."""
    owner = owner_for(bearer_token(connection.headers), runtime_of(connection).settings.client_keys)
    connection.scope.setdefault("agent", {})["owner"] = owner
    return owner
