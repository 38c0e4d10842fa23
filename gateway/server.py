"""Running the app under uvicorn with a graceful drain on SIGTERM / SIGINT.

On the first signal the gateway

1. marks the app as draining (``app.state.draining``): ``/ready`` answers 503 from then on;
2. stops accepting connections and closes idle keep-alive ones (uvicorn);
3. lets in-flight requests, streams included, finish for up to ``server.drain_timeout_s``;
4. then cancels whatever is left — a stream cut this way still ends with an SSE error event
   and ``data: [DONE]`` (:class:`DrainCutoff`), so no client mistakes it for a whole answer —
   runs the app's shutdown (backend polling, upstream client) and exits.

A second SIGINT (Ctrl-C) exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import FrameType
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ShutDown, error_response
from gateway.sse import error_event

log = logging.getLogger("gateway.server")


class DrainCutoff:
    """ASGI middleware: a stream still open when the drain timeout cancels it ends with an SSE
    error event (``shutting_down``) and ``data: [DONE]`` instead of a bare connection close; a
    request whose answer had not started gets a 503 ``shutting_down`` envelope. Either way the
    request's task then ends normally (the relay has stopped writing: gateway/relay.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"sse": False, "open": False, "started": False}

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                ctype = dict(message.get("headers") or ()).get(b"content-type", b"")
                state["sse"] = state["open"] = ctype.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["open"] = False
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when the drain times out; what we end here ends cleanly
            # (no traceback in the log), what we cannot end (a plain body half sent) is re-raised
            cut = ShutDown("the gateway shut down before the answer was complete")
            if state["sse"] and state["open"]:
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": error_event(cut), "more_body": False})
                return
            if not state["started"]:
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


def serve(app: FastAPI, drain_timeout_s: float, **uvicorn_options: Any) -> None:
    """Serve ``app`` until a stop signal, then drain for ``drain_timeout_s`` seconds (blocking)."""
    config = uvicorn.Config(DrainCutoff(app), **uvicorn_options)
    # uvicorn annotates it as int but only hands it to asyncio.wait_for: sub-second drains work.
    config.timeout_graceful_shutdown = cast(int, drain_timeout_s)
    DrainingServer(config, app).run()
