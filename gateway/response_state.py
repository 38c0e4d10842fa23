"""What :class:`gateway.server.DrainCutoff` must know of a request's response when the drain timeout
cancels it: whether it started, and whether it is a stream still open.

``DrainCutoff`` puts a :class:`ResponseState` in the ASGI scope under :data:`KEY`. In the gateway's
app (``keeps_response_state``) the generation endpoints' own path (:mod:`gateway.lean_app`) and the
relay (:mod:`gateway.relay`) keep it up to date themselves, so that no wrapper sits between a stream
and the server for every message it sends; every other route goes through FastAPI with its ``send``
wrapped by :meth:`ResponseState.tracking`, as is any other app's.

Async-safety: one per request, touched by that request's tasks only.
"""

from __future__ import annotations

from starlette.types import Message, Scope, Send

KEY = "gateway.response_state"


class ResponseState:
    """``started``: the response's start was sent; ``open``: an SSE stream that has not ended."""

    __slots__ = ("open", "started")

    def __init__(self) -> None:
        self.started = False
        self.open = False

    def tracking(self, send: Send) -> Send:
        """``send`` that keeps this state from the messages it passes (for responses that do not)."""

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.started = True
                ctype = dict(message.get("headers") or ()).get(b"content-type", b"")
                self.open = ctype.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.open = False
            await send(message)

        return tracked


def of(scope: Scope) -> ResponseState | None:
    """The request's state, when something (``DrainCutoff``) asked for it."""
    return scope.get(KEY)
