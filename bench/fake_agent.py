"""``python -m bench.fake_agent``: the fake upstream (``agent_server.fake_upstream``) with a scripted model that
asks for a tool a fixed number of times in every reply, whatever the concurrency.

Why not the fake's own script: it is one FIFO for every request, so with 16 replies running at once the tool
calls would go to whichever reply asks next, and replies would get different numbers of steps. Here the behaviour
is chosen per request, from the request itself: while the messages after the reply's prompt hold fewer than
``--tool-steps`` tool calls, the answer is one ``tool_use`` of ``--tool-name``; then a text reply of
``--n-tokens`` tokens. The same for agent_server and for the SDK's tool runner: both send the whole history.
Everything else (the wire format, the API's rules, caching, the control API) is the fake's; ``POST /_fake/script``
still wins while it has behaviours left.

Prints ``fake-upstream listening on http://HOST:PORT`` like the fake.
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import json

from starlette.requests import Request
from starlette.routing import Route

from agent_server.fake_upstream import Behaviour, FakeConfig, ToolCall, create_fake_app
from agent_server.fake_upstream.endpoint import create_message
from agent_server.fake_upstream.replies import TTFT_CLOCKS
from agent_server.fake_upstream.script import Script
from agent_server.fake_upstream.server import ReadyServer

_CALLS_SO_FAR: contextvars.ContextVar[int | None] = contextvars.ContextVar("calls_so_far", default=None)


def tool_calls_since_prompt(body: object) -> int | None:
    """Assistant messages with a ``tool_use`` after the last user message that is not only tool results."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    count = 0
    for message in reversed(body["messages"]):
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text"}]
        if message.get("role") == "user":
            if any(isinstance(block, dict) and block.get("type") != "tool_result" for block in blocks):
                return count
        elif any(isinstance(block, dict) and block.get("type") == "tool_use" for block in blocks):
            count += 1
    return count


class StepScript(Script):
    """The fake's script, and when it is empty: a tool call until the reply has made ``steps`` of them."""

    def __init__(self, *, steps: int, tool: str) -> None:
        super().__init__()
        self.steps = steps
        self.tool_call = Behaviour(tool_calls=[ToolCall(name=tool, input={"value": "bench"})])
        self.answer = Behaviour()

    def next(self) -> Behaviour:
        if self.pending():
            return super().next()
        calls = _CALLS_SO_FAR.get()
        if calls is not None and calls < self.steps:
            return self.tool_call
        return self.answer


def build_app(config: FakeConfig, *, steps: int, tool: str):  # type: ignore[no-untyped-def]
    app = create_fake_app(config)
    app.state.fake.script = StepScript(steps=steps, tool=tool)

    async def messages(request: Request):  # type: ignore[no-untyped-def]
        raw = await request.body()  # kept on the request: create_message reads the same bytes
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        _CALLS_SO_FAR.set(tool_calls_since_prompt(body))
        return await create_message(request)

    app.router.routes.insert(0, Route("/v1/messages", messages, methods=["POST"]))
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.fake_agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "localhost"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--n-tokens", type=int, default=None)
    parser.add_argument("--ttft-from", choices=TTFT_CLOCKS, default="accepted")
    parser.add_argument("--tool-steps", type=int, default=4, help="tool calls per reply before its text (default 4)")
    parser.add_argument("--tool-name", default="noop")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    config = FakeConfig(ttft=args.ttft, token_delay=args.token_delay, n_tokens=args.n_tokens,
                        ttft_from=args.ttft_from)
    app = build_app(config, steps=args.tool_steps, tool=args.tool_name)

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
