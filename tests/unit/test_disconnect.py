"""DisconnectWatch: a client's disconnect cancels the armed task and is answered as a disconnect; any
other cancellation goes on as it was."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from gateway.disconnect import DisconnectWatch


class Client:
    """An ASGI ``receive`` whose next message is ``http.disconnect`` once :meth:`leave` is called."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self.left.set()


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
async def watch(client: Client) -> AsyncIterator[DisconnectWatch]:
    """A watch on ``client``, closed after the test."""
    w = DisconnectWatch(client.receive)
    yield w
    w.close()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_guard_returns_the_work_result_and_leaves_the_task_uncancelled(
    client: Client, watch: DisconnectWatch
) -> None:

    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await watch.guard(work()) == 7
    assert not watch.armed
    client.leave()  # after the guard: nothing is cancelled
    await _settle()
    assert watch.gone and not watch.fired
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_disconnect_cancels_the_work_and_raises_client_disconnect(
    client: Client, watch: DisconnectWatch
) -> None:
    cleaned = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    asyncio.get_running_loop().call_later(0.01, client.leave)
    with pytest.raises(ClientDisconnect):
        await watch.guard(work())
    assert cleaned.is_set(), "the work's clean-up ran before the guard raised"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0, "the watch took its cancellation back"
    await asyncio.sleep(0)  # the task goes on awaiting normally: no cancellation is pending


async def test_a_disconnect_before_the_guard_raises_without_running_the_work(
    client: Client, watch: DisconnectWatch
) -> None:
    client.leave()
    await _settle()
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(ClientDisconnect):
        await watch.guard(work())
    assert not ran
    assert watch.arm() is False, "a disconnect seen while disarmed is reported by the next arm"


async def test_another_cancellation_is_not_taken_for_a_disconnect(client: Client, watch: DisconnectWatch) -> None:

    async def request() -> None:
        await watch.guard(asyncio.sleep(30))

    task = asyncio.ensure_future(request())
    await _settle()
    task.cancel()  # the drain cutoff, say
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("leave_first", [True, False])
async def test_a_disconnect_and_another_cancellation_together_stay_a_cancellation(
    leave_first: bool, client: Client, watch: DisconnectWatch
) -> None:
    outcome: list[str] = []

    async def request() -> None:
        try:
            await watch.guard(asyncio.sleep(30))
        except ClientDisconnect:
            outcome.append("disconnect")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    task = asyncio.ensure_future(request())
    await _settle()
    if leave_first:  # the watch cancels the task first, then the drain cutoff does
        client.leave()
        await asyncio.sleep(0)
        assert watch.fired
    task.cancel()  # the drain cutoff (and, the other way round, the client leaves in the same loop turn)
    client.leave()
    await _settle()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]


async def test_a_disarmed_watch_cancels_nothing(client: Client, watch: DisconnectWatch) -> None:
    assert watch.arm()
    watch.disarm()
    client.leave()
    await _settle()
    await asyncio.sleep(0.01)  # would raise CancelledError had the watch cancelled this task
    assert watch.gone and not watch.fired


async def test_close_stops_the_watcher(client: Client, watch: DisconnectWatch) -> None:
    watch.close()
    await _settle()
    client.leave()
    await _settle()
    assert not watch.gone
