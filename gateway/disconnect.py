"""Watching for a client that goes away while the gateway waits on its behalf.

A non-streaming request spends its life waiting on the upstream (headers, then the whole answer)
with nothing to send the client, so nothing notices the client leaving. :func:`unless_disconnected`
runs that wait against the ASGI ``receive`` channel: once the request body has been read, the next
message is ``http.disconnect``, and it cancels the wait (closing the upstream response, so vLLM
aborts the generation) and raises :class:`starlette.requests.ClientDisconnect`.
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


async def unless_disconnected(work: Awaitable[T], receive: Receive) -> T:
    """The result of ``work``, unless the client disconnects first: then ``work`` is cancelled (and
    awaited, so its clean-up has run) and :class:`ClientDisconnect` is raised.

    Call only after the request body has been read in full (``receive`` yields nothing else then).
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientDisconnect()
