"""Client keys: who is calling. The secret is compared in constant time and never stored or logged."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

from .. import errors
from ..config import ClientKey

ANONYMOUS = "anonymous"


def bearer_token(headers: Headers) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def owner_for(token: str | None, keys: tuple[ClientKey, ...]) -> str:
    """The name of the key ``token`` matches; ``anonymous`` when no keys are configured."""
    if not keys:
        return ANONYMOUS
    if token is None:
        raise errors.AuthenticationFailed("Missing client key: send 'Authorization: Bearer <key>'.")
    given = token.encode()
    owner = None
    # Compare against every key, so the time taken does not tell which one (or whether any) matched.
    for key in keys:
        if hmac.compare_digest(given, key.secret.encode()) and owner is None:
            owner = key.name
    if owner is None:
        raise errors.AuthenticationFailed("Unknown client key.")
    return owner
