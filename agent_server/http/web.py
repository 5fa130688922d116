"""GET / and GET /static/{name}: the chat page, served from the package (``agent_server/web``) with a strict CSP.

The page is static (no build step, nothing from another origin): HTML, ES modules, one stylesheet, one icon. Every
response carries a Content-Security-Policy that allows only this origin (and this host's WebSocket), no inline
script or style, no eval; ``Referrer-Policy: no-referrer``; ``index.html`` is revalidated on every load
(``no-cache``), the other files may be cached for a few minutes. Files are read once and kept with their ETag.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from .. import errors

INDEX = "index.html"
STATIC_MAX_AGE = 300
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Flat names only: no folders, no dot files, so no path can leave the folder.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.(js|css|svg)")
# The Host header goes into the CSP only when it is a plain host[:port] (no spaces, quotes or semicolons).
_HOST = re.compile(r"(?:[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


_cache: dict[str, Asset | None] = {}


def _load(name: str) -> Asset | None:
    if name in _cache:
        return _cache[name]
    asset = None
    path = resources.files("agent_server").joinpath("web", name)
    suffix = "." + name.rsplit(".", 1)[-1]
    if suffix in CONTENT_TYPES and path.is_file():
        body = path.read_bytes()
        asset = Asset(body, CONTENT_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    _cache[name] = asset
    return asset


def content_security_policy(request: Request) -> str:
    """Only this origin: ``'self'`` plus the exact ws(s)://host the page connects its WebSocket to."""
    connect = ["'self'"]
    host = request.headers.get("host", "")
    if _HOST.fullmatch(host):
        connect.append(("wss://" if request.url.scheme == "https" else "ws://") + host.lower())
    return "; ".join([
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src " + " ".join(connect),
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def _headers(request: Request, asset: Asset, cache_control: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(request),
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        "Cache-Control": cache_control,
        "ETag": asset.etag,
    }


def _serve(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = _headers(request, asset, cache_control)
    given = request.headers.get("if-none-match", "")
    if asset.etag in [tag.strip().removeprefix("W/") for tag in given.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


async def index(request: Request) -> Response:
    asset = _load(INDEX)
    if asset is None:
        raise errors.NotFound("The web page is not installed with this copy of agent-server.")
    return _serve(request, asset, "no-cache")


async def static(request: Request) -> Response:
    name = request.path_params.get("path", "")
    asset = _load(name) if _NAME.fullmatch(name) else None
    if asset is None:
        raise errors.NotFound("No such file.")
    return _serve(request, asset, f"public, max-age={STATIC_MAX_AGE}")
