"""Logging: one JSON object per line in production, readable lines in a terminal.

Records carry their fields in ``extra``; this module prints them. Nothing here adds message content or
secrets: callers pass only ids, counts, statuses and timings.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from .config import Settings

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message",
}


_TOKEN_IN_URL = re.compile(r"([?&](?:token|access_token|key)=)[^&\s\"']+", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """uvicorn logs WebSocket handshakes with their query string, which may carry ``?token=``: redact it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN_IN_URL.sub(r"\1[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(value: object) -> str:
    """Control characters as visible escapes: a ``%0A`` in a URL must not start a forged log line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        str(value))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extra = " ".join(f"{k}={escape_controls(v)}" for k, v in _fields(record).items() if k != "event")
        text = f"{stamp} {record.levelname:<7} {escape_controls(record.getMessage())}" + (f"  {extra}" if extra else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(settings: Settings) -> None:
    """Route our records and uvicorn's errors to stderr in the chosen format; silence uvicorn's access log
    (ours has the request id and no query string, which may carry a ``?token=``)."""
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler.addFilter(RedactTokens())
    level = logging.getLevelName(settings.log_level.upper())
    level = level if isinstance(level, int) else logging.INFO
    # uvicorn.error never below INFO: at DEBUG the websockets library logs every handshake header (client
    # keys) and every frame (message content) through it.
    for name, floor in (("agent_server", level), ("uvicorn.error", max(level, logging.INFO))):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(floor)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True
