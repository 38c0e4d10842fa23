"""Writing JSON lines: one encoder for every JSONL the gateway writes, and appends that other
processes may share.

:func:`encode_line` is the one encoder of every JSON line the gateway writes (ratings, the decision
log, ``json`` log records): compact UTF-8 JSON, one trailing newline, and U+2028 / U+2029 written as
``\\u2028`` / ``\\u2029``. JSON allows both raw inside strings, but JavaScript (before ES2019) and many
line-oriented tools take them for line ends, so a client's comment could otherwise split a record.

:func:`append_line`: one ``write`` on an ``O_APPEND`` descriptor per line, so lines from several
writers (threads, worker processes) never interleave within a line, and a reader always sees whole
lines. The file and its directory are created on first use with mode 0640.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

_LS, _PS = "\u2028".encode(), "\u2029".encode()


def encode_line(doc: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """``doc`` as one JSON line (newline included), line and paragraph separators escaped.
    ``default`` as for :func:`orjson.dumps`. Raises :class:`orjson.JSONEncodeError`."""
    data = orjson.dumps(doc, default=default, option=orjson.OPT_APPEND_NEWLINE)
    if b"\xe2\x80" in data:  # the lead bytes both separators share: rarely there, one scan when absent
        data = data.replace(_LS, b"\\u2028").replace(_PS, b"\\u2029")
    return data


def append_line(path: Path, data: bytes) -> None:
    """Append ``data`` (one line, newline included). Raises ``OSError`` if it cannot be written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
