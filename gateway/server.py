"""Running the app under uvicorn (default) or granian with a graceful drain on SIGTERM / SIGINT.

On the first signal the gateway

1. marks the app as draining (``app.state.draining``): ``/ready`` answers 503 from then on;
2. stops accepting connections and closes idle keep-alive ones (uvicorn);
3. lets in-flight requests, streams included, finish for up to ``server.drain_timeout_s``;
4. then cancels whatever is left — a stream cut this way still ends with an SSE error event
   and ``data: [DONE]`` (:class:`DrainCutoff`), so no client mistakes it for a whole answer —
   runs the app's shutdown (backend polling, upstream client) and exits.

A second SIGINT (Ctrl-C) exits at once.

``server.http_server: granian`` (:mod:`gateway.server_granian`) drains the same way. With
``reuse_port`` the listening socket is bound with ``SO_REUSEPORT`` so that several worker processes
share the port (:mod:`gateway.workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
from types import FrameType
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ShutDown, error_response
from gateway.response_state import KEY, ResponseState
from gateway.sse import error_event

log = logging.getLogger("gateway.server")


class DrainCutoff:
    """ASGI middleware: a stream still open when the drain timeout cancels it ends with an SSE
    error event (``shutting_down``) and ``data: [DONE]`` instead of a bare connection close; a
    request whose answer had not started gets a 503 ``shutting_down`` envelope. Either way the
    request's task then ends normally (the relay has stopped writing: gateway/relay.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # an app that keeps the state itself (gateway.lean_app.GatewayApp) spares every message a wrapper
        self.wrap = not getattr(app, "keeps_response_state", False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope[KEY] = ResponseState()
        try:
            await self.app(scope, receive, state.tracking(send) if self.wrap else send)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when the drain times out; what we end here ends cleanly
            # (no traceback in the log), what we cannot end (a plain body half sent) is re-raised
            cut = ShutDown("the gateway shut down before the answer was complete")
            if state.open:
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": error_event(cut), "more_body": False})
                return
            if not state.started:
                with contextlib.suppress(Exception):
                    await error_response(cut)(scope, receive, send)
                return
            raise


class DrainingServer(uvicorn.Server):
    """A :class:`uvicorn.Server` that flags ``app.state.draining`` as soon as a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info(
                "signal %d: draining; in-flight requests have %.1fs to finish",
                sig,
                self.config.timeout_graceful_shutdown or 0.0,
            )
            self.app.state.draining = True
        super().handle_exit(sig, frame)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (the kernel spreads new connections over
    every process bound so), listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    app: FastAPI,
    drain_timeout_s: float,
    *,
    host: str,
    port: int,
    http_server: str = "uvicorn",
    reuse_port: bool = False,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve ``app`` on ``host:port`` with ``http_server`` until a stop signal, then drain for
    ``drain_timeout_s`` seconds (blocking). ``reuse_port``: bind with ``SO_REUSEPORT`` (several workers)."""
    if http_server == "granian":
        _run_granian(app, drain_timeout_s, host=host, port=port, log_level=log_level, access_log=access_log)
        return
    if http_server != "uvicorn":
        raise ValueError(f"http_server: unknown server {http_server!r}; choose uvicorn or granian")
    config = uvicorn.Config(
        DrainCutoff(app),
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=log_level,
        access_log=access_log,
        log_config=None,  # uvicorn's records go through the root handler (gateway.logs), in its format
        proxy_headers=False,
        server_header=False,
    )
    # uvicorn annotates it as int but only hands it to asyncio.wait_for: sub-second drains work.
    config.timeout_graceful_shutdown = cast(int, drain_timeout_s)
    sockets = [listening_socket(host, port)] if reuse_port else None
    DrainingServer(config, app).run(sockets=sockets)


def missing_http_server(http_server: str) -> str | None:
    """Why ``http_server`` cannot run here (its package is not installed), or ``None``."""
    if http_server == "granian" and importlib.util.find_spec("granian") is None:
        return "server.http_server: granian is not installed: pip install 'llm-gateway[granian]'"
    return None


def _run_granian(app: FastAPI, drain_timeout_s: float, **options: Any) -> None:
    """granian in this process's event loop (uvloop when installed); granian binds with SO_REUSEPORT itself."""
    if why := missing_http_server("granian"):
        raise SystemExit(why)
    from gateway.server_granian import serve_granian

    main = serve_granian(app, DrainCutoff(app), drain_timeout_s, **options)
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        asyncio.run(main)
