"""The fake's model table: each model's context window and minimum cacheable prompt.

Why per model: the real API refuses prompts longer than the model's window, and silently declines to cache
a prefix shorter than the model's minimum. Tests shrink either through `POST /_fake/models` to exercise those
paths with small prompts; `reset` restores the defaults below.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CONTEXT_WINDOW = 200_000
FIELDS = ("context_window", "cache_minimum")

# Minimum cacheable prefix, by model id prefix (first match wins); every other model: 1,024.
_CACHE_MINIMUMS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-haiku-3", 2048),
    ("claude-3-haiku", 2048),
    ("claude-3-5-haiku", 2048),
    ("claude-sonnet-", 1024),
)
DEFAULT_CACHE_MINIMUM = 1024


def default_cache_minimum(model: str) -> int:
    for prefix, minimum in _CACHE_MINIMUMS:
        if model.startswith(prefix):
            return minimum
    return DEFAULT_CACHE_MINIMUM


class ModelTable:
    """Defaults for every model, plus overrides merged in through the control API."""

    def __init__(self) -> None:
        self._overrides: dict[str, dict[str, int]] = {}

    def update(self, models: Any) -> dict[str, dict[str, int]]:
        """Merge `{"<model>": {"context_window": N, "cache_minimum": N}}`; ValueError (nothing merged) if malformed."""
        if not isinstance(models, dict):
            raise ValueError('models must be an object: {"<model>": {"context_window": N, "cache_minimum": N}}')
        for model, settings in models.items():
            if not isinstance(settings, dict) or not set(settings) <= set(FIELDS):
                raise ValueError(f"{model}: only {', '.join(FIELDS)} may be set")
            for name, value in settings.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{model}.{name} must be a non-negative integer")
        for model, settings in models.items():
            self._overrides.setdefault(model, {}).update(settings)
        return self.overrides()

    def overrides(self) -> dict[str, dict[str, int]]:
        return {model: dict(settings) for model, settings in self._overrides.items()}

    def context_window(self, model: str) -> int:
        return self._overrides.get(model, {}).get("context_window", DEFAULT_CONTEXT_WINDOW)

    def cache_minimum(self, model: str) -> int:
        return self._overrides.get(model, {}).get("cache_minimum", default_cache_minimum(model))

    def reset(self) -> None:
        self._overrides.clear()
