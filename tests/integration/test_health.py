"""Liveness and readiness, without auth; refusing to start on a schema that is not at head."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

import agent_server
from agent_server.app import AgentServerApp
from tests.conftest import app_client, lifespan, make_settings, run_sql


async def get_without_auth(client: httpx.AsyncClient, path: str) -> httpx.Response:
    request = client.build_request("GET", path)
    request.headers.pop("authorization", None)
    return await client.send(request)


def database_file(database_url: str) -> Path:
    return Path(make_url(database_url).database or "")


async def test_healthz_with_an_upstream_key(client: httpx.AsyncClient) -> None:
    response = await get_without_auth(client, "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "offline_stub": False, "version": agent_server.__version__}


async def test_healthz_reports_the_offline_stub(database_url: str) -> None:
    async with app_client(make_settings(database_url, None)) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body == {"status": "ok", "offline_stub": True, "version": agent_server.__version__}


async def test_readyz_when_migrated(client: httpx.AsyncClient) -> None:
    response = await get_without_auth(client, "/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


async def test_readyz_503_when_the_schema_leaves_head(client: httpx.AsyncClient, database_url: str) -> None:
    run_sql(database_url, "DELETE FROM alembic_version")
    response = await get_without_auth(client, "/readyz")
    health = await get_without_auth(client, "/healthz")
    assert response.status_code == 503
    assert "migrate" in response.text
    # Liveness is not readiness: the process is still up.
    assert health.status_code == 200


async def test_app_refuses_to_start_on_an_unmigrated_database(tmp_path: Path, fake) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh' / 'agent.db'}"
    app = AgentServerApp(make_settings(url, fake))
    with pytest.raises(RuntimeError) as caught:
        async with lifespan(app):
            pass
    message = str(caught.value)
    assert "migrate" in message
    assert "\n" not in message.strip()
    assert "Traceback" not in message


async def test_app_refuses_to_start_when_the_schema_is_behind(database_url: str, fake) -> None:
    run_sql(database_url, "UPDATE alembic_version SET version_num = '0000'")
    with pytest.raises(RuntimeError) as caught:
        async with lifespan(AgentServerApp(make_settings(database_url, fake))):
            pass
    assert "migrate" in str(caught.value)
    assert "\n" not in str(caught.value).strip()
