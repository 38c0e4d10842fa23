"""Progress bars for the long jobs of the torch side: tqdm on stderr, readable in a terminal and in a log.

Used for layer scoring, teacher answers and healing steps. ``variants`` imports no other package of
the project, so :mod:`lab.progress` is the same code for the lab's jobs (tests/unit/test_progress.py
keeps the two identical): one library, one behaviour.

On a terminal the bar is redrawn in place (tqdm's usual display). Anywhere else (a log file, a pipe,
CI) tqdm's in-place redraws would pile up as carriage returns on one line, so the bar is written as
whole lines instead, at most one every :data:`LOG_INTERVAL_S` seconds plus the first and the last.
``LLM_GATEWAY_PROGRESS=0`` turns the bars off.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

LOG_INTERVAL_S = 30.0


class LogLines:
    """A text stream for tqdm that turns its in-place redraws (``\\r`` + line) into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        for part in text.split("\r"):
            line = part.rstrip()
            if line:
                self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(
    total: int | None,
    desc: str,
    unit: str = "it",
    *,
    stream: TextIO | None = None,
    initial: int = 0,
    disable: bool = False,
    log_interval_s: float = LOG_INTERVAL_S,
) -> Any:
    """A ``tqdm`` bar on ``stream`` (default stderr) for ``total`` items (``None``: unknown).

    Use it as tqdm: ``update(n)`` (``update(0)`` redraws the elapsed time, at most as often as above),
    ``set_postfix_str(..., refresh=False)``, ``write(line)``, ``close()``, or as a context manager.
    ``disable``: a bar that draws nothing.
    """
    from tqdm import tqdm  # type: ignore[import-untyped]

    stream = stream or sys.stderr
    options: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "initial": initial}
    options["disable"] = disable or os.environ.get("LLM_GATEWAY_PROGRESS", "1") == "0"
    if stream.isatty():
        return tqdm(file=stream, dynamic_ncols=True, **options)
    # a log: whole ASCII lines, a fixed width, few of them (maxinterval: tqdm's monitor never forces more)
    return tqdm(file=LogLines(stream), ncols=100, ascii=True, mininterval=log_interval_s, **options)
