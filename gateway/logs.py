"""The process's log output: ``text`` (one readable line per record) or ``json`` (one JSON object per line).

``server.log_format`` (or ``llm-gateway serve --log-format``) picks it, once, in :func:`configure`.
In ``json`` every record — the gateway's, uvicorn's, the libraries' — is one object on stderr::

    {"ts": "2025-01-31T12:00:00.123Z", "level": "info", "logger": "gateway.app", "message": "..."}

with the record's structured fields merged in (``extra={"fields": {...}}``: the per-request line of
:mod:`gateway.request_log`), and ``exc_info`` as a ``traceback`` string.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

from gateway.jsonl import encode_line

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: ``logging.LogRecord`` attribute carrying a record's structured fields (``extra={FIELDS: {...}}``)
FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (never raises for a record's content: unknown types become strings)."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z"
        doc: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return encode_line(doc, default=str)[:-1].decode()


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (so a replaced stderr is followed)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(level: str, fmt: LogFormat) -> None:
    """Send every record at ``level`` and above to stderr in ``fmt``; replaces the root handlers
    (a second call replaces the first's)."""
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Stderr) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per upstream call otherwise
