"""Cost maths: every built-in model priced as the reference table says, exactly, to the nano-dollar.

Expected values are computed here from the list prices copied out of
/work/shared/reference/anthropic-sdk-2.md, never from the code's own table.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from agent_server.money.prices import PriceTable, Usage, from_nano, to_nano

D = Decimal
MILLION = D(1_000_000)

# reference/anthropic-sdk-2.md, "List prices, USD per million tokens":
# (input, 5m cache write, 1h cache write, cache read, output).
SONNET_4 = (D("3"), D("3.75"), D("6"), D("0.30"), D("15"))
OPUS_4 = (D("5"), D("6.25"), D("10"), D("0.50"), D("25"))
REFERENCE = {
    "claude-sonnet-4-5": SONNET_4,
    "claude-sonnet-4-6": SONNET_4,
    "claude-haiku-4-5": (D("1"), D("1.25"), D("2"), D("0.10"), D("5")),
    "claude-opus-4-5": OPUS_4,
    "claude-opus-4-6": OPUS_4,
    "claude-opus-4-7": OPUS_4,
    "claude-opus-4-8": OPUS_4,
    "claude-opus-5": OPUS_4,
    "claude-opus-5-5": (D("4"), D("5"), D("8"), D("0.20"), D("20")),
    # 5-5's cache read of 0.10 is "reported, unconfirmed": the published 0.20 stands.
    "claude-sonnet-5": (D("2"), D("2.50"), D("4"), D("0.20"), D("10")),
    "claude-sonnet-5-5": (D("2"), D("2.50"), D("4"), D("0.20"), D("10")),
    "claude-haiku-5-5": (D("0.10"), D("0.125"), D("0.20"), D("0.01"), D("0.50")),
}


def expected_cost(model: str, *, inp=0, out=0, write_5m=0, write_1h=0, read=0) -> Decimal:
    p_in, p_5m, p_1h, p_read, p_out = REFERENCE[model]
    return (inp * p_in + out * p_out + write_5m * p_5m + write_1h * p_1h + read * p_read) / MILLION


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


@pytest.fixture
def pricing_log(caplog: pytest.LogCaptureFixture):
    """The pricing logger's records, whatever an earlier app start did to propagation."""
    logger = logging.getLogger("agent_server.money.prices")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="agent_server.money.prices")
    yield caplog
    logger.removeHandler(caplog.handler)


# -- the built-in table ----------------------------------------------------------------------------


def test_built_in_table_holds_every_reference_model(table: PriceTable) -> None:
    assert set(REFERENCE) <= table.models


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_built_in_prices_match_the_reference(table: PriceTable, model: str) -> None:
    price = table.get(model)
    assert price is not None
    assert (price.input, price.cache_write_5m, price.cache_write_1h, price.cache_read, price.output) == REFERENCE[model]
    # An audit must be able to tell which table a stored cost came from.
    assert price.source.strip() and price.as_of.strip()


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_cost_of_every_kind_of_token(table: PriceTable, model: str) -> None:
    usage = Usage(
        input_tokens=1_234_567,
        output_tokens=89_013,
        cache_creation_input_tokens=5_000,
        cache_read_input_tokens=40_001,
        cache_write_5m_tokens=3_000,
        cache_write_1h_tokens=2_000,
    )
    cost = table.cost(model, usage)
    assert isinstance(cost, Decimal)
    assert cost == expected_cost(model, inp=1_234_567, out=89_013, write_5m=3_000, write_1h=2_000, read=40_001)


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_cache_reads_alone(table: PriceTable, model: str) -> None:
    cost = table.cost(model, Usage(cache_read_input_tokens=1_000_000))
    assert cost == REFERENCE[model][3]


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_one_hour_writes_are_priced_at_their_own_rate(table: PriceTable, model: str) -> None:
    usage = Usage(cache_creation_input_tokens=1_000_000, cache_write_5m_tokens=0, cache_write_1h_tokens=1_000_000)
    assert table.cost(model, usage) == REFERENCE[model][2]


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_without_a_breakdown_every_write_is_a_five_minute_write(table: PriceTable, model: str) -> None:
    usage = Usage(input_tokens=10, cache_creation_input_tokens=7_000)
    assert table.cost(model, usage) == expected_cost(model, inp=10, write_5m=7_000)


def test_split_writes_add_up(table: PriceTable) -> None:
    model = "claude-sonnet-4-6"
    usage = Usage(cache_creation_input_tokens=300, cache_write_5m_tokens=100, cache_write_1h_tokens=200)
    assert table.cost(model, usage) == expected_cost(model, write_5m=100, write_1h=200)
    # 100 x 3.75 + 200 x 6 = 1575 micro-dollars: not the 1125 that pricing everything as 5m writes gives.
    assert table.cost(model, usage) == D("0.001575")


def test_the_api_md_example(table: PriceTable) -> None:
    # API.md: 12 input and 40 output tokens of claude-sonnet-5-5 cost 0.000424 USD.
    assert table.cost("claude-sonnet-5-5", Usage(input_tokens=12, output_tokens=40)) == D("0.000424")


def test_no_tokens_cost_nothing(table: PriceTable) -> None:
    assert table.cost("claude-opus-4-6", Usage()) == 0


def test_costs_are_exact_decimals_not_floats(table: PriceTable) -> None:
    # 3 x 0.10 is 0.30000000000000004 in binary floating point.
    cost = table.cost("claude-haiku-5-5", Usage(input_tokens=3))
    assert cost == D("0.0000003")
    assert str(cost.normalize()) in ("3E-7", "3e-7")
    many = table.cost("claude-haiku-5-5", Usage(input_tokens=1, output_tokens=1, cache_read_input_tokens=1))
    assert many == D("0.00000061")


def test_unknown_model_costs_null_and_warns(table: PriceTable, pricing_log: pytest.LogCaptureFixture) -> None:
    assert "claude-imaginary-9" not in table
    assert table.cost("claude-imaginary-9", Usage(input_tokens=100, output_tokens=100)) is None
    warnings = [r for r in pricing_log.records if r.levelno == logging.WARNING]
    assert any("claude-imaginary-9" in r.getMessage() for r in warnings)


def test_known_model_does_not_warn(table: PriceTable, pricing_log: pytest.LogCaptureFixture) -> None:
    table.cost("claude-haiku-4-5", Usage(input_tokens=1))
    assert not [r for r in pricing_log.records if r.levelno >= logging.WARNING]


# -- nano-dollars ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "nano"),
    [
        ("0", 0),
        ("0.000000001", 1),
        ("0.000424", 424_000),
        ("1", 1_000_000_000),
        ("123456.789012345", 123_456_789_012_345),
        ("0.0000000014", 1),  # nearest nano-dollar
        ("0.0000000016", 2),
        ("0.0000000015", 2),  # ties go to the even neighbour
        ("0.0000000025", 2),
        ("0.0000000035", 4),
    ],
)
def test_to_nano_rounds_to_the_nearest_nano_dollar(usd: str, nano: int) -> None:
    assert to_nano(D(usd)) == nano
    assert isinstance(to_nano(D(usd)), int)


def test_from_nano_is_exact() -> None:
    assert from_nano(424_000) == D("0.000424")
    assert from_nano(1) == D("0.000000001")
    assert from_nano(123_456_789_012_345) == D("123456.789012345")


def test_none_stays_none() -> None:
    assert to_nano(None) is None
    assert from_nano(None) is None


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_a_cost_survives_storage_to_the_nano_dollar(table: PriceTable, model: str) -> None:
    cost = table.cost(model, Usage(input_tokens=987_654, output_tokens=3_211, cache_read_input_tokens=17))
    assert cost is not None
    stored = from_nano(to_nano(cost))
    assert abs(stored - cost) <= D("0.0000000005")


# -- AGENT_PRICES_FILE -----------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_json_file_adds_a_model_with_default_cache_prices(tmp_path: Path) -> None:
    path = write(tmp_path, "prices.json", json.dumps(
        {"models": {"acme-large": {"input": 0.1, "output": "0.7", "source": "acme.example", "as_of": "2026-11"}}}
    ))
    table = PriceTable.load(path)
    assert "acme-large" in table
    price = table.get("acme-large")
    assert price is not None
    # Read as text, so 0.1 stays exactly 0.1; cache prices default to 1.25x, 2x and 0.1x input.
    assert (price.input, price.output) == (D("0.1"), D("0.7"))
    assert (price.cache_write_5m, price.cache_write_1h, price.cache_read) == (D("0.125"), D("0.2"), D("0.01"))
    assert (price.source, price.as_of) == ("acme.example", "2026-11")
    usage = Usage(input_tokens=10, output_tokens=10, cache_creation_input_tokens=10, cache_read_input_tokens=10)
    expected = (10 * D("0.1") + 10 * D("0.7") + 10 * D("0.125") + 10 * D("0.01")) / MILLION
    assert table.cost("acme-large", usage) == expected
    # The built-in models are still there, unchanged.
    assert set(REFERENCE) <= table.models
    assert table.cost("claude-haiku-4-5", Usage(output_tokens=1_000_000)) == D("5")


def test_json_file_overrides_a_built_in_model(tmp_path: Path) -> None:
    path = write(tmp_path, "prices.json", json.dumps(
        {"models": {"claude-sonnet-5-5": {"input": 2, "output": 10, "cache_read": "0.10"}}}
    ))
    price = PriceTable.load(path).get("claude-sonnet-5-5")
    assert price is not None
    assert (price.input, price.output, price.cache_read) == (D("2"), D("10"), D("0.10"))
    assert (price.cache_write_5m, price.cache_write_1h) == (D("2.5"), D("4"))
    assert price.source  # defaults to the file it came from


def test_toml_file_adds_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "prices.toml", """
[models."acme-small"]
input = 0.3
output = 1.5
cache_write_1h = 0.9
source = "acme price list"
as_of = "2026-11-01"

[models.claude-haiku-4-5]
input = 1.1
output = 5.5
cache_write_5m = 1.4
cache_write_1h = 2.2
cache_read = 0.11
""")
    table = PriceTable.load(path)
    small = table.get("acme-small")
    assert small is not None
    assert (small.input, small.output, small.cache_write_1h) == (D("0.3"), D("1.5"), D("0.9"))
    assert (small.cache_write_5m, small.cache_read) == (D("0.375"), D("0.03"))
    assert (small.source, small.as_of) == ("acme price list", "2026-11-01")
    haiku = table.get("claude-haiku-4-5")
    assert haiku is not None
    assert (haiku.input, haiku.cache_write_5m, haiku.cache_write_1h, haiku.cache_read, haiku.output) == (
        D("1.1"), D("1.4"), D("2.2"), D("0.11"), D("5.5")
    )
    usage = Usage(input_tokens=3, cache_creation_input_tokens=3, cache_write_5m_tokens=1, cache_write_1h_tokens=2)
    assert table.cost("claude-haiku-4-5", usage) == (3 * D("1.1") + D("1.4") + 2 * D("2.2")) / MILLION


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.json", "{}"),
        ("no-models.json", '{"models": {}}'),
        ("list.json", "[1, 2]"),
        ("models-list.json", '{"models": ["acme"]}'),
        ("not-json.json", "{models: nope"),
        ("not-toml.toml", "[models\ninput = "),
        ("no-output.json", '{"models": {"acme": {"input": 1}}}'),
        ("no-input.toml", '[models.acme]\noutput = 1\n'),
        ("entry-not-table.json", '{"models": {"acme": 3}}'),
        ("negative.json", '{"models": {"acme": {"input": -1, "output": 1}}}'),
        ("negative-cache.json", '{"models": {"acme": {"input": 1, "output": 1, "cache_read": "-0.1"}}}'),
        ("text-price.json", '{"models": {"acme": {"input": "cheap", "output": 1}}}'),
        ("bool-price.json", '{"models": {"acme": {"input": true, "output": 1}}}'),
        ("nan-price.json", '{"models": {"acme": {"input": NaN, "output": 1}}}'),
        ("inf-price.toml", '[models.acme]\ninput = inf\noutput = 1\n'),
        ("list-price.json", '{"models": {"acme": {"input": [1], "output": 1}}}'),
    ],
)
def test_bad_price_files_are_refused_with_a_value_error(tmp_path: Path, name: str, text: str) -> None:
    # Start-up turns OSError and ValueError into a one-line refusal; any other exception would be a traceback.
    with pytest.raises(ValueError) as caught:
        PriceTable.load(write(tmp_path, name, text))
    assert "Traceback" not in str(caught.value)


def test_a_missing_price_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        PriceTable.load(tmp_path / "nowhere.json")


def test_errors_name_the_file_and_the_model(tmp_path: Path) -> None:
    path = write(tmp_path, "prices.json", '{"models": {"acme-x": {"input": "cheap", "output": 1}}}')
    with pytest.raises(ValueError) as caught:
        PriceTable.load(path)
    assert "prices.json" in str(caught.value) and "acme-x" in str(caught.value)
