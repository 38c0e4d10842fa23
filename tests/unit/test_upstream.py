"""The production upstream clients (aiohttp, and the gateway's own on httptools) against a real local
socket: streaming without buffering, keep-alive reuse, the idle-connection cap, error kinds, and closing a
stream early drops its connection. Every test runs against both clients; the lean client's also on uvloop,
the loop the gateway serves on (its transports are not asyncio's classes)."""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from gateway import upstream as upstream_mod
from gateway import upstream_lean
from gateway.settings import TimeoutSettings
from gateway.upstream import AiohttpUpstream, Upstream, UpstreamConnectError, UpstreamIOError, UpstreamTimeout
from gateway.upstream_lean import LeanUpstream

JSON = b'{"ok":true}'


@dataclass
class Server:
    """A tiny HTTP/1.1 server: ``/json`` answers at once, ``/stream`` sends ``count`` chunks ``gap`` s
    apart, ``/silent`` sends headers then nothing, ``/stall`` two chunks then nothing, ``/close`` drops
    the connection without answering."""

    gap: float = 0.0
    count: int = 3
    drop_second: bool = False  # close a connection without answering its second request
    connections: int = 0
    open_now: int = 0
    stream_closed_early: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                served += 1
                if self.drop_second and served == 2:
                    return
                path = head.split(b" ", 2)[1]
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if path == b"/close":
                    return
                if path == b"/json":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                    writer.write(b"content-length: %d\r\n\r\n%s" % (len(JSON), JSON))
                    await writer.drain()
                    continue
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                await writer.drain()
                if path == b"/silent":
                    await asyncio.sleep(30)
                for i in range(self.count):
                    if path == b"/stall" and i == 2:
                        await asyncio.sleep(30)
                    data = b"data: %d\n\n" % i
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    try:
                        await writer.drain()
                    except ConnectionError:
                        self.stream_closed_early.set()
                        return
                    await asyncio.sleep(self.gap)
                    if reader.at_eof():
                        self.stream_closed_early.set()
                        return
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.open_now -= 1
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    s = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = s.sockets[0].getsockname()[1]
    async with s:
        yield srv
        s.close()


Make = Callable[[TimeoutSettings], Upstream]


@pytest.fixture(params=[AiohttpUpstream, LeanUpstream], ids=["aiohttp", "lean"])
def make(request: pytest.FixtureRequest) -> Make:
    """The client class under test."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def client(make: Make) -> AsyncIterator[Upstream]:
    # idle_s well above the test server's 0.05 s chunk gap: room for a loaded CI box
    up = make(TimeoutSettings(connect_s=1.0, first_byte_s=1.0, idle_s=1.0))
    await up.start()
    yield up
    await up.aclose()


async def test_post_reads_whole_body_and_reuses_the_connection(server: Server, client: Upstream) -> None:
    for _ in range(3):
        resp = await client.post(f"http://127.0.0.1:{server.port}/json", b"{}", {}, stream=False)
        assert (resp.status, resp.content_type, await resp.read()) == (200, "application/json", JSON)
        await resp.aclose()
    assert server.connections == 1, "keep-alive: one connection for sequential requests"


async def test_stream_yields_chunks_as_they_arrive(server: Server, client: Upstream) -> None:
    server.gap = 0.05
    resp = await client.post(f"http://127.0.0.1:{server.port}/stream", b"{}", {}, stream=True)
    got = [chunk async for chunk in resp.chunks()]
    await resp.aclose()
    assert got == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"], "one read per chunk: nothing buffered"
    resp = await client.post(f"http://127.0.0.1:{server.port}/json", b"{}", {}, stream=False)
    await resp.read()
    await resp.aclose()
    assert server.connections == 1, "a stream read to its end returns its connection to the pool"


async def test_closing_a_stream_early_closes_its_connection(server: Server, client: Upstream) -> None:
    server.gap = 0.05
    resp = await client.post(f"http://127.0.0.1:{server.port}/stream", b"{}", {}, stream=True)
    async for _ in resp.chunks():
        break
    await resp.aclose()
    await asyncio.wait_for(server.stream_closed_early.wait(), 2)


async def test_idle_stream_times_out(server: Server, client: Upstream) -> None:
    resp = await client.post(f"http://127.0.0.1:{server.port}/silent", b"{}", {}, stream=True)
    with pytest.raises(UpstreamTimeout) as info:
        async for _ in resp.chunks():
            pass
    await resp.aclose()
    assert info.value.kind == "timeout" and not info.value.connecting


async def test_silence_mid_stream_times_out(server: Server, make: Make) -> None:
    up = make(TimeoutSettings(connect_s=1.0, first_byte_s=1.0, idle_s=0.3))
    await up.start()
    try:
        resp = await up.post(f"http://127.0.0.1:{server.port}/stall", b"{}", {}, stream=True)
        got = []
        with pytest.raises(UpstreamTimeout) as info:
            async for chunk in resp.chunks():
                got.append(chunk)
        await resp.aclose()
    finally:
        await up.aclose()
    assert b"".join(got) == b"data: 0\n\ndata: 1\n\n"
    assert info.value.kind == "timeout" and not info.value.connecting


async def test_a_slow_reader_is_not_an_idle_upstream(server: Server, make: Make) -> None:
    """Time the relay holds a chunk (a slow client) does not count towards ``idle_s``."""
    up = make(TimeoutSettings(connect_s=1.0, first_byte_s=1.0, idle_s=0.2))
    await up.start()
    try:
        resp = await up.post(f"http://127.0.0.1:{server.port}/stream", b"{}", {}, stream=True)
        got = []
        async for chunk in resp.chunks():
            got.append(chunk)
            await asyncio.sleep(0.35)
        await resp.aclose()
    finally:
        await up.aclose()
    assert b"".join(got) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_a_stream_arms_no_timer_per_chunk(
    server: Server, client: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle timeout costs one timer per stream, not a cancel and a new timer per read."""
    server.count, server.gap = 30, 0.005
    loop = asyncio.get_running_loop()
    timers = 0
    for name in ("call_later", "call_at"):
        original = getattr(loop, name)

        def counted(when: float, callback: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            nonlocal timers
            timers += "timeout" in repr(callback).lower() or "_check" in repr(callback)  # the client's timers
            return _original(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, name, counted)
    resp = await client.post(f"http://127.0.0.1:{server.port}/stream", b"{}", {}, stream=True)
    before = timers
    got = [chunk async for chunk in resp.chunks()]
    await resp.aclose()
    assert len(got) == 30
    assert timers - before <= 3


async def test_refused_connection_is_a_connect_error(client: Upstream) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(UpstreamConnectError) as info:
            await client.post(f"http://127.0.0.1:{port}/json", b"{}", {}, stream=False)
    assert info.value.kind == "connect"


async def test_dropped_connection_is_a_protocol_error(server: Server, client: Upstream) -> None:
    with pytest.raises(UpstreamIOError) as info:
        await client.post(f"http://127.0.0.1:{server.port}/close", b"{}", {}, stream=False)
    assert type(info.value) is UpstreamIOError and info.value.kind == "protocol"


async def test_get_returns_status_and_body(server: Server, client: Upstream) -> None:
    assert await client.get(f"http://127.0.0.1:{server.port}/json", {}, 1.0) == (200, JSON)


async def test_idle_connections_per_backend_are_capped(
    server: Server, client: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.aclose()
    monkeypatch.setattr(upstream_mod, "MAX_IDLE_PER_BACKEND", 2)
    await client.start()
    server.gap = 0.05
    url = f"http://127.0.0.1:{server.port}/stream"
    resps = await asyncio.gather(*(client.post(url, b"{}", {}, stream=True) for _ in range(5)))
    for resp in resps:
        async for _ in resp.chunks():
            pass
        await resp.aclose()
    await asyncio.sleep(0.05)
    assert server.connections == 5
    assert server.open_now == 2, "only MAX_IDLE_PER_BACKEND connections stay open once the burst is over"


# ----------------------------------------------------------------------------- the lean client's own


@pytest.fixture
async def lean() -> AsyncIterator[LeanUpstream]:
    up = LeanUpstream(TimeoutSettings(connect_s=1.0, first_byte_s=1.0, idle_s=1.0))
    yield up
    await up.aclose()


async def test_lean_sends_again_when_a_reused_connection_was_closed_unanswered(
    server: Server, lean: LeanUpstream
) -> None:
    """A keep-alive connection the server closes as the next request arrives (its idle timeout) is
    not a failed request: the request goes once more on a new connection."""
    server.drop_second = True
    url = f"http://127.0.0.1:{server.port}/json"
    for _ in range(2):
        resp = await lean.post(url, b"{}", {}, stream=False)
        assert await resp.read() == JSON
        await resp.aclose()
    assert server.connections == 2


async def test_lean_refuses_a_header_that_would_split_the_request(server: Server, lean: LeanUpstream) -> None:
    with pytest.raises(UpstreamIOError) as info:
        await lean.post(f"http://127.0.0.1:{server.port}/json", b"{}", {"x-request-id": "a\r\nx-evil: 1"}, False)
    assert info.value.detail == "InvalidHeader" and server.connections == 0


async def test_lean_stops_reading_while_the_reader_lags(
    server: Server, lean: LeanUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past HIGH_WATER bytes not yet taken, the socket is not read (a slow client holds the backend
    back); taking the buffered bytes resumes reading, and nothing is lost."""
    monkeypatch.setattr(upstream_lean, "HIGH_WATER", 1024)
    server.count = 400
    resp = await lean.post(f"http://127.0.0.1:{server.port}/stream", b"{}", {}, stream=True)
    chunks = resp.chunks()
    got = [await anext(chunks)]
    await asyncio.sleep(0.2)  # the server writes all it can meanwhile
    transport = resp.conn.transport  # type: ignore[attr-defined]
    assert not transport.is_reading(), "past the high-water mark the socket is not read"
    got += [chunk async for chunk in chunks]
    await resp.aclose()
    assert b"".join(got) == b"".join(b"data: %d\n\n" % i for i in range(400))


LEAN_ON_UVLOOP = [
    test_post_reads_whole_body_and_reuses_the_connection,
    test_stream_yields_chunks_as_they_arrive,
    test_closing_a_stream_early_closes_its_connection,
    test_idle_stream_times_out,
    test_refused_connection_is_a_connect_error,
    test_dropped_connection_is_a_protocol_error,
    test_get_returns_status_and_body,
    test_lean_sends_again_when_a_reused_connection_was_closed_unanswered,
    test_lean_refuses_a_header_that_would_split_the_request,
    test_lean_stops_reading_while_the_reader_lags,
]


@pytest.mark.parametrize("case", LEAN_ON_UVLOOP, ids=lambda f: f.__name__)
def test_lean_on_uvloop(case: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean client's tests above, on a uvloop event loop with a server of its own."""

    async def main() -> None:
        srv = Server()
        listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
        srv.port = listener.sockets[0].getsockname()[1]
        up = LeanUpstream(TimeoutSettings(connect_s=1.0, first_byte_s=1.0, idle_s=1.0))
        try:
            given = {"server": srv, "client": up, "lean": up, "monkeypatch": monkeypatch}
            async with listener:
                await case(**{name: given[name] for name in inspect.signature(case).parameters})
        finally:
            await up.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
