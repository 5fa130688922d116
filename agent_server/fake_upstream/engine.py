"""The state the real API keeps between requests, and the steps every reply goes through.

Both the loopback fake and the offline stub hold one `Engine`: its model table, its prompt cache on a fake
clock, its signing secret and the list of refused requests. A request goes through `check` (every rule of
the real API, `validate`), then `answer` (the scripted content, `planning`, and its usage: counted input
tokens split into cache reads, cache writes and the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import wire
from .caching import FakeClock, PromptCache
from .models import ModelTable
from .planning import Plan, plan
from .script import Behaviour
from .signing import Signer
from .validate import RequestFacts, validate


@dataclass(frozen=True)
class Answer:
    plan: Plan
    usage: dict[str, Any]


class Engine:
    def __init__(self, *, secret: bytes | None = None) -> None:
        self.models = ModelTable()
        self.clock = FakeClock()
        self.cache = PromptCache(self.clock)
        self.signer = Signer(secret)
        self._violations: list[dict[str, Any]] = []

    def check(self, body: Any) -> RequestFacts:
        """The request's facts; raises `Refusal` for any rule it breaks (see `validate`)."""
        return validate(body, self.models, self.signer)

    def refused(self, request_id: str, message: str, status: int = 400) -> None:
        """Remember a refused request, for `GET /_fake/violations`."""
        error_type = wire.error_type_for_status(status)
        self._violations.append({"request_id": request_id, "status": status, "type": error_type, "message": message})

    def violations(self) -> list[dict[str, Any]]:
        return [dict(violation) for violation in self._violations]

    def answer(
        self, body: dict[str, Any], facts: RequestFacts, behaviour: Behaviour, default_n_tokens: int | None = None
    ) -> Answer:
        """The reply's content and usage; writes and reads the prompt cache. Raises `Refusal` like `check`."""
        planned = plan(body, behaviour, facts, self.signer, default_n_tokens)
        model = body["model"]
        cache = self.cache.account(model, facts.prompt, facts.marks, self.models.cache_minimum(model))
        usage = wire.build_usage(
            input_tokens=facts.input_tokens - cache.read - cache.written,
            output_tokens=planned.output_tokens,
            cache_read=cache.read,
            cache_5m=cache.write_5m,
            cache_1h=cache.write_1h,
            web_search_requests=planned.web_search_requests,
            overrides=behaviour.usage,
        )
        return Answer(planned, usage)

    def reset(self) -> None:
        """Back to defaults: models, clock, cache and violations (the signing secret stays)."""
        self.models.reset()
        self.clock.reset()
        self.cache.clear()
        self._violations.clear()
