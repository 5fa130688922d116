"""Prices per model and the cost of one upstream call, in exact decimals.

Prices are USD per million tokens. Each entry names where the figure came from and when, because list
prices change and an audit needs to know which table a stored cost was computed with. The allowed models
of the service are exactly the models of this table (built-in entries plus ``AGENT_PRICES_FILE``).
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

log = logging.getLogger(__name__)

PER_MILLION = Decimal(1_000_000)
# Stored costs are integers of nano-dollars: 1e-9 USD resolution, exact in SQLite.
NANO = Decimal("0.000000001")

_PRICING_PAGE = "Anthropic pricing page and model pages"


@dataclass(frozen=True)
class ModelPrice:
    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    source: str
    as_of: str
    # Tokens of input the model accepts; history beyond it (less max_tokens) is left out (engine/context.py).
    context_window: int = 200_000
    context_source: str = "Anthropic models overview: 200K context window"


@dataclass(frozen=True)
class Usage:
    """Token counts of one upstream call as the API reports them.

    ``cache_creation_input_tokens`` is the total of cache writes; the 5m/1h split is known only when the
    upstream reports the ``cache_creation`` breakdown (``None`` otherwise: all writes are then 5-minute).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    web_search_requests: int = 0
    web_fetch_requests: int = 0

    @property
    def server_tool_uses(self) -> int:
        return self.web_search_requests + self.web_fetch_requests

    def __add__(self, other: Usage) -> Usage:
        def both(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            both(self.cache_write_5m_tokens, other.cache_write_5m_tokens),
            both(self.cache_write_1h_tokens, other.cache_write_1h_tokens),
            self.web_search_requests + other.web_search_requests,
            self.web_fetch_requests + other.web_fetch_requests,
        )


def _price(inp: str, out: str, w5: str, w1: str, read: str, source: str, as_of: str,
           context: tuple[int, str] | None = None) -> ModelPrice:
    extra = {} if context is None else {"context_window": context[0], "context_source": context[1]}
    return ModelPrice(Decimal(inp), Decimal(out), Decimal(w5), Decimal(w1), Decimal(read), source, as_of, **extra)


# Server tools billed per use on top of tokens (USD per 1,000 uses). Errored uses are not billed upstream and are
# not counted in ``usage.server_tool_use``. Web fetch and code execution next to them bill tokens only.
SERVER_TOOL_FEES = {
    "web_search_requests": (Decimal("10"), "Anthropic pricing page: web search $10 per 1,000 searches", "2026-10"),
}
_ASSUMED_CONTEXT = (200_000, "not published with the price; assumed 200K like the 4.x family (override it in "
                             "AGENT_PRICES_FILE)")


def _builtin_table() -> dict[str, ModelPrice]:
    sonnet4 = _price("3", "15", "3.75", "6", "0.30", _PRICING_PAGE, "2026-10")
    opus4 = _price("5", "25", "6.25", "10", "0.50", _PRICING_PAGE, "2026-10")
    table = {
        "claude-sonnet-4-5": sonnet4,
        "claude-sonnet-4-6": sonnet4,
        "claude-haiku-4-5": _price("1", "5", "1.25", "2", "0.10", _PRICING_PAGE, "2026-10"),
        "claude-opus-5-5": _price("4", "20", "5", "8", "0.20", _PRICING_PAGE, "2026-10", _ASSUMED_CONTEXT),
        "claude-sonnet-5": _price("2", "10", "2.50", "4", "0.20", _PRICING_PAGE, "2026-10", _ASSUMED_CONTEXT),
        # A cache-read price of 0.10 from 2026-10-07 is reported but unconfirmed: keep the published 0.20.
        "claude-sonnet-5-5": _price("2", "10", "2.50", "4", "0.20", _PRICING_PAGE, "2026-10", _ASSUMED_CONTEXT),
        "claude-haiku-5-5": _price("0.10", "0.50", "0.125", "0.20", "0.01", _PRICING_PAGE, "2026-10",
                                   _ASSUMED_CONTEXT),
    }
    for name in ("claude-opus-4-5", "claude-opus-4-6", "claude-opus-4-7", "claude-opus-4-8", "claude-opus-5"):
        table[name] = opus4
    return table


class PriceTable:
    """The models this service allows, with their prices."""

    def __init__(self, prices: dict[str, ModelPrice]):
        self._prices = dict(prices)

    @classmethod
    def load(cls, override_file: Path | None = None) -> PriceTable:
        """The built-in table, overridden and extended by ``override_file`` (JSON or TOML) if given."""
        prices = _builtin_table()
        if override_file is not None:
            prices.update(_read_price_file(override_file))
        return cls(prices)

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self._prices)

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def get(self, model: str) -> ModelPrice | None:
        return self._prices.get(model)

    def cost(self, model: str, usage: Usage) -> Decimal | None:
        """Exact USD cost of one call, or ``None`` (with a warning) for a model with no price."""
        price = self._prices.get(model)
        if price is None:
            log.warning("no price for model %s: cost recorded as null", model)
            return None
        return cost_of(price, usage)


def server_tool_fees(usage: Usage) -> Decimal:
    """USD billed for server-tool uses (web search), on top of tokens."""
    per_thousand = SERVER_TOOL_FEES["web_search_requests"][0]
    return usage.web_search_requests * per_thousand / 1000


def cache_savings(price: ModelPrice, usage: Usage) -> Decimal:
    """What cache reads saved against uncached input, less what cache writes cost above uncached input."""
    write_1h = usage.cache_write_1h_tokens or 0
    write_5m = (usage.cache_write_5m_tokens if usage.cache_write_5m_tokens is not None
                else max(usage.cache_creation_input_tokens - write_1h, 0))
    micro = (usage.cache_read_input_tokens * (price.input - price.cache_read)
             - write_5m * (price.cache_write_5m - price.input)
             - write_1h * (price.cache_write_1h - price.input))
    return micro / PER_MILLION


def cost_of(price: ModelPrice, usage: Usage) -> Decimal:
    """Tokens at the model's prices plus server-tool fees."""
    return token_cost(price, usage) + server_tool_fees(usage)


def token_cost(price: ModelPrice, usage: Usage) -> Decimal:
    write_1h = usage.cache_write_1h_tokens or 0
    write_5m = (
        usage.cache_write_5m_tokens
        if usage.cache_write_5m_tokens is not None
        else max(usage.cache_creation_input_tokens - write_1h, 0)
    )
    micro = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + write_5m * price.cache_write_5m
        + write_1h * price.cache_write_1h
        + usage.cache_read_input_tokens * price.cache_read
    )
    return micro / PER_MILLION


def to_nano(cost: Decimal | None) -> int | None:
    """USD to integer nano-dollars for storage (rounded half-even at 1e-9)."""
    return None if cost is None else int((cost / NANO).to_integral_value())


def from_nano(nano: int | None) -> Decimal | None:
    return None if nano is None else Decimal(nano) * NANO


_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


def _read_price_file(path: Path) -> dict[str, ModelPrice]:
    """Parse ``{"models": {"<id>": {"input": .., "output": .., ...,"source": .., "as_of": ..}}}``.

    Cache prices default to the usual multiples of the input price (5m write 1.25x, 1h write 2x, read 0.1x).
    Numbers are read as text so that 0.1 stays exactly 0.1.
    """
    raw = path.read_text(encoding="utf-8")
    data = tomllib.loads(raw) if path.suffix == ".toml" else json.loads(raw, parse_float=Decimal)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{path}: expected a non-empty 'models' table")
    table: dict[str, ModelPrice] = {}
    for model, entry in models.items():
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise ValueError(f"{path}: model {model!r} needs at least 'input' and 'output' prices")
        inp = _price_value(path, model, "input", entry["input"])
        values = {
            "input": inp,
            "output": _price_value(path, model, "output", entry["output"]),
            "cache_write_5m": inp * Decimal("1.25"),
            "cache_write_1h": inp * 2,
            "cache_read": inp * Decimal("0.1"),
        }
        for field in _FIELDS[2:]:
            if field in entry:
                values[field] = _price_value(path, model, field, entry[field])
        context = entry.get("context_window", 200_000)
        if isinstance(context, bool) or not isinstance(context, int) or context < 1024:
            raise ValueError(f"{path}: model {model!r} has a context_window that is not a whole number >= 1024")
        table[model] = ModelPrice(
            **values, source=str(entry.get("source", str(path))), as_of=str(entry.get("as_of", "unknown")),
            context_window=context, context_source=str(entry.get("context_source", str(path))),
        )
    return table


def _price_value(path: Path, model: str, field: str, raw: object) -> Decimal:
    """One price as an exact, finite, non-negative Decimal; anything else is a ValueError naming the entry.

    ``Decimal("abc")`` raises ``InvalidOperation``, an ArithmeticError that start-up would not report cleanly.
    """
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str, Decimal)):
        raise ValueError(f"{path}: model {model!r} has a non-numeric {field} price")
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ValueError(f"{path}: model {model!r} has a non-numeric {field} price") from None
    if not value.is_finite():
        raise ValueError(f"{path}: model {model!r} has a non-finite {field} price")
    if value < 0:
        raise ValueError(f"{path}: model {model!r} has a negative price")
    return value
