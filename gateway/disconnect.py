"""Watching for a client that goes away while the gateway works on its behalf.

A non-streaming request spends its life waiting on the upstream (headers, then the whole answer)
with nothing to send the client, and a stream's relay sends nothing while the upstream is silent, so
nothing notices the client leaving unless something reads the ASGI ``receive`` channel: once the
request body has been read, its next message is ``http.disconnect``.

:class:`DisconnectWatch` is that reader, one task per request. The work itself runs in the request's
own task, not in a task of its own raced against the watcher (that cost a task and an
``asyncio.wait`` per wait, two per stream): while the watch is *armed* a disconnect cancels the
request's task, and the code that armed it takes that cancellation back (``Task.uncancel``) and
answers it as a disconnect:

* :meth:`DisconnectWatch.guard` awaits the wait for the upstream and raises
  :class:`starlette.requests.ClientDisconnect` instead (the upstream call is cancelled, its response
  closed, so vLLM aborts the generation);
* a stream's relay (:class:`gateway.relay.RelayResponse`) runs its whole relay under the same watch's
  :meth:`~DisconnectWatch.guard` and disarms it once the client has the whole answer (uvicorn answers ``receive`` with
  ``http.disconnect`` as soon as a response is complete: that is not the client leaving).

A cancellation that is not the watch's — the drain cutoff (``gateway/server.py``) cancels a request
that outlives the drain — is never taken back: :meth:`DisconnectWatch.guard` re-raises it, and it goes
on as before. A disconnect seen while the watch is disarmed is kept: the next :meth:`arm` reports it.

Async-safety: one watch per request, used by that request's task only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect
from starlette.types import Receive

T = TypeVar("T")


class DisconnectWatch:
    """Reads ``receive`` until ``http.disconnect``; cancels the armed task then (module docstring).
    Start it only after the request body has been read in full (``receive`` yields nothing else then)."""

    __slots__ = ("_watcher", "armed", "fired", "gone", "task")

    def __init__(self, receive: Receive) -> None:
        self.task: asyncio.Task[object] | None = None  # the task armed, if any
        self.armed = False
        self.gone = False  # the client disconnected (or, under uvicorn, the response is complete)
        self.fired = False  # this watch cancelled the armed task and nobody took it back yet
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self.armed and self.task is not None:
            self.armed, self.fired = False, True
            self.task.cancel()

    def arm(self) -> bool:
        """Cancel the current task if the client disconnects from now on; ``False`` (and not armed) if
        it already has."""
        if self.gone:
            return False
        self.task = asyncio.current_task()
        self.armed = True
        return True

    def disarm(self) -> None:
        self.armed = False

    def _taken(self) -> bool:
        """Called while a ``CancelledError`` is handled in the armed task: whether it is this watch's
        alone. If so it is taken back and the caller answers a disconnect; if not (another cancel came
        too, or only another) the caller re-raises."""
        if not self.fired or self.task is None:
            return False
        self.fired = False
        return self.task.uncancel() == 0

    async def guard(self, work: Awaitable[T]) -> T:
        """The result of ``work``, awaited in this task; :class:`ClientDisconnect` if the client
        disconnects first (``work`` is then cancelled: its clean-up has run when this raises)."""
        if not self.arm():
            if hasattr(work, "close"):
                work.close()  # a coroutine never awaited: no "never awaited" warning
            raise ClientDisconnect()
        try:
            return await work
        except asyncio.CancelledError:
            if self._taken():
                raise ClientDisconnect() from None
            raise
        finally:
            self.armed = False

    def close(self) -> None:
        """Stop watching (the watcher task is cancelled; nothing is awaited)."""
        self.armed = False
        self._watcher.cancel()
