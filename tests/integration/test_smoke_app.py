from tests.conftest import plain_messages


async def test_post_agent_round_trip(client, fake):
    response = await client.post("/agent", json={"message": "Hi"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["content"] == "Echo: Hi"
    assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [{"role": "user", "content": "Hi"}]
