"""``python -m bench.faults_upstream``: the fake upstream (``agent_server.fake_upstream``) with garbage chosen per
request, for the fault run (``bench/faults.py``).

Why not the fake's own script: it is one FIFO for every request, so a scripted fault goes to whichever reply asks
next — the quiet tenant's as likely as the victim's. Here a request meets garbage only when the last user message
of its body carries a marker ``[fault:<name>]`` (``FAULTS`` below lists the names; each is a plain ``Behaviour`` of
the fake); a ``*_once`` fault applies to the first attempt of that message only (the marker ``[m:<nonce>]`` tells
attempts of one message apart), so the SDK's or the server's retry then gets a normal reply. Everything else — the
wire format, the API's rules, the control API, the request log — is the fake's; ``POST /_fake/script`` still wins
while it has behaviours left.

One more control route, ``GET /_faults/requests``: every attempt the fake received, without its body —
``{"id", "status", "retry_count", "stream", "nonce", "fault"}`` — so that the fault run can match each upstream
request id with the ledger without pulling thousands of bodies.

Prints ``fake-upstream listening on http://HOST:PORT`` like the fake.
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agent_server.fake_upstream import Behaviour, FakeConfig, create_fake_app
from agent_server.fake_upstream.endpoint import create_message
from agent_server.fake_upstream.script import Script
from agent_server.fake_upstream.server import ReadyServer

# name: (behaviour, first attempt only). What agent-server should make of each is in bench/faults.py (EXPECTED).
FAULTS: dict[str, tuple[dict[str, Any], bool]] = {
    "usage_negative": ({"usage": {"output_tokens": -7}}, False),
    "usage_string": ({"usage": {"input_tokens": "many"}}, False),
    "usage_huge": ({"usage": {"output_tokens": 10**30}}, False),
    "gzip_garbage": ({"gzip_garbage": True}, False),
    "text_plain": ({"content_type": "text/plain", "raw_body": "<html>502 bad gateway</html>"}, False),
    "json_not_sse": ({"content_type": "application/json", "raw_body": '{"type": "message", "oops": '}, False),
    "unknown_event": ({"unknown_event_after_tokens": 2}, False),
    "error_event": ({"error_after_tokens": 3, "error_type": "api_error"}, False),
    "overloaded_event_once": ({"error_after_tokens": 0, "error_type": "overloaded_error"}, True),
    "drop_stream": ({"drop_after_tokens": 3}, False),
    "end_early": ({"end_after_tokens": 3}, False),
    "status_500_once": ({"status": 500}, True),
    "status_500": ({"status": 500}, False),
    "status_529": ({"status": 529}, False),
    "status_400": ({"status": 400}, False),
    "hang": ({"hang": True}, False),
    # Not garbage: a long, slow reply (40 tokens 0.1 s apart), so that a worker killed mid-reply has one to lose.
    "long": ({"n_tokens": 40, "token_delay": 0.1}, False),
}
_BEHAVIOURS = {name: Behaviour.model_validate(spec) for name, (spec, _) in FAULTS.items()}
_ONCE = {name for name, (_, once) in FAULTS.items() if once}
FAULT_MARK = re.compile(r"\[fault:([a-z0-9_]+)\]")
NONCE_MARK = re.compile(r"\[m:([A-Za-z0-9_-]+)\]")
_CHOSEN: contextvars.ContextVar[Behaviour | None] = contextvars.ContextVar("fault_behaviour", default=None)


def last_user_text(body: object) -> str | None:
    """The text of the last user message that is not only tool results (the reply's prompt)."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    for message in reversed(body["messages"]):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [block.get("text", "") for block in content
                     if isinstance(block, dict) and block.get("type") == "text"]
            if texts:
                return "".join(texts)
    return None


def marks(text: str | None) -> tuple[str | None, str | None]:
    """``(nonce, fault)`` named in a prompt's text."""
    if not text:
        return None, None
    nonce, fault = NONCE_MARK.search(text), FAULT_MARK.search(text)
    return (nonce.group(1) if nonce else None), (fault.group(1) if fault else None)


class FaultScript(Script):
    """The fake's script, and when it is empty: the behaviour the request's own marker chose (else a normal one)."""

    def next(self) -> Behaviour:
        if self.pending():
            return super().next()
        return _CHOSEN.get() or Behaviour()


def build_app(config: FakeConfig):  # type: ignore[no-untyped-def]
    app = create_fake_app(config)
    fake = app.state.fake
    fake.script = FaultScript()
    seen: dict[str, int] = {}  # nonce -> attempts so far

    async def messages(request: Request):  # type: ignore[no-untyped-def]
        raw = await request.body()  # kept on the request: create_message reads the same bytes
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        nonce, fault = marks(last_user_text(body))
        behaviour = None
        if fault in _BEHAVIOURS:
            attempt = seen.get(nonce or "", 0) if nonce else 0
            if nonce:
                seen[nonce] = attempt + 1
            if fault not in _ONCE or attempt == 0:
                behaviour = _BEHAVIOURS[fault]
        _CHOSEN.set(behaviour)
        return await create_message(request)

    async def light_requests(request: Request) -> JSONResponse:
        rows = []
        for item in fake.recorder.requests_json():
            nonce, fault = marks(last_user_text(item.pop("body", None)))
            rows.append({"id": item["id"], "path": item["path"], "status": item.get("status"),
                         "retry_count": item.get("retry_count"), "stream": item.get("stream"),
                         "nonce": nonce, "fault": fault})
        return JSONResponse({"requests": rows})

    app.router.routes.insert(0, Route("/v1/messages", messages, methods=["POST"]))
    app.router.routes.insert(0, Route("/_faults/requests", light_requests, methods=["GET"]))
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.faults_upstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "localhost"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--n-tokens", type=int, default=None)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    app = build_app(FakeConfig(ttft=args.ttft, token_delay=args.token_delay, n_tokens=args.n_tokens))

    def announce(port: int) -> None:
        gc.collect()
        gc.freeze()  # as the fake does: start-up objects stay out of later full collections
        print(f"fake-upstream listening on http://{args.host}:{port}", flush=True)

    server = ReadyServer(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, log_config=None,
                                        access_log=False, lifespan="on", timeout_graceful_shutdown=1), announce)
    server.run()
    raise SystemExit(0 if server.started else 1)


if __name__ == "__main__":
    main()
