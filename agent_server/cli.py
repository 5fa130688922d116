"""``agent-server serve | migrate | chat | tools | copy``: every command says what it does in ``--help``, with its
defaults, and fails in one line (never a traceback) on a problem an operator can fix."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from . import __version__


def _settings_or_exit():  # type: ignore[no-untyped-def]
    from .config import describe_settings_error, get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        sys.exit(f"agent-server: {describe_settings_error(exc)}")


def _shown(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        from pathlib import Path

        return str(Path(url.database or "").resolve()) if url.database else "an in-memory SQLite database"
    return url.render_as_string(hide_password=True)


def _migrate_or_exit(settings) -> None:  # type: ignore[no-untyped-def]
    from .db.migrations import MigrationRefused, migrate

    try:
        before, after = migrate(settings.database_url, require_existing=settings.require_existing_db)
    except MigrationRefused as exc:
        sys.exit(f"agent-server: {exc}")
    if before != after:
        print(f"agent-server: migrated {_shown(settings.database_url)} from {before or 'an empty database'} to "
              f"{after}", file=sys.stderr)
    else:
        print(f"agent-server: {_shown(settings.database_url)} is at {after} (head): nothing to migrate",
              file=sys.stderr)


def cmd_migrate(args: argparse.Namespace) -> int:
    _migrate_or_exit(_settings_or_exit())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .config import get_settings
    from .http_protocol import LimitedHttpToolsProtocol, LimitedWebSocketsProtocol
    from .logs import configure_logging
    from .server import run

    # Workers re-read the settings: tell them which host they are bound to (the loopback rules depend on it),
    # and how many processes share the database (the processes of one SQLite file talk through it): the workers,
    # or more when AGENT_WORKERS says so (several `serve` processes on one SQLite file).
    os.environ["AGENT_BIND_HOST"] = args.host
    shared = os.environ.get("AGENT_WORKERS", "").strip()
    os.environ["AGENT_WORKERS"] = str(max(args.workers, int(shared)) if shared.isdigit() else args.workers)
    get_settings.cache_clear()
    settings = _settings_or_exit()
    configure_logging(settings)
    problems = settings.startup_problems(args.host)
    if problems:
        sys.exit(f"agent-server: {problems[0]}")
    if not args.no_migrate:
        _migrate_or_exit(settings)
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
        ws=LimitedWebSocketsProtocol,
    )
    return 0 if run(config) else 1


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    return run_chat(url=args.url, conversation_id=args.conversation, token=args.token, new=args.new)


def cmd_tools(args: argparse.Namespace) -> int:
    from .tools.check import check_tools

    return check_tools(_settings_or_exit())


def cmd_copy(args: argparse.Namespace) -> int:
    from .db.copy import run_copy

    return run_copy(args.source, args.target, batch=args.batch)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    from .chat import add_chat_arguments

    parser = argparse.ArgumentParser(
        prog="agent-server", formatter_class=_Formatter,
        description="A self-hosted backend for Claude agents. Configuration comes from the environment or a .env "
                    "file in the working directory (see .env.example and docs/configuration.md).")
    parser.add_argument("--version", action="version", version=f"agent-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    serve = commands.add_parser(
        "serve", help="upgrade the schema to head, then serve", formatter_class=_Formatter,
        description="Upgrade the database schema to head (unless --no-migrate), then serve the API and the web page "
                    "with uvicorn. SIGTERM drains: replies in flight get AGENT_SHUTDOWN_GRACE_SECONDS to finish.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (a public one needs keys)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind")
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the database")
    serve.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema first")
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser(
        "migrate", help="upgrade the schema of DATABASE_URL to head", formatter_class=_Formatter,
        description="Run the Alembic migrations on DATABASE_URL (SQLite or PostgreSQL) up to head, from any "
                    "directory; says which database it migrated, from which revision to which.")
    migrate.set_defaults(func=cmd_migrate)

    chat = commands.add_parser(
        "chat", help="chat with the server in this terminal", formatter_class=_Formatter,
        description="A terminal client over the WebSocket: /help lists its commands; Ctrl-C cancels a reply, or "
                    "quits at the prompt.")
    add_chat_arguments(chat)
    chat.set_defaults(func=cmd_chat)

    tools = commands.add_parser(
        "tools", help="list the configured tools and check each one", formatter_class=_Formatter,
        description="List the tools of AGENT_TOOLS_FILE (name, kind, source, approval), import every Python tool "
                    "and connect to every MCP server; exit 1 naming the first that fails.")
    tools.set_defaults(func=cmd_tools)

    copy = commands.add_parser(
        "copy", help="copy every conversation from one database to another", formatter_class=_Formatter,
        description="Copy conversations, turns, calls, replies, tool runs and events from one database to another "
                    "(SQLite to PostgreSQL is the use), in batches; refuses a target that holds data; prints counts "
                    "and cost totals of both sides and exits 1 if they differ. The target is migrated first.")
    copy.add_argument("--from", dest="source", required=True, help="source DATABASE_URL")
    copy.add_argument("--to", dest="target", required=True, help="target DATABASE_URL")
    copy.add_argument("--batch", type=int, default=1000, help="rows per batch")
    copy.set_defaults(func=cmd_copy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
