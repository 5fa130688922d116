"""JSON as this API writes it: compact UTF-8, and numbers as plain decimals (``0.000068``, never ``6.8e-05``).

Costs are small floats, and Python prints those in exponent notation. Valid JSON either way, but people
read these figures (the README, logs, the chat client). The C encoder has no hook for number formats, so
the rare payload whose encoding shows an exponent is encoded again by a small encoder of our own.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

_SEPARATORS = (",", ":")


def dumps(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=_SEPARATORS, allow_nan=False)
    if "e-" not in text and "e+" not in text:
        return text
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts)


def plain_number(value: float | Decimal) -> str:
    """A finite number without an exponent, as few digits as its shortest round-trip form needs."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("JSON has no NaN or infinity")
        text = repr(value)
        if "e" not in text:
            return text
        value = Decimal(text)
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif value is None or value is True or value is False:
        out.append("null" if value is None else "true" if value else "false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, (float, Decimal)):
        out.append(plain_number(value))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(json.dumps(str(key), ensure_ascii=False))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
