"""The fake app's configuration and state, apart from the routes that use them.

Kept in its own module so the Messages endpoint (`endpoint`) and the control API (`app`) share them
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .engine import Engine
from .records import Recorder
from .script import Script


@dataclass(frozen=True)
class FakeConfig:
    """Defaults for every reply; a scripted Behaviour overrides them per attempt."""

    ttft: float = 0.0
    token_delay: float = 0.0
    n_tokens: int | None = None  # None: echo the last user message
    require_key: str | None = None  # None: any non-empty key is accepted
    ttft_from: str = "accepted"  # when the time to first token starts: see StreamedReply


@dataclass
class FakeState:
    config: FakeConfig
    script: Script = field(default_factory=Script)
    recorder: Recorder = field(default_factory=Recorder)
    engine: Engine = field(default_factory=Engine)
