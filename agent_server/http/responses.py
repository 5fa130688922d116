"""The JSON response every route answers with: the API's own encoding (``jsonenc``)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from ..jsonenc import dumps


class PlainJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")
