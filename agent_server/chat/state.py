"""The remembered conversation, per server URL: ``$XDG_STATE_HOME/agent-server/chat.json``.

A state file that cannot be read or written costs only the resume of the next run, so failures are ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from .urls import server_key


def state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "agent-server" / "chat.json"


def _read_state() -> dict[str, Any]:
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_last(url: str) -> str | None:
    value = _read_state().get(server_key(url))
    return value if isinstance(value, str) and value else None


def save_last(url: str, conversation_id: str | None) -> None:
    """Remember ``conversation_id`` for this server (forget it when None)."""
    data = _read_state()
    if conversation_id is None:
        if data.pop(server_key(url), None) is None:
            return
    else:
        if data.get(server_key(url)) == conversation_id:
            return
        data[server_key(url)] = conversation_id
    path = state_file()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        scratch.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(scratch, path)
