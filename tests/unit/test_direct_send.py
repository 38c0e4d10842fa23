"""Sending without awaiting (gateway/direct_send.py) through a real uvicorn on a real socket: every
message arrives whole and in order; while the client does not read, the send that would wait is
refused (nothing written) and the caller's awaited send takes over; any other ``send`` gets ``None``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from gateway.direct_send import sync_send

PIECE = b"x" * 256 * 1024


class App:
    """Streams ``pieces`` pieces with ``send_now``, awaiting ``send`` for the ones it refuses."""

    def __init__(self, pieces: int) -> None:
        self.pieces = pieces
        self.refused = 0
        self.sent_now = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        send_now = sync_send(send)
        assert send_now is not None
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(self.pieces):
            message = {"type": "http.response.body", "body": PIECE, "more_body": i < self.pieces - 1}
            if send_now(message):
                self.sent_now += 1
            else:
                self.refused += 1
                await send(message)


@pytest.fixture(params=["httptools", "h11"])
async def serve(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: App) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, http=request.param, log_config=None, access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        servers.append((server, task))
        while not server.started:
            await asyncio.sleep(0.01)
        return int(sock.getsockname()[1])

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 5)


async def _get(port: int, read_after_s: float = 0.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
    await asyncio.sleep(read_after_s)  # the server writes meanwhile, until the socket is full
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"transfer-encoding: chunked" in head.lower()
    out, rest = [], body
    while True:  # de-chunk
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out)
        out.append(rest[:size])
        rest = rest[size + 2 :]


async def test_every_message_sent_without_awaiting_arrives(serve: Any) -> None:
    app = App(pieces=4)
    body = await _get(await serve(app))
    assert body == PIECE * 4
    assert app.sent_now >= 1


async def test_a_full_client_socket_refuses_and_the_awaited_send_takes_over(serve: Any) -> None:
    app = App(pieces=64)  # 16 MiB: far more than the socket buffers hold
    body = await _get(await serve(app), read_after_s=0.3)
    assert body == PIECE * 64, "nothing lost or repeated across the refusals"
    assert app.refused >= 1 and app.sent_now >= 1


def test_any_other_send_cannot_be_sent_without_awaiting() -> None:
    async def send(message: dict[str, Any]) -> None:
        pass

    class Cycle:
        async def send(self, message: dict[str, Any]) -> None:
            pass

    assert sync_send(send) is None
    assert sync_send(Cycle().send) is None
