"""Appending JSON lines to a file that other processes may append to too.

One ``write`` on an ``O_APPEND`` descriptor per line: lines from several writers (threads, worker
processes) never interleave within a line, and a reader always sees whole lines. The file and its
directory are created on first use with mode 0640.
"""

from __future__ import annotations

import os
from pathlib import Path


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
