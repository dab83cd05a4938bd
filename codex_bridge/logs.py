"""The service's log lines: text or JSON, each with its request's context.

Every line written while a request is served carries the request's fields
(request id, API key name, conversation hash, child, thread and turn ids:
:meth:`http_front.telemetry.RequestRecord.context`); lines that describe an
event (a finished turn, an access) carry its figures as well (``extra=
{"fields": {...}}``). In text they follow the message in brackets; in JSON
(``log_format = "json"``) every line is one object:

    {"time": "2026-11-21T10:00:00.123Z", "level": "info", "logger": "codex_bridge.turn",
     "message": "turn completed: ...", "request_id": "...", "outcome": "completed", ...}
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

import orjson

from http_front import telemetry


class RequestContext(logging.Filter):
    """Adds the current request's fields to each record (``record.context``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            current = telemetry.current()
            record.context = current.context() if current is not None else {}
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context: dict[str, str] = getattr(record, "context", {})
        if context:
            line += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "context", {}))
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            for name, value in fields.items():
                line.setdefault(name, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr (journald's, under systemd) at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContext())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
