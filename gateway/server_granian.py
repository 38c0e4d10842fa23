"""Serving the app under granian (a Rust HTTP server for ASGI apps) with the same graceful drain as uvicorn.

granian runs embedded in this process's event loop (``granian.server.embed``: one worker, the ASGI
interface without lifespan), and this module does what uvicorn does for :mod:`gateway.server`:

1. runs the app's lifespan (start-up: backend polling, upstream client) before listening;
2. on the first SIGTERM / SIGINT marks the app as draining (``/ready`` answers 503) and tells granian to
   stop (it closes the listening socket: new connections are refused);
3. lets in-flight requests, streams included, finish for up to ``drain_timeout_s`` — it keeps the task of
   every request it is serving (:class:`InFlight`);
4. then cancels what is left; :class:`gateway.server.DrainCutoff` ends a cut stream with an SSE error
   event and ``data: [DONE]`` (a request whose answer had not started gets a 503 envelope);
5. runs the app's shutdown and returns. A second SIGINT / SIGTERM cancels what is left at once.

Checked against uvicorn with real processes (tests/integration/test_shutdown.py, and by hand: an idle
keep-alive connection is closed at the signal under both, new connections are refused). What differs:
the exit status after a drain is 0 (uvicorn re-raises the signal: -15), and granian marks its embedded
server experimental.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("gateway.server")


class InFlight:
    """ASGI middleware: keeps the task of every HTTP request being served, so a drain can wait for
    them and then cancel what is left."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if task is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.tasks.add(task)
        try:
            await self.app(scope, receive, send)
        finally:
            self.tasks.discard(task)

    async def drain(self, timeout_s: float, hurry: asyncio.Event) -> int:
        """Wait up to ``timeout_s`` in all (or until ``hurry`` is set) for the requests in flight to end,
        then cancel the rest and wait for them; the number cancelled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        hurried = asyncio.ensure_future(hurry.wait())
        try:
            while (pending := set(self.tasks)) and not hurry.is_set() and (left_s := deadline - loop.time()) > 0:
                await asyncio.wait([*pending, hurried], timeout=left_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurried.cancel()
        left = set(self.tasks)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=5.0)
        return len(left)


async def serve_granian(
    app: FastAPI, wrapped: ASGIApp, drain_timeout_s: float, *, host: str, port: int, log_level: str, access_log: bool
) -> None:
    """Serve ``wrapped`` (``app`` with its drain middleware) under granian until a stop signal, then drain."""
    from granian.asgi import LifespanProtocol
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    inflight = InFlight(wrapped)
    server = Server(
        inflight,
        address=host,
        port=port,
        interface=Interfaces.ASGINL,
        websockets=False,
        log_enabled=True,
        log_level=LogLevels(log_level),
        log_access=access_log,
    )
    lifespan = LifespanProtocol(app)  # type: ignore[no-untyped-call]
    await lifespan.startup()  # type: ignore[no-untyped-call]
    if lifespan.interrupt:
        raise RuntimeError("the app's start-up failed; see the log above")
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(sig: int) -> None:
        if stop.is_set():
            hurry.set()
            return
        log.info("signal %d: draining; in-flight requests have %.1fs to finish", sig, drain_timeout_s)
        app.state.draining = True
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.wait([serving, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        server.stop()  # type: ignore[no-untyped-call]
        cut = await inflight.drain(drain_timeout_s, hurry)
        if cut:
            log.warning("drain timeout: %d request(s) cut", cut)
        await serving
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await lifespan.shutdown()  # type: ignore[no-untyped-call]
