"""Example tools, shipped so that a newcomer sees a whole tool loop with nothing to write (``tools.example.toml``;
the offline stub asks for them when a message calls for one)."""

from __future__ import annotations

import ast
import operator
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}
NOTES: list[str] = []


def current_time(timezone: str = "UTC") -> str:
    """The current date and time in an IANA time zone (for example "Europe/Berlin"); UTC by default."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    return datetime.now(zone).isoformat(timespec="seconds")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses (for example "(2 + 3) * 7")."""
    if len(expression) > 200:
        raise ValueError("the expression is longer than 200 characters")
    tree = ast.parse(expression, mode="eval")

    def value(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value,
                                                                                                      bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponents above 100 are not allowed")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError("only numbers and + - * / // % ** are allowed")

    return str(value(tree))


def save_note(text: str) -> str:
    """Save a short note for the user (kept in this server's memory until it restarts). Asks for approval."""
    NOTES.append(text[:1000])
    return f"saved note {len(NOTES)}"
