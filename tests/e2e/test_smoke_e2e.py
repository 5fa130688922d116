import httpx

from tests.conftest import auth


def test_serve_answers(server):
    response = httpx.post(f"{server.base_url}/agent", json={"message": "Hi"}, headers=auth(), timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "Echo: Hi"
