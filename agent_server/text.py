"""What makes client text unstorable, in one place for request validation and the title."""

from __future__ import annotations


def not_unicode(value: str) -> str | None:
    """Why ``value`` is not valid Unicode text (a lone surrogate cannot be encoded as UTF-8), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def unstorable(value: str) -> str | None:
    """Why ``value`` cannot be stored as plain text, or None: not Unicode, or a NUL (PostgreSQL's text cannot
    hold one; refused on either database alike). A message may hold NUL: it is stored as JSON content blocks,
    where NUL is escaped, and sent upstream exactly."""
    return not_unicode(value) or ("contains a NUL character (U+0000), which cannot be stored"
                                  if "\x00" in value else None)
