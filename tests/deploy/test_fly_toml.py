"""fly.toml: valid for Fly, and consistent with the image and the server it deploys.

The schema is SchemaStore's ``src/schemas/json/fly.json`` (draft-07, Apache-2.0), vendored unchanged as
``fly.schema.json`` from SchemaStore/schemastore at commit 01d07831374870e88ccc48058d038d60d2c2af7a
(sha256 3bdd9b4e234315324bbe39251e5776d3b00bd7c529e6c490eb4855f7dfffcd3b). It lags Fly's configuration
reference; where they disagree the docs win, and the exception is listed in ``SCHEMA_EXCEPTIONS`` below.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema

from agent_server.config import Settings
from agent_server.fake_upstream import FakeUpstream
from tests.conftest import app_client, make_settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).with_name("fly.schema.json")

# (path in fly.toml, failing schema keyword) -> why the docs win. Each entry must still be needed: when
# a newer vendored schema accepts the value, the test below asks for the entry to be removed.
SCHEMA_EXCEPTIONS: dict[tuple[tuple[str, ...], str], str] = {
    (("http_service", "auto_stop_machines"), "type"): (
        "the schema types it as a boolean (true/false); Fly's configuration reference takes "
        '"off" | "stop" | "suspend" (booleans are the legacy spelling), and "off" says what we mean'
    ),
}
AUTO_STOP_VALUES = {"off", "stop", "suspend", True, False}  # Fly's docs


def fly() -> dict[str, Any]:
    return tomllib.loads((ROOT / "fly.toml").read_text())


def seconds(value: int | str) -> float:
    """Fly durations: a number of seconds, or a string such as "40s", "1m", "500ms"."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value.strip())
    assert match, f"not a duration: {value!r}"
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * scale


def dockerfile_env(name: str) -> str:
    """The value of ``ENV name=value`` in the final stage of the Dockerfile."""
    final_stage = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    match = re.search(rf"\b{name}=(\S+)", final_stage)
    assert match, f"the Dockerfile's final stage sets no {name}"
    return match.group(1)


def test_fly_toml_matches_schemastore_schema_except_where_fly_docs_disagree() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    config = fly()
    seen = set()
    unexpected = []
    for error in jsonschema.Draft7Validator(schema).iter_errors(config):
        key = (tuple(str(p) for p in error.absolute_path), str(error.validator))
        if key in SCHEMA_EXCEPTIONS:
            seen.add(key)
        else:
            unexpected.append(f"{'.'.join(key[0]) or '<root>'}: {error.message}")
    assert not unexpected, "fly.toml does not match the schema:\n" + "\n".join(unexpected)
    assert seen == set(SCHEMA_EXCEPTIONS), f"schema exceptions no longer needed: {set(SCHEMA_EXCEPTIONS) - seen}"
    assert config["http_service"]["auto_stop_machines"] in AUTO_STOP_VALUES


def test_migrations_run_on_the_machine_not_in_a_release_command() -> None:
    # release_command runs on a temporary machine without the volume: it would migrate a throwaway file.
    config = fly()
    assert "release_command" not in config.get("deploy", {})
    assert "release_command" not in config


def test_deploy_strategy_is_rolling_because_of_the_volume() -> None:
    # Fly refuses canary and bluegreen for an app with a volume.
    assert fly()["deploy"]["strategy"] == "rolling"


def test_volume_is_mounted_on_the_database_folder() -> None:
    config = fly()
    mount = config["mounts"]
    assert mount["source"] and mount["destination"].startswith("/")
    urls = (("fly.toml [env]", config["env"]["DATABASE_URL"]), ("Dockerfile", dockerfile_env("DATABASE_URL")))
    for where, url in urls:
        database = Settings(_env_file=None, DATABASE_URL=url).database_path
        assert database is not None and database.is_absolute(), f"{where}: DATABASE_URL must name an absolute file"
        assert database.parent == Path(mount["destination"]), f"{where}: {database} is not on the volume"


def test_internal_port_is_the_port_the_image_serves_on() -> None:
    internal_port = fly()["http_service"]["internal_port"]
    entrypoint = (ROOT / "deploy" / "entrypoint.sh").read_text()
    default = re.search(r"^port=\$\{PORT:-(\d+)\}$", entrypoint, re.M)
    assert default, "deploy/entrypoint.sh no longer reads its port as port=${PORT:-N}"
    assert '--port "$port"' in entrypoint and "--port $port" in entrypoint  # plain and under Litestream
    assert int(dockerfile_env("PORT")) == internal_port
    assert int(default.group(1)) == internal_port
    assert re.search(rf"^EXPOSE {internal_port}$", (ROOT / "Dockerfile").read_text(), re.M)
    assert int(fly()["env"].get("PORT", internal_port)) == internal_port


def test_kill_timeout_covers_the_graceful_shutdown() -> None:
    config = fly()
    grace = float(config["env"].get("AGENT_SHUTDOWN_GRACE_SECONDS", Settings(_env_file=None).shutdown_grace_seconds))
    uvicorn_graceful = grace + 5  # agent_server.cli: timeout_graceful_shutdown = grace + 5
    assert config["kill_signal"] == "SIGTERM"  # the signal the server drains on (Fly's default is SIGINT)
    assert uvicorn_graceful <= seconds(config["kill_timeout"]) <= 300  # Fly's maximum


def test_proxy_settings_suit_long_lived_streams() -> None:
    service = fly()["http_service"]
    defaults = Settings(_env_file=None)
    concurrency = service["concurrency"]
    assert concurrency["type"] == "requests"
    assert 20 < concurrency["soft_limit"] <= concurrency["hard_limit"]  # 20/25 are Fly's defaults
    idle_timeout = seconds(service["http_options"]["idle_timeout"])
    # Heartbeats must come well inside the proxy's idle timeout; POST /agent is silent for a whole reply.
    assert idle_timeout >= 2 * max(defaults.sse_ping_seconds, defaults.ws_ping_seconds)
    assert idle_timeout >= defaults.upstream_timeout_seconds
    # One machine holds the volume: it must stay up.
    assert service["min_machines_running"] >= 1
    assert service["auto_stop_machines"] in ("off", False) or service["min_machines_running"] >= 1


async def test_health_check_paths_answer_200_without_auth(database_url: str, fake: FakeUpstream) -> None:
    checks = fly()["http_service"]["checks"]
    assert checks, "fly.toml has no [[http_service.checks]]"
    # Client keys are configured, as on Fly: the check sends none and must still get 200.
    async with app_client(make_settings(database_url, fake)) as client:
        for check in checks:
            assert check.get("method", "GET").upper() == "GET"
            assert check.get("protocol", "http") == "http"  # the machine serves plain HTTP on internal_port
            response = await client.get(check["path"])
            assert response.status_code == 200, f"{check['path']} -> {response.status_code}: {response.text}"
