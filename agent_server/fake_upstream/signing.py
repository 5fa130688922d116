"""Signatures for thinking blocks and opaque data for redacted thinking, both checkable later.

The real API refuses a thinking block whose text or signature was altered, so a client must send its
assistant turns back exactly as received. The fake reproduces that with an HMAC-SHA256 under a secret of
its own (a fresh one per fake instance, so a signature from one fake never passes in another).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets


class Signer:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def _mac(self, purpose: bytes, payload: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + payload, hashlib.sha256).digest()

    def sign(self, thinking: str) -> str:
        """The `signature` of a thinking block: base64 of the HMAC of its text."""
        return base64.b64encode(self._mac(b"thinking", thinking.encode())).decode()

    def verify(self, thinking: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(thinking), signature)

    def redacted_data(self) -> str:
        """Opaque `data` for a redacted_thinking block: a random nonce and its HMAC, base64."""
        nonce = secrets.token_bytes(24)
        return base64.b64encode(nonce + self._mac(b"redacted", nonce)).decode()

    def verify_redacted(self, data: str) -> bool:
        try:
            raw = base64.b64decode(data.encode(), validate=True)
        except (binascii.Error, ValueError):
            return False
        nonce, mac = raw[:-32], raw[-32:]
        return len(nonce) > 0 and hmac.compare_digest(self._mac(b"redacted", nonce), mac)
