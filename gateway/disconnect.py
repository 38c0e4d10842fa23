"""Watching for a client that goes away while the gateway waits on its behalf.

A non-streaming request spends its life waiting on the upstream (headers, then the whole answer)
with nothing to send the client, so nothing notices the client leaving. :func:`unless_disconnected`
runs that wait against the ASGI ``receive`` channel: once the request body has been read, the next
message is ``http.disconnect``, and it cancels the wait (closing the upstream response, so vLLM
aborts the generation) and raises :class:`starlette.requests.ClientDisconnect`. A stream's relay
(:class:`gateway.relay.RelayResponse`) goes on watching with the same watcher task
(:func:`watch_disconnect`): one per request, not one per wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect
from starlette.types import Receive

T = TypeVar("T")


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def watch_disconnect(receive: Receive) -> asyncio.Task[None]:
    """A task that ends when the client disconnects (or, under uvicorn, once the response is complete).
    Start it only after the request body has been read in full (``receive`` yields nothing else then)."""
    return asyncio.ensure_future(_disconnected(receive))


async def stop(watcher: asyncio.Task[None]) -> None:
    """Cancel ``watcher`` and let it end."""
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


async def unless_disconnected(work: Awaitable[T], watcher: asyncio.Task[None]) -> T:
    """The result of ``work``, unless ``watcher`` (:func:`watch_disconnect`) ends first: then ``work`` is
    cancelled (and awaited, so its clean-up has run) and :class:`ClientDisconnect` is raised. The
    watcher is left running when ``work`` wins (and stopped when the wait is cancelled): its owner
    stops it or hands it on."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientDisconnect()
