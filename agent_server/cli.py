"""``agent-server serve | migrate | chat``."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from . import __version__


def _settings_or_exit():
    from .config import describe_settings_error, get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        sys.exit(f"agent-server: {describe_settings_error(exc)}")


def cmd_migrate(args: argparse.Namespace) -> int:
    from .db.migrations import upgrade_to_head

    settings = _settings_or_exit()
    upgrade_to_head(settings.database_url)
    print("agent-server: database schema is at head", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .config import get_settings
    from .db.migrations import upgrade_to_head
    from .http_protocol import LimitedHttpToolsProtocol
    from .server import run

    # Workers re-read the settings: tell them which host they are bound to (the loopback rules depend on it).
    os.environ["AGENT_BIND_HOST"] = args.host
    get_settings.cache_clear()
    settings = _settings_or_exit()
    from .logs import configure_logging

    configure_logging(settings)
    problems = settings.startup_problems(args.host)
    if problems:
        sys.exit(f"agent-server: {problems[0]}")
    if not args.no_migrate:
        upgrade_to_head(settings.database_url)
    config = uvicorn.Config(
        "agent_server.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        proxy_headers=settings.trust_proxy_headers,
        forwarded_allow_ips="*" if settings.trust_proxy_headers else None,
        ws_max_size=settings.max_body_bytes,
        ws_ping_interval=None,
        timeout_graceful_shutdown=max(int(settings.shutdown_grace_seconds) + 5, 1),
        timeout_keep_alive=30,
        server_header=False,
        http=LimitedHttpToolsProtocol,
    )
    return 0 if run(config) else 1


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    return run_chat(url=args.url, conversation_id=args.conversation, token=args.token, new=args.new)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent-server", description="A self-hosted backend for Claude agents.")
    parser.add_argument("--version", action="version", version=f"agent-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="upgrade the schema to head, then serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema first")
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser("migrate", help="alembic upgrade head on DATABASE_URL")
    migrate.set_defaults(func=cmd_migrate)

    chat = commands.add_parser("chat", help="chat with the server in this terminal over the WebSocket")
    chat.add_argument("--url", default="ws://127.0.0.1:8000/agent/ws")
    chat.add_argument("--conversation", default=None, help="resume this conversation id")
    chat.add_argument("--new", action="store_true", help="start a new conversation instead of resuming the last")
    chat.add_argument("--token", default=os.environ.get("AGENT_TOKEN"), help="client key (or AGENT_TOKEN)")
    chat.set_defaults(func=cmd_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
