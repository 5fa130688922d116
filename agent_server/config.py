"""Settings, read once from the environment (and ``.env``), validated, refusing unsafe values.

``get_settings()`` is cached; tests call ``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/agent_server.db"
DEFAULT_MODEL = "claude-sonnet-5-5"
_RATE = re.compile(r"^\s*(\d+)\s*(?:/|\s+per\s+)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$", re.I)


class ClientKey:
    """One client secret and the name that owns what it creates. The secret never appears in repr()."""

    __slots__ = ("name", "secret")

    def __init__(self, name: str, secret: str):
        self.name = name
        self.secret = secret

    def __repr__(self) -> str:
        return f"ClientKey(name={self.name!r}, secret='**********')"


def parse_client_keys(raw: str) -> tuple[ClientKey, ...]:
    """``name:secret`` pairs separated by commas; a name may appear twice (key rotation)."""
    keys: list[ClientKey] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, secret = item.partition(":")
        name, secret = name.strip(), secret.strip()
        if not sep or not name or not secret:
            raise ValueError("AGENT_API_KEYS entries must look like name:secret (the secret is not shown here)")
        if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
            raise ValueError(f"AGENT_API_KEYS: key name {name!r} may use letters, digits and _.@- only")
        if len(secret) < 16:
            raise ValueError(f"AGENT_API_KEYS: the secret for {name!r} is shorter than 16 characters")
        keys.append(ClientKey(name, secret))
    secrets = [k.secret for k in keys]
    if len(set(secrets)) != len(secrets):
        raise ValueError("AGENT_API_KEYS: the same secret is listed twice")
    return tuple(keys)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    # Errors must not echo their input: it may be AGENT_API_KEYS (client secrets) or a URL with a password,
    # and a refusal to start is logged.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    anthropic_api_key: SecretStr | None = Field(default=None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, alias="ANTHROPIC_BASE_URL")
    database_url: str = Field(default=DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    api_keys_raw: SecretStr = Field(default=SecretStr(""), alias="AGENT_API_KEYS")
    allow_anonymous: bool = Field(default=False, alias="AGENT_ALLOW_ANONYMOUS")
    default_model: str = Field(default=DEFAULT_MODEL, alias="AGENT_DEFAULT_MODEL")
    max_tokens: int = Field(default=1024, ge=1, le=128_000, alias="AGENT_MAX_TOKENS")
    max_tokens_ceiling: int | None = Field(default=None, ge=1, le=128_000, alias="AGENT_MAX_TOKENS_CEILING")
    rate_limit: str = Field(default="60/minute", alias="AGENT_RATE_LIMIT")
    rate_limit_storage: str = Field(default="memory://", alias="AGENT_RATE_LIMIT_STORAGE")
    # One application key commonly serves all of an app's users: the cap guards the upstream quota and this
    # process's memory against one runaway client, not against ordinary parallel use.
    max_concurrent_replies: int = Field(default=64, ge=1, alias="AGENT_MAX_CONCURRENT_REPLIES")
    max_ws_sessions_per_key: int = Field(default=100, ge=1, alias="AGENT_MAX_WS_SESSIONS_PER_KEY")
    header_timeout_seconds: float = Field(default=5, gt=0, alias="AGENT_HEADER_TIMEOUT_SECONDS")
    slow_client_seconds: float = Field(default=30, gt=0, alias="AGENT_SLOW_CLIENT_SECONDS")
    max_connections: int = Field(default=0, ge=0, alias="AGENT_MAX_CONNECTIONS")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(default=(), alias="AGENT_CORS_ORIGINS")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, alias="AGENT_MAX_BODY_BYTES")
    max_message_chars: int = Field(default=200_000, ge=1, alias="AGENT_MAX_MESSAGE_CHARS")
    ws_ping_seconds: float = Field(default=20, gt=0, alias="AGENT_WS_PING_SECONDS")
    sse_ping_seconds: float = Field(default=15, gt=0, alias="AGENT_SSE_PING_SECONDS")
    prices_file: Path | None = Field(default=None, alias="AGENT_PRICES_FILE")
    upstream_max_retries: int = Field(default=2, ge=0, le=10, alias="AGENT_UPSTREAM_MAX_RETRIES")
    upstream_timeout_seconds: float = Field(default=120, gt=0, alias="AGENT_UPSTREAM_TIMEOUT_SECONDS")
    shutdown_grace_seconds: float = Field(default=20, ge=0, alias="AGENT_SHUTDOWN_GRACE_SECONDS")
    trust_proxy_headers: bool = Field(default=False, alias="AGENT_TRUST_PROXY_HEADERS")
    bind_host: str = Field(default="127.0.0.1", alias="AGENT_BIND_HOST")
    log_format: str = Field(default="auto", pattern="^(auto|json|text)$", alias="AGENT_LOG_FORMAT")
    log_level: str = Field(default="info", alias="AGENT_LOG_LEVEL")
    stub_token_delay: float = Field(default=0.02, ge=0, alias="AGENT_STUB_TOKEN_DELAY")
    # The agent
    tools_file: Path | None = Field(default=None, alias="AGENT_TOOLS_FILE")
    max_tool_steps: int = Field(default=10, ge=1, le=100, alias="AGENT_MAX_TOOL_STEPS")
    tool_timeout_seconds: float = Field(default=30, gt=0, alias="AGENT_TOOL_TIMEOUT_SECONDS")
    tool_output_max_chars: int = Field(default=100_000, ge=1000, alias="AGENT_TOOL_OUTPUT_MAX_CHARS")
    # Replies outlive their connection
    on_disconnect: str = Field(default="continue", pattern="^(continue|cancel)$", alias="AGENT_ON_DISCONNECT")
    reply_events_hours: float = Field(default=24, gt=0, alias="AGENT_REPLY_EVENTS_HOURS")
    # Context and cost
    prompt_cache: str = Field(default="5m", pattern="^(off|5m|1h)$", alias="AGENT_PROMPT_CACHE")
    budgets_raw: str = Field(default="", alias="AGENT_BUDGETS")
    admin_keys: Annotated[tuple[str, ...], NoDecode] = Field(default=(), alias="AGENT_ADMIN_KEYS")
    metrics_token: SecretStr | None = Field(default=None, alias="AGENT_METRICS_TOKEN")
    # Lifecycle and operations
    retention_days: float | None = Field(default=None, gt=0, alias="AGENT_RETENTION_DAYS")
    require_existing_db: bool = Field(default=False, alias="AGENT_REQUIRE_EXISTING_DB")
    workers: int = Field(default=1, ge=1, alias="AGENT_WORKERS")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
        return value

    @field_validator("admin_keys", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        if not _RATE.match(value):
            raise ValueError("AGENT_RATE_LIMIT must look like '60/minute' (second, minute, hour or day)")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+psycopg://")):
            raise ValueError("DATABASE_URL must be a sqlite+aiosqlite:// or postgresql+psycopg:// URL")
        return value

    @field_validator("anthropic_api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_ceiling(self) -> Settings:
        if self.max_tokens_ceiling is not None and self.max_tokens_ceiling < self.max_tokens:
            raise ValueError("AGENT_MAX_TOKENS_CEILING must be at least AGENT_MAX_TOKENS")
        self._client_keys = parse_client_keys(self.api_keys_raw.get_secret_value())
        from .service.budgets import parse_budgets

        self._budgets = parse_budgets(self.budgets_raw)
        return self

    @property
    def budgets(self) -> dict:
        return self._budgets

    @property
    def cache_ttl(self) -> str | None:
        return None if self.prompt_cache == "off" else self.prompt_cache

    @property
    def client_keys(self) -> tuple[ClientKey, ...]:
        return self._client_keys

    @property
    def max_tokens_limit(self) -> int:
        return self.max_tokens_ceiling or self.max_tokens

    @property
    def offline_stub(self) -> bool:
        return self.anthropic_api_key is None

    @property
    def database_path(self) -> Path | None:
        """The SQLite file of ``DATABASE_URL`` (None for PostgreSQL or an in-memory database)."""
        if not self.database_url.startswith("sqlite"):
            return None
        rest = self.database_url.split("://", 1)[1]
        path = rest[1:] if rest.startswith("/") else rest
        path = path.split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)

    def rate_limit_parts(self) -> tuple[int, int, str]:
        """(amount, multiples, granularity), e.g. '60/minute' -> (60, 1, 'minute')."""
        match = _RATE.match(self.rate_limit)
        assert match
        return int(match.group(1)), int(match.group(2) or 1), match.group(3).lower()

    @property
    def loopback_only(self) -> bool:
        """True when this configuration may only serve loopback clients (stub upstream, or no client keys)."""
        return self.offline_stub or (not self.client_keys and not self.allow_anonymous)

    def startup_problems(self, host: str) -> list[str]:
        """Reasons to refuse to serve on ``host``; one line each."""
        problems = []
        if not is_loopback(host):
            if self.offline_stub:
                problems.append(
                    f"refusing to serve on {host}: ANTHROPIC_API_KEY is not set "
                    "(the offline stub is for loopback hosts only)"
                )
            if not self.client_keys and not self.allow_anonymous:
                problems.append(
                    f"refusing to serve on {host}: AGENT_API_KEYS is empty "
                    "(set client keys, or AGENT_ALLOW_ANONYMOUS=1 to serve anyone)"
                )
        return problems


def describe_settings_error(error: ValidationError) -> str:
    """The first problem of an invalid configuration, in one line, without the offending value."""
    first = error.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"invalid configuration: {where}: {message}" if where else f"invalid configuration: {message}"


def served_host(settings: Settings, argv: list[str]) -> str:
    """The host this process serves on: ``AGENT_BIND_HOST`` (set by ``agent-server serve``), else uvicorn's
    ``--host`` on the command line, else uvicorn's default, loopback."""
    if os.environ.get("AGENT_BIND_HOST"):
        return settings.bind_host
    for index, arg in enumerate(argv):
        if arg == "--host" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return settings.bind_host


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
