"""The baseline: the well-known tutorial shape of a Claude proxy, kept minimal on purpose.

One ``AsyncAnthropic`` made in the lifespan; conversations live in a dict (no persistence, no auth, no
limits, no audit); ``POST /agent`` calls ``messages.create`` and returns JSON; ``POST /agent/stream`` wraps
``messages.stream`` in a ``StreamingResponse`` of SSE events named like agent_server's (``start``,
``token``, ``done``); ``/agent/ws`` streams replies as JSON frames like agent_server's WebSocket. It reads
``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL`` as the SDK does.

``POST /agent/tools`` runs a whole tool-using reply with the SDK's own tool runner
(``client.beta.messages.tool_runner`` and a ``@beta_async_tool`` no-op, the async twin of ``@beta_tool``): in
memory, no persistence, every call streamed like agent_server's (``"stream": false`` for non-streamed calls), with
``thread=False`` (this SDK otherwise keeps the conversation upstream, in a server-side thread, and sends only the
new messages; agent_server and the fake send the whole history). The ``tools`` section compares it with
agent_server's reply loop.

``POST /_bench/seed`` (benchmark only) stores a conversation built from the given messages, so the
history benchmark can ask both servers for a reply on the same history.

Run: ``python -m bench.baseline_proxy --port 8001 [--workers N]`` (uvicorn, configured like agent-server:
no access log, uvicorn's WebSocket pings off).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

from anthropic import AsyncAnthropic, beta_async_tool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

MODEL = "claude-sonnet-5-5"
MAX_TOKENS = 1024


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.client = AsyncAnthropic()
    app.state.conversations = {}
    try:
        yield
    finally:
        await app.state.client.close()


def _conversation(app: Starlette, conversation_id: str | None) -> tuple[str, list[dict]]:
    conversations: dict[str, list[dict]] = app.state.conversations
    if conversation_id is None or conversation_id not in conversations:
        conversation_id = conversation_id or uuid.uuid4().hex
        conversations[conversation_id] = []
    return conversation_id, conversations[conversation_id]


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def agent(request: Request) -> JSONResponse:
    body = await request.json()
    conversation_id, history = _conversation(request.app, body.get("conversation_id"))
    messages = [*history, {"role": "user", "content": body["message"]}]
    message = await request.app.state.client.messages.create(
        model=body.get("model") or MODEL, max_tokens=body.get("max_tokens") or MAX_TOKENS, messages=messages
    )
    text = "".join(block.text for block in message.content if block.type == "text")
    history.extend([messages[-1], {"role": "assistant", "content": text}])
    return JSONResponse({
        "conversation_id": conversation_id, "content": text, "model": message.model,
        "stop_reason": message.stop_reason, "usage": message.usage.model_dump(),
    })


async def agent_stream(request: Request) -> StreamingResponse:
    body = await request.json()
    conversation_id, history = _conversation(request.app, body.get("conversation_id"))
    messages = [*history, {"role": "user", "content": body["message"]}]
    client: AsyncAnthropic = request.app.state.client

    async def events() -> AsyncIterator[str]:
        yield _sse("start", {"conversation_id": conversation_id, "model": MODEL})
        parts = []
        async with client.messages.stream(
            model=body.get("model") or MODEL, max_tokens=body.get("max_tokens") or MAX_TOKENS, messages=messages
        ) as stream:
            async for text in stream.text_stream:
                parts.append(text)
                yield _sse("token", {"text": text})
            final = await stream.get_final_message()
        history.extend([messages[-1], {"role": "assistant", "content": "".join(parts)}])
        yield _sse("done", {"conversation_id": conversation_id, "stop_reason": final.stop_reason,
                            "usage": final.usage.model_dump()})

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def agent_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    client: AsyncAnthropic = websocket.app.state.client
    conversation_id, history = _conversation(websocket.app, None)
    await websocket.send_json({"type": "session", "conversation_id": None, "turns": []})
    try:
        while True:
            frame = await websocket.receive_json()
            messages = [*history, {"role": "user", "content": frame["message"]}]
            await websocket.send_json({"type": "start", "conversation_id": conversation_id})
            parts = []
            async with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=messages) as stream:
                async for text in stream.text_stream:
                    parts.append(text)
                    await websocket.send_json({"type": "token", "text": text})
                final = await stream.get_final_message()
            history.extend([messages[-1], {"role": "assistant", "content": "".join(parts)}])
            await websocket.send_json({"type": "done", "conversation_id": conversation_id,
                                       "usage": final.usage.model_dump()})
    except WebSocketDisconnect:
        pass


@beta_async_tool
async def noop(value: str = "") -> str:
    """Does nothing and says so."""
    return "ok"


async def agent_tools(request: Request) -> JSONResponse:
    body = await request.json()
    client: AsyncAnthropic = request.app.state.client
    stream = body.get("stream", True)
    runner = client.beta.messages.tool_runner(
        model=body.get("model") or MODEL, max_tokens=body.get("max_tokens") or MAX_TOKENS, tools=[noop],
        messages=[{"role": "user", "content": body["message"]}], stream=stream, thread=False,
        max_iterations=body.get("max_steps") or 10,
    )
    steps, final = 0, None
    async for item in runner:
        steps += 1
        final = await item.get_final_message() if stream else item
    text = "".join(block.text for block in final.content if block.type == "text") if final else ""
    return JSONResponse({"content": text, "steps": steps, "stop_reason": final.stop_reason if final else None})


async def seed(request: Request) -> JSONResponse:
    body = await request.json()
    conversation_id, history = _conversation(request.app, None)
    history.extend({"role": m["role"], "content": m["content"]} for m in body["messages"])
    return JSONResponse({"conversation_id": conversation_id, "turns": len(history)})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/agent", agent, methods=["POST"]),
        Route("/agent/stream", agent_stream, methods=["POST"]),
        Route("/agent/tools", agent_tools, methods=["POST"]),
        WebSocketRoute("/agent/ws", agent_ws),
        Route("/_bench/seed", seed, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    lifespan=lifespan,
)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.baseline_proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    # The same uvicorn settings as agent-server serve, where they apply (see agent_server/cli.py).
    uvicorn.run(
        "bench.baseline_proxy:app", host=args.host, port=args.port, workers=args.workers, log_level="warning",
        access_log=False, ws_max_size=1_048_576, ws_ping_interval=None, timeout_keep_alive=30,
        server_header=False, timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
