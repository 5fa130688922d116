"""A fake Anthropic Messages API, faithful to the wire format and scriptable for faults.

- `FakeUpstream` / `create_fake_app`: a loopback HTTP server for tests and benchmarks, driven
  by a FIFO of `Behaviour`s (errors, delays, mid-stream errors, dropped connections, hangs).
- `OfflineStubTransport`: the same wire format served in-process through httpx2, used by the
  product as its clearly labelled offline stub when no API key is configured.
"""

from .app import FakeConfig, create_fake_app
from .script import Behaviour, Script
from .server import FakeUpstream
from .stub_transport import STUB_PREFIX, OfflineStubTransport

__all__ = [
    "STUB_PREFIX",
    "Behaviour",
    "FakeConfig",
    "FakeUpstream",
    "OfflineStubTransport",
    "Script",
    "create_fake_app",
]
