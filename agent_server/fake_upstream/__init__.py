"""A fake Anthropic Messages API, faithful to the wire format and the API's rules, scriptable for faults.

- `FakeUpstream` / `create_fake_app`: a loopback HTTP server for tests and benchmarks, driven
  by a FIFO of `Behaviour`s (errors, delays, mid-stream errors, dropped connections, hangs,
  tool calls, thinking, server tools, broken bodies). Every request must pass the real API's
  rules (`validate`); prompt caching and the context window are modelled per model.
- `OfflineStubTransport`: the same wire format and rules served in-process through httpx2, used
  by the product as its clearly labelled offline stub when no API key is configured.
"""

from .app import FakeConfig, create_fake_app
from .errors import Refusal
from .script import Behaviour, Script, ServerToolUse, ToolCall
from .server import FakeUpstream
from .stub_transport import STUB_PREFIX, OfflineStubTransport

__all__ = [
    "STUB_PREFIX",
    "Behaviour",
    "FakeConfig",
    "FakeUpstream",
    "OfflineStubTransport",
    "Refusal",
    "Script",
    "ServerToolUse",
    "ToolCall",
    "create_fake_app",
]
