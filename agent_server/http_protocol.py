"""uvicorn's httptools protocol with a bound on request headers.

httptools (what ``uvicorn[standard]`` runs) has no limit of its own on the size of a request head: a client
could send megabytes of headers, or never finish them, and the server would buffer it all. This protocol
counts the bytes received while a request head is incomplete and answers 431 past ``MAX_HEADER_BYTES``.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024

_RESPONSE_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\nconnection: close\r\ncontent-length: 94\r\n\r\n"
    b'{"error":{"type":"request_too_large","message":"The request headers are larger than 64 KiB."}}'
)
assert len(_RESPONSE_431.split(b"\r\n\r\n", 1)[1]) == 94


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    _head_bytes = 0
    _in_head = True

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BYTES:
                self.logger.warning("request headers over %d bytes: refused with 431", MAX_HEADER_BYTES)
                self.transport.write(_RESPONSE_431)
                self.transport.close()
                self._in_head = False
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0
