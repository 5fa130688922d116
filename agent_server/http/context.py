"""What handlers get from the lifespan, and who is calling."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from ..runtime import Runtime
from ..errors import RateLimited
from .auth import ANONYMOUS, bearer_token, owner_for


def runtime_of(connection: HTTPConnection) -> Runtime:
    return connection.state.runtime


def client_ip(connection: HTTPConnection) -> str:
    """The caller's address; ``Fly-Client-IP`` counts only behind a trusted proxy (uvicorn already applied
    ``X-Forwarded-For`` to the client address in that case)."""
    if runtime_of(connection).settings.trust_proxy_headers:
        fly = connection.headers.get("fly-client-ip")
        if fly:
            return fly.strip()
    return connection.client.host if connection.client else "unknown"


async def count_model_call(connection: HTTPConnection, owner: str):
    """One model call against the caller's rate limit: per key, or per address when anonymous."""
    runtime = runtime_of(connection)
    identity = f"ip:{client_ip(connection)}" if owner == ANONYMOUS else f"key:{owner}"
    try:
        return await runtime.limiter.hit(identity)
    except RateLimited:
        runtime.metrics.rate_limited.labels("rate").inc()
        raise


def caller(connection: HTTPConnection) -> str:
    """The owner name of the calling key (raises 401), remembered on the scope for the access log."""
    owner = owner_for(bearer_token(connection.headers), runtime_of(connection).settings.client_keys)
    connection.scope.setdefault("agent", {})["owner"] = owner
    return owner
