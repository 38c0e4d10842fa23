"""A stream through a real uvicorn on a real socket, the lean upstream client in front of a real socket
upstream (:mod:`raw_upstream`), both sockets' buffers small: a client that does not read holds the stream
back (the relay waits on uvicorn's flow control, the lean client stops reading its backend) and still
gets every event, in order, with one ``[DONE]``; a client that leaves mid-stream closes the upstream
connection (so vLLM aborts) and counts as 499.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from fake_vllm import app_metric
from raw_upstream import LONG_EVENTS, RawUpstream

from gateway.app import create_app
from gateway.settings import Settings

SERIES = {"model": "smol", "strategy": "plain", "endpoint": "chat"}
BODY = json.dumps(
    {"model": "smol", "messages": [{"role": "user", "content": "hi"}], "stream": True}, separators=(",", ":")
).encode()


class Served:
    def __init__(self, app: Any, port: int, upstream: RawUpstream) -> None:
        self.app, self.port, self.upstream = app, port, upstream

    def requests(self, status: str) -> float | None:
        """``gateway_requests_total`` of the one chat series with ``status``."""
        return app_metric(self.app, "gateway_requests_total", **SERIES, status=status)

    async def post(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: a slow client fills it
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        writer.write(head + b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(BODY), BODY))
        return reader, writer


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with RawUpstream("long") as b1:
        settings = Settings.model_validate(
            {
                "backends": [{"name": "b1", "url": b1.url, "served_model": "smol-served", "scrape_metrics": False}],
                "arms": [{"name": "smol-plain", "model": "smol", "backends": ["b1"]}],
                "health": {"interval_s": 3600},
                "timeouts": {"connect_s": 2, "first_byte_s": 5, "idle_s": 5},
                "server": {"upstream_client": "lean"},
            }
        )
        app = create_app(settings)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # inherited by accepted sockets: no autotuning
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, http="httptools", log_config=None, access_log=False, lifespan="on"))
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        s = Served(app, sock.getsockname()[1], b1)
        try:
            yield s
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)


def sse_events(raw: bytes) -> list[Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    text, rest = [], body
    while True:  # de-chunk
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        text.append(rest[:size])
        rest = rest[size + 2 :]
    events = b"".join(text).decode().split("\n\n")
    assert events[-1] == ""
    data = [e.removeprefix("data: ") for e in events[:-1]]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


def contents(events: list[Any]) -> list[str]:
    return [e["choices"][0]["delta"].get("content", "") for e in events if isinstance(e, dict) and e["choices"]]


async def test_a_client_that_keeps_up_gets_the_answer(served: Served) -> None:
    served.upstream.mode = "ok"
    reader, writer = await served.post()
    events = sse_events(await reader.read())
    writer.close()
    assert contents(events) == ["", "Hello"] and events[-1] == "[DONE]"


async def test_a_client_that_does_not_read_holds_the_stream_back_and_loses_nothing(served: Served) -> None:
    reader, writer = await served.post()
    await asyncio.sleep(0.5)  # 2 MB of events meanwhile: far more than the sockets hold
    events = sse_events(await reader.read())
    writer.close()
    got = contents(events)
    assert got[0] == "" and got[-1] == "Hello"
    assert [int(c.split("|", 1)[0]) for c in got[1:-1]] == list(range(LONG_EVENTS)), "every event, in order"
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "error" in e for e in events)
    assert served.requests("200") == 1


async def test_a_client_that_leaves_mid_stream_closes_the_upstream(served: Served) -> None:
    reader, writer = await served.post()
    await reader.readexactly(64 * 1024)
    writer.transport.abort()
    for _ in range(100):
        if served.upstream.open_connections == 0 and served.requests("499"):
            break
        await asyncio.sleep(0.05)
    assert served.upstream.open_connections == 0, "the upstream connection is closed (vLLM aborts)"
    assert served.requests("499") == 1
