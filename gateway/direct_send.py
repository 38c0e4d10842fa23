"""Sending an ASGI message without awaiting it, where the server allows it.

A stream's relay (:mod:`gateway.relay`) can write each upstream read to the client from the upstream
connection's read callback (:meth:`gateway.upstream.UpstreamResponse.feed`) instead of waking the
request's task for it, but only with a ``send`` it may call without awaiting. uvicorn's ``send``
(httptools and h11 protocols alike) awaits only while the client's socket has asked it to stop
writing (``flow.write_paused``); otherwise it writes and returns without suspending.

:func:`sync_send` gives, for such a ``send``, a function that sends a message at once and returns
``True``, or returns ``False`` having done nothing when ``send`` would have to wait (the caller then
awaits ``send`` itself); and ``None`` for any other server (granian, a test harness, a middleware that
wraps ``send``), whose ``send`` is always awaited.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

from starlette.types import Message, Send

#: The modules whose ``RequestResponseCycle.send`` awaits nothing but the flow control's drain.
_UVICORN_CYCLES = ("uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl")

SendNow = Callable[[Message], bool]


def sync_send(send: Send) -> SendNow | None:
    """A function sending a message without awaiting when ``send`` is uvicorn's; else ``None``."""
    cycle: Any = getattr(send, "__self__", None)
    cls = type(cycle)
    if cls.__module__ not in _UVICORN_CYCLES or getattr(send, "__func__", None) is not getattr(cls, "send", None):
        return None
    flow = getattr(cycle, "flow", None)
    if flow is None or not hasattr(flow, "write_paused"):
        return None

    def send_now(message: Message) -> bool:
        if flow.write_paused and not cycle.disconnected:
            return False  # it would wait for the client's socket to drain
        step = cast(Coroutine[Any, Any, None], send(message))
        try:
            step.send(None)
        except StopIteration:
            return True
        step.close()
        raise RuntimeError("the server's send waited although the client's socket took writes")

    return send_now
