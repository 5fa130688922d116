"""`Refusal`: a request the real Messages API would answer with 400 `invalid_request_error`.

The rules live in several modules (request fields, message history, the script's own demands); they all
raise this one exception so the loopback fake and the in-process offline stub turn it into the same 400.
"""

from __future__ import annotations


class Refusal(Exception):
    """Raised with the message the real API would send (its wording where it is known)."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
