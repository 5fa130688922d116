"""Settings: client keys, the loopback rules, rate-limit and DATABASE_URL validation, secrets kept out of sight."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent_server.app import AgentServerApp
from agent_server.config import Settings, get_settings, is_loopback, parse_client_keys
from tests.conftest import lifespan

SECRET_A = "alice-secret-0123456789"
SECRET_A2 = "alice-rotated-9876543210"
SECRET_B = "bob-secret-0123456789abc"
UPSTREAM = "sk-upstream-secret-value-42"


def settings(**env: object) -> Settings:
    return Settings(_env_file=None, **env)


def keys_of(s: Settings) -> list[tuple[str, str]]:
    return [(k.name, k.secret) for k in s.client_keys]


# -- AGENT_API_KEYS --------------------------------------------------------------------------------


def test_no_keys_by_default() -> None:
    assert settings().client_keys == ()


def test_name_secret_pairs() -> None:
    s = settings(AGENT_API_KEYS=f"alice:{SECRET_A},bob:{SECRET_B}")
    assert keys_of(s) == [("alice", SECRET_A), ("bob", SECRET_B)]


def test_spaces_and_empty_entries_are_tolerated() -> None:
    s = settings(AGENT_API_KEYS=f" alice : {SECRET_A} , ,bob:{SECRET_B},")
    assert keys_of(s) == [("alice", SECRET_A), ("bob", SECRET_B)]


def test_rotation_is_the_same_name_twice() -> None:
    s = settings(AGENT_API_KEYS=f"alice:{SECRET_A},alice:{SECRET_A2}")
    assert keys_of(s) == [("alice", SECRET_A), ("alice", SECRET_A2)]


def test_secret_may_contain_colons() -> None:
    assert [(k.name, k.secret) for k in parse_client_keys("svc:abc:def:0123456789xyz")] == [
        ("svc", "abc:def:0123456789xyz")
    ]


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_API_KEYS", f"alice:{SECRET_A}")
    get_settings.cache_clear()
    assert [k.name for k in get_settings().client_keys] == ["alice"]


def test_read_from_a_dot_env_file_in_the_working_directory(tmp_path, monkeypatch) -> None:
    # The autouse fixture made tmp_path the working directory.
    (tmp_path / ".env").write_text(f"AGENT_API_KEYS=bob:{SECRET_B}\nAGENT_MAX_TOKENS=77\n")
    get_settings.cache_clear()
    s = get_settings()
    assert [k.name for k in s.client_keys] == ["bob"]
    assert s.max_tokens == 77


BAD_KEYS = [
    pytest.param("alicesecretwithoutcolon0123", "alicesecretwithoutcolon0123", id="no-colon"),
    pytest.param(":nameless-secret-0123456789", "nameless-secret-0123456789", id="no-name"),
    pytest.param("alice:", None, id="no-secret"),
    pytest.param("alice:short-secret1", "short-secret1", id="short-secret"),
    pytest.param("ali ce:spaced-name-secret-0123", "spaced-name-secret-0123", id="bad-name"),
    pytest.param(f"alice:{SECRET_A},bob:{SECRET_A}", SECRET_A, id="same-secret-twice"),
    pytest.param(f"alice:{SECRET_A},carol", SECRET_A, id="one-bad-entry"),
]


@pytest.mark.parametrize(("raw", "secret"), BAD_KEYS)
def test_malformed_keys_are_refused_without_showing_the_secret(raw: str, secret: str | None) -> None:
    with pytest.raises(ValueError) as direct:
        parse_client_keys(raw)
    with pytest.raises(ValidationError) as validated:
        settings(AGENT_API_KEYS=raw)
    if secret is not None:
        assert secret not in str(direct.value)
        assert secret not in str(validated.value)
        assert secret not in repr(validated.value)


def test_fifteen_characters_is_too_short_sixteen_is_enough() -> None:
    with pytest.raises(ValueError):
        parse_client_keys("alice:" + "x" * 15)
    assert [k.secret for k in parse_client_keys("alice:" + "x" * 16)] == ["x" * 16]


def test_secrets_are_not_in_repr_or_str() -> None:
    s = settings(AGENT_API_KEYS=f"alice:{SECRET_A},bob:{SECRET_B}", ANTHROPIC_API_KEY=UPSTREAM)
    for text in (repr(s), str(s), repr(s.client_keys), str(s.client_keys), repr(s.model_dump())):
        for secret in (SECRET_A, SECRET_B, UPSTREAM):
            assert secret not in text
    assert "alice" in repr(s.client_keys)  # the name is fine to show
    assert s.anthropic_api_key is not None and s.anthropic_api_key.get_secret_value() == UPSTREAM


async def test_app_refusing_bad_keys_does_not_log_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """`uvicorn agent_server.app:app` reads the settings in its lifespan: the refusal must not carry the secret."""
    monkeypatch.setenv("AGENT_API_KEYS", "alice:short-secret1")
    get_settings.cache_clear()
    with pytest.raises(RuntimeError) as caught:
        async with lifespan(AgentServerApp()):
            pass
    assert "AGENT_API_KEYS" in str(caught.value)
    assert "short-secret1" not in str(caught.value)


# -- where the server may start --------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", "fly-local-6pn"])
def test_public_hosts(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_starts_with_no_upstream_key_and_no_client_keys(host: str) -> None:
    s = settings()
    assert s.offline_stub
    assert s.startup_problems(host) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_public_host_without_upstream_key_refuses(host: str) -> None:
    problems = settings(AGENT_API_KEYS=f"alice:{SECRET_A}").startup_problems(host)
    assert len(problems) == 1
    assert "ANTHROPIC_API_KEY" in problems[0] and host in problems[0]
    assert "\n" not in problems[0]


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_upstream_key_counts_as_missing(blank: str) -> None:
    s = settings(ANTHROPIC_API_KEY=blank, AGENT_API_KEYS=f"alice:{SECRET_A}")
    assert s.offline_stub
    assert any("ANTHROPIC_API_KEY" in p for p in s.startup_problems("0.0.0.0"))


def test_public_host_without_client_keys_refuses() -> None:
    problems = settings(ANTHROPIC_API_KEY=UPSTREAM).startup_problems("0.0.0.0")
    assert len(problems) == 1
    assert "AGENT_API_KEYS" in problems[0] and "AGENT_ALLOW_ANONYMOUS" in problems[0]
    assert UPSTREAM not in problems[0]


def test_public_host_without_either_lists_both() -> None:
    problems = settings().startup_problems("0.0.0.0")
    assert len(problems) == 2
    assert any("ANTHROPIC_API_KEY" in p for p in problems) and any("AGENT_API_KEYS" in p for p in problems)


@pytest.mark.parametrize("flag", ["1", "true", "yes"])
def test_anonymous_may_be_allowed_explicitly_on_a_public_host(flag: str) -> None:
    s = settings(ANTHROPIC_API_KEY=UPSTREAM, AGENT_ALLOW_ANONYMOUS=flag)
    assert s.allow_anonymous
    assert s.startup_problems("0.0.0.0") == []


def test_public_host_with_both_keys_starts_and_shows_no_secret() -> None:
    s = settings(ANTHROPIC_API_KEY=UPSTREAM, AGENT_API_KEYS=f"alice:{SECRET_A}")
    assert not s.offline_stub
    assert s.startup_problems("0.0.0.0") == []
    assert s.startup_problems("203.0.113.9") == []


async def test_app_refuses_to_start_on_a_public_bind_host(database_url: str) -> None:
    s = settings(DATABASE_URL=database_url, AGENT_BIND_HOST="0.0.0.0", AGENT_API_KEYS=f"alice:{SECRET_A}")
    with pytest.raises(RuntimeError) as caught:
        async with lifespan(AgentServerApp(s)):
            pass
    assert "ANTHROPIC_API_KEY" in str(caught.value)
    assert "\n" not in str(caught.value)


# -- AGENT_RATE_LIMIT ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("60/minute", (60, 1, "minute")),
        ("10/second", (10, 1, "second")),
        ("1000/hour", (1000, 1, "hour")),
        ("5/day", (5, 1, "day")),
        ("10 per minute", (10, 1, "minute")),
        ("100/minutes", (100, 1, "minute")),
        ("10/5 minutes", (10, 5, "minute")),
        (" 7 / Second ", (7, 1, "second")),
    ],
)
def test_rate_limit_formats(value: str, parts: tuple[int, int, str]) -> None:
    assert settings(AGENT_RATE_LIMIT=value).rate_limit_parts() == parts


def test_rate_limit_default() -> None:
    assert settings().rate_limit_parts() == (60, 1, "minute")


@pytest.mark.parametrize("value", ["", "60", "minute", "60/", "/minute", "60/fortnight", "-1/minute", "1.5/minute",
                                   "60/minute;drop", "sixty/minute", "60 minute"])
def test_bad_rate_limits_are_refused(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(AGENT_RATE_LIMIT=value)
    assert "AGENT_RATE_LIMIT" in str(caught.value)


# -- DATABASE_URL ----------------------------------------------------------------------------------


def test_database_url_default_is_a_file_under_data() -> None:
    s = settings()
    assert s.database_url.startswith("sqlite+aiosqlite://")
    assert s.database_path is not None and s.database_path.name.endswith(".db")
    assert s.database_path.parent.name == "data"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite+aiosqlite:///./data/x.db", "./data/x.db"),
        ("sqlite+aiosqlite:///relative.db", "relative.db"),
        ("sqlite+aiosqlite:////var/lib/agent/x.db", "/var/lib/agent/x.db"),
        ("sqlite+aiosqlite:////var/lib/agent/x.db?timeout=5", "/var/lib/agent/x.db"),
    ],
)
def test_sqlite_file_urls(url: str, path: str) -> None:
    from pathlib import Path

    s = settings(DATABASE_URL=url)
    assert s.database_url == url
    assert s.database_path == Path(path)


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
def test_in_memory_database_has_no_path(url: str) -> None:
    assert settings(DATABASE_URL=url).database_path is None


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///x.db",  # the sync driver would block the event loop
        "postgresql+asyncpg://agent:db-password-123@db/agent",
        "mysql://root@localhost/agent",
        "./data/agent.db",
        "",
    ],
)
def test_other_database_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(DATABASE_URL=url)
    assert "DATABASE_URL" in str(caught.value)
    # A database URL may hold a password: the error does not repeat it.
    assert "db-password-123" not in str(caught.value)
