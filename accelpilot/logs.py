"""Logging set-up for the long-running commands: plain text for people, JSON lines for machines.

>>> import io, json, logging
>>> stream = io.StringIO()
>>> configure("info", "json", stream=stream)
>>> logging.getLogger("accelpilot.test").info("tick %d", 7, extra={"host_id": "node0"})
>>> rec = json.loads(stream.getvalue())
>>> rec["msg"], rec["level"], rec["host_id"]
('tick 7', 'info', 'node0')
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (unix s), level, logger, msg, exception, and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "info", fmt: str = "text", *, stream: IO[str] | None = None) -> None:
    """Configure the root logger; the chatty kafka client is kept at warnings."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        raise ValueError(f"log format {fmt!r}: use text or json")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(logging.WARNING)
