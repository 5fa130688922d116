"""A process killed outright mid-reply keeps what its clients were shown, up to the checkpoint interval."""

from __future__ import annotations

import time

import httpx
import pytest

from agent_server.reply import CHECKPOINT_SECONDS
from tests.conftest import auth
from tests.e2e.conftest import server_env
from tests.e2e.sse_client import iter_events


def test_kill_9_mid_reply_keeps_the_checkpointed_partial_text(server, start_server, e2e_database_url, fake):
    tokens = [f"t{i} " for i in range(60)]
    fake.script({"tokens": tokens, "token_delay": 0.05})
    seen = ""
    with httpx.Client(base_url=server.base_url, headers=auth(), timeout=30) as client:
        with client.stream("POST", "/agent/stream", json={"message": "Tell me a long one"}) as response:
            stream = iter_events(response)
            conversation_id = next(stream).data["conversation_id"]
            started = None
            for event in stream:
                if event.event != "token":
                    continue
                seen += event.data["text"]
                started = started or time.monotonic()
                # Well past one checkpoint interval of streaming, well before the reply ends (3 s).
                if time.monotonic() - started > CHECKPOINT_SECONDS * 1.6:
                    break
            server.kill()
            with pytest.raises(httpx.TransportError):
                for _ in stream:
                    pass

    restarted = start_server(server_env(e2e_database_url, fake))
    with httpx.Client(base_url=restarted.base_url, headers=auth(), timeout=30) as client:
        audit = client.get(f"/conversations/{conversation_id}").json()
        assistant = [t for t in audit["turns"] if t["role"] == "assistant"]
        assert len(assistant) == 1 and assistant[0]["status"] == "incomplete", audit["turns"]
        kept = assistant[0]["content"]
        # Something the client saw was kept, and nothing the model did not write.
        assert kept and "".join(tokens).startswith(kept)
        assert len(kept) >= len("".join(tokens[:3])), (kept, seen)
        assert audit["requests"] == []  # the call's row is written when it ends; this one never ended
        # The conversation goes on, and the interrupted exchange is not sent upstream.
        response = client.post("/agent", json={"message": "Again", "conversation_id": conversation_id})
        assert response.status_code == 200, response.text
    assert fake.requests()[-1]["body"]["messages"] == [{"role": "user", "content": "Again"}]
