"""Process groups and stop signals for the local stack's launcher (:mod:`lab.launcher`).

Linux-first: process state comes from ``/proc`` (elsewhere a group counts as alive while ``killpg``
reaches it). :func:`end_groups` stops whole process groups (SIGTERM, then SIGKILL), :func:`watch`
is the watchdog's main (``python -m lab.processes``): it ends the groups a launcher that died left
running. :func:`raise_on_stop_signals` turns SIGTERM/SIGHUP into :class:`Stopped`;
:func:`held_signals` defers them while processes are started or stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PROC = Path("/proc")


def watch(stream: IO[str] | None = None, grace_s: float = 15.0) -> None:
    """The watchdog's main: read process group ids from ``stream`` (stdin), one a line, until it closes, then end
    the groups still running (SIGTERM, SIGKILL after ``grace_s``). ``clear`` forgets the groups read so far:
    the launcher stopped them itself. The pipe closes when the launcher exits, however it ends."""
    pgids: list[int] = []
    for line in stream or sys.stdin:
        if line.strip() == "clear":
            pgids.clear()
        elif line.strip().isdigit():
            pgids.append(int(line))
    if pgids and live_groups(pgids):
        print(f"the launcher is gone: ending process groups {pgids}", file=sys.stderr, flush=True)
        end_groups(pgids, grace_s)


class Stopped(BaseException):
    """SIGTERM or SIGHUP inside :func:`raise_on_stop_signals`, raised in the main thread as Ctrl-C raises
    ``KeyboardInterrupt``: the stack unwinds through ``Launcher.__exit__``, which stops every server."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def raise_on_stop_signals() -> Iterator[None]:
    """Within the block SIGTERM and SIGHUP raise :class:`Stopped` instead of ending the process on the spot.

    SIGHUP is passed on as SIGTERM, so a gateway serving under uvicorn (which handles SIGTERM and SIGINT
    itself, then raises the signal again once it has drained) drains first either way. A signal ignored on
    entry (SIGHUP under ``nohup``) stays ignored. Main thread only.
    """
    first: list[int] = []

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Stopped(first[0] if first else signum)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        if not first:
            first.append(signum)
        signal.raise_signal(signal.SIGTERM)

    handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]] = {
        signal.SIGTERM: on_term,
        signal.SIGHUP: on_hup,
    }
    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in handlers.items()
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def held_signals() -> Iterator[list[int]]:
    """Within the block SIGINT, SIGTERM and SIGHUP are only recorded (the yielded list); on leaving it they are
    raised again, to act as they would have. Ignored signals stay ignored. Outside the main thread, a no-op."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {
        sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
        for sig in STOP_SIGNALS
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the server SIGTERM when the launcher dies, SIGKILL included
    (Linux ``PR_SET_PDEATHSIG``); ``None`` elsewhere. The kernel ties it to the thread that starts the
    server, so only the main thread asks for it: a worker thread ending would stop the servers."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec only calls it
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the request took effect
            os._exit(1)

    return preexec


def end_groups(
    pgids: Sequence[int],
    grace_s: float,
    hurry: Sequence[int] = (),
    reap: Callable[[], None] = lambda: None,
) -> None:
    """SIGTERM the process groups ``pgids``, wait up to ``grace_s`` (less once ``hurry`` is not empty) until
    none of their processes runs, then SIGKILL the groups left and wait for them. ``reap`` collects the
    caller's exited children, which would otherwise linger as zombies (and count as alive off Linux)."""
    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = list(pgids)
    while alive and not hurry and time.monotonic() < deadline:
        time.sleep(0.05)
        reap()
        alive = live_groups(alive)
    for pgid in alive:
        signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        reap()
        alive = live_groups(alive)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    pgrp: int
    session: int
    started: int


def read_proc(pid: int) -> Proc | None:
    """One process's ``/proc/PID/stat``: state, process group, session, start time (clock ticks since boot)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces and parentheses
    return Proc(pid, fields[0], int(fields[2]), int(fields[3]), int(fields[19]))


def processes() -> list[Proc]:
    """Every process this machine's ``/proc`` shows (empty without one)."""
    if not PROC.is_dir():
        return []
    procs = (read_proc(int(name)) for name in os.listdir(PROC) if name.isdigit())
    return [p for p in procs if p is not None]


def start_time(pid: int) -> int | None:
    proc = read_proc(pid)
    return proc.started if proc else None


def live_groups(pgids: Sequence[int]) -> list[int]:
    """The groups of ``pgids`` in which a process still runs. Zombies, which no signal ends (init never reaps them
    in some containers), do not count where ``/proc`` tells them apart."""
    if PROC.is_dir():
        live = {p.pgrp for p in processes() if p.state != "Z"}
        return [g for g in pgids if g in live]
    return [g for g in pgids if group_exists(g)]


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_recorded_group(pgid: int, started: int | None) -> bool:
    """Whether live processes of group ``pgid`` belong to the group a record names: they are in the session
    the server's ``setsid`` made, and its leader, if still there, started when recorded."""
    members = [p for p in processes() if p.pgrp == pgid and p.session == pgid and p.state != "Z"]
    leader = next((p for p in members if p.pid == pgid), None)
    return bool(members) and (leader is None or started is None or leader.started == started)


if __name__ == "__main__":
    watch()
