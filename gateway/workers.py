"""Several worker processes on one port (``server.workers`` / ``llm-gateway serve --workers N``).

The supervisor (this process) forks ``N`` workers before any app exists; each builds its own app and
serves the same ``host:port`` through its own ``SO_REUSEPORT`` socket, so the kernel spreads new
connections over them (by the connection's addresses: one keep-alive connection stays on one worker).
The supervisor serves nothing: on SIGTERM / SIGINT it passes the signal on, and every worker drains as a
single gateway does (:mod:`gateway.server`: ``/ready`` 503, in-flight streams finish within
``server.drain_timeout_s``, then are cut with an SSE error event and ``[DONE]``); it exits when they
have. A worker that dies on its own takes the gateway down (the others drain) with status 1, so the
orchestrator restarts it whole rather than it running with fewer workers unnoticed.

What is per process — each worker has its own, nothing is shared:

* rate-limit buckets (``auth.keys[].rpm``/``tpm``, the feedback budget): a key's budget is enforced per
  worker, so a key may get up to N x its configured budget in all (a client on one keep-alive
  connection stays on one worker and sees the configured budget); the start-up log says so;
* the routing policy's live statistics (latency residuals, live ratios) and the feedback memory
  (``/v1/feedback`` rates a response only on the worker that answered it: the others answer 404);
* replica affinity tables, backend health polling and load scraping (N x the polls), circuit breakers,
  and so ``/ready``: a probe gets the answer of the worker its connection landed on (each becomes ready
  when its own first health poll finds a backend up);
* logs go to the same stderr; the decision log's lines are appended whole, so workers share its file.

Metrics stay complete: the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder (its own
temporary one unless set) before prometheus_client is imported, and every worker's ``/metrics`` reads
all workers' values (:mod:`gateway.metrics`); the files of a worker that has exited are dropped from
the live gauges.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway.settings import Settings

log = logging.getLogger("gateway.workers")


def prepare_metrics_dir() -> tuple[Path, bool]:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder: the one already set (its old ``*.db``
    files removed), else a new temporary one. Returns (folder, whether it was made here)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="llm-gateway-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported already (by the config check): metrics made from now on use the files
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path, True


def per_process_notes(settings: Settings, workers: int) -> list[str]:
    """What the operator should know of ``settings`` served by ``workers`` processes."""
    notes = []
    limited = [k.name for k in settings.auth.keys if k.rpm or k.tpm]
    if limited:
        notes.append(
            f"rate limits are per worker: keys {', '.join(limited)} may get up to {workers}x their rpm/tpm in all "
            "(one keep-alive connection stays on one worker)"
        )
    notes.append("routing statistics, feedback memory, affinity tables and breakers are per worker")
    return notes


def _mark_dead(pid: int) -> None:
    """Drop the live gauges of worker ``pid`` (it has exited) from the shared metrics."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def supervise(workers: int, run_worker: Callable[[int], int]) -> int:
    """Fork ``workers`` processes, each running ``run_worker(index)`` and exiting with its result; pass
    SIGTERM / SIGINT on to them and wait. Returns 0 when they stopped on a signal, 1 when one exited on
    its own (the others are then told to drain)."""
    children: dict[int, int] = {}  # pid -> index
    stopping = False

    def on_signal(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _fork_all(workers, run_worker, children)
        return 1 if _wait_all(children, on_signal, lambda: stopping) else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fork_all(workers: int, run_worker: Callable[[int], int], children: dict[int, int]) -> None:
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: default signal handling until its server installs its own
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = 1
            try:
                code = run_worker(index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index


def _wait_all(children: dict[int, int], stop: Callable[[int, object], None], stopping: Callable[[], bool]) -> bool:
    """Reap the workers; when one exits while not stopping, tell the others to stop. Whether one did."""
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        _mark_dead(pid)
        if index is not None and not stopping():
            log.error("worker %d (pid %d) exited with %s: stopping the others", index, pid, _describe(status))
            failed = True
            stop(signal.SIGTERM, None)
    return failed


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"


def run_workers(settings: Settings, workers: int, serve_one: Callable[[int], int]) -> int:
    """Serve with ``workers`` processes (see the module docstring); ``serve_one(index)`` runs one worker
    (builds its app, serves with ``reuse_port``) and returns its exit status."""
    metrics_dir, made = prepare_metrics_dir()
    for note in per_process_notes(settings, workers):
        log.warning("%d workers: %s", workers, note)
    started = time.monotonic()
    try:
        return supervise(workers, serve_one)
    finally:
        if made:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        log.info("all %d workers stopped after %.1fs", workers, time.monotonic() - started)
