"""``llm-gateway`` under cProfile, for :mod:`loadtests.cprofile_calls`: runs the gateway of the folder in
``$CPROFILE_SOURCE`` (a revision's snapshot); SIGUSR1 starts profiling, SIGUSR2 stops it and writes
the stats to ``$CPROFILE_OUT``. Arguments are the gateway's (``serve --config ...``)."""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from typing import Any

sys.path.insert(0, os.environ["CPROFILE_SOURCE"])

from gateway.cli import main  # after the snapshot is first on the path

profiler = cProfile.Profile()


def _on(*_: Any) -> None:
    profiler.enable()


def _off(*_: Any) -> None:
    profiler.disable()
    profiler.dump_stats(os.environ["CPROFILE_OUT"])


signal.signal(signal.SIGUSR1, _on)
signal.signal(signal.SIGUSR2, _off)
sys.exit(main(sys.argv[1:]))
