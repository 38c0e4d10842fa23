"""The gateway's own HTTP/1.1 client towards its backends (``server.upstream_client: lean``).

The same :class:`~gateway.upstream.Upstream` contract as :class:`~gateway.upstream.AiohttpUpstream`
(timeouts, error kinds, keep-alive, a stream closed early closes its connection), built for the one
thing a gateway does with it: send a small request and relay the answer's body as it arrives.
An :class:`asyncio.Protocol` per connection feeds httptools' C parser (llhttp, the parser uvicorn
uses on the server side); each body chunk is one callback that appends to a list and wakes the reader.
There is no request object, header multidict, URL object, tracing signal, cookie jar or per-read
timer: a 16-token stream costs a few dozen Python calls in here instead of aiohttp's ~460.

What it does not do, because backends do not need it: HTTP/2, proxies, redirects, decompression,
``Expect: 100-continue``, upgrades (an upgrade is a protocol error). TLS is asyncio's
(``https://`` backends, the system's trust store).

Connections: per backend (scheme, host, port) a stack of idle keep-alive connections, the most
recently used taken first, at most :data:`~gateway.upstream.MAX_IDLE_PER_BACKEND`, each closed once
idle for :data:`~gateway.upstream.KEEPALIVE_S`. A request sent on a reused connection that the server
closed before answering a single byte (it timed the connection out as the request left) is sent once
more on a new connection; any other failure is the caller's to handle (failover, continuation).

Flow control: past :data:`HIGH_WATER` bytes of body not yet taken by the reader, the socket stops
being read, so a slow client holds back the backend instead of filling the gateway's memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from gateway import upstream as _limits
from gateway.settings import TimeoutSettings
from gateway.upstream import (
    IdleTimer,
    Upstream,
    UpstreamConnectError,
    UpstreamIOError,
    UpstreamResponse,
    UpstreamTimeout,
    whole_answer_timeout,
)

#: Body bytes buffered for the reader before the socket stops being read.
HIGH_WATER = 256 * 1024
#: Largest response head (status line and headers) accepted from a backend.
MAX_HEAD_BYTES = 64 * 1024


#: Failures of a reused connection, before any byte of the answer, that mean the server had closed it.
_STALE = frozenset({"ServerDisconnected", "ConnectionResetError", "BrokenPipeError"})


class _Target:
    """A parsed backend URL: where to connect and the request line's start, computed once per URL."""

    __slots__ = ("host", "key", "port", "prefix", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamConnectError("InvalidURL", f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if tls else 80)
        self.key = (parts.scheme, self.host, self.port)
        self.tls = tls
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None:
            host += f":{parts.port}"
        self.prefix = f" {target} HTTP/1.1\r\nhost: {host}\r\n".encode("latin-1")

    def request(self, method: bytes, headers: Mapping[str, str], body: bytes | None) -> bytes:
        lines = [method, self.prefix]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise UpstreamIOError("InvalidHeader", f"header {name!r} holds a line break or a colon")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is None:
            lines.append(b"\r\n")
        else:
            lines.append(b"content-length: %d\r\n\r\n" % len(body))
            lines.append(body)
        return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; at most one exchange at a time (:attr:`exchange`)."""

    __slots__ = ("exchange", "idle_since", "keep_alive", "key", "open", "parser", "transport")

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.open = True
        self.keep_alive = True
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None or ex._done:  # bytes nobody asked for: the connection cannot be reused
            self.close()
            return
        ex.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            ex.fail(UpstreamIOError("HttpParserUpgrade", "the backend switched protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            ex.fail(UpstreamIOError("HttpParserError", f"malformed response from the backend: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        self.open = False
        return False  # close the transport: a half-closed backend connection is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        ex = self.exchange
        if ex is not None:
            ex.lost(exc)

    # httptools callbacks
    def _current(self) -> _Exchange | None:
        """The exchange a parser callback belongs to; ``None`` (and no reuse) for a second, unasked message."""
        ex = self.exchange
        if ex is not None and ex._done:
            self.keep_alive = False
            return None
        return ex

    def on_header(self, name: bytes, value: bytes) -> None:
        if (ex := self._current()) is not None:
            ex.header(name, value)

    def on_headers_complete(self) -> None:
        if (ex := self._current()) is not None:
            ex.headers_complete(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        # the per-read path: written out here rather than through _current() and _Exchange.feed()
        ex = self.exchange
        if ex is None or ex._done:
            self.keep_alive = False
            return
        ex._chunks.append(body)
        ex._buffered += len(body)
        if ex._buffered > HIGH_WATER and not ex._paused and self.transport is not None:
            ex._paused = True
            self.transport.pause_reading()
        waiter = ex._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        if (ex := self._current()) is not None:
            self.keep_alive = self.parser.should_keep_alive()
            ex.complete()

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


class _Exchange(UpstreamResponse):
    """One request's answer on a :class:`_Connection`: the head as it arrives, then the body."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_done",
        "_error",
        "_head_bytes",
        "_headers",
        "_idle",
        "_length_known",
        "_paused",
        "_upstream",
        "_waiter",
        "answered",
        "conn",
        "content_type",
        "deadline",
        "retry_after",
        "status",
    )

    def __init__(self, upstream: LeanUpstream, conn: _Connection) -> None:
        self._upstream, self.conn = upstream, conn
        self._headers: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunks: list[bytes] = []
        self._buffered = self._head_bytes = 0
        self._done = self._paused = self._length_known = self.answered = False
        self._error: UpstreamIOError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._idle: IdleTimer | None = None
        self.deadline: float | None = None  # loop time by which read() must have the whole body
        self.status = 0
        self.content_type = "application/json"
        self.retry_after: str | None = None
        conn.exchange = self

    # -- fed by the connection
    def header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.fail(UpstreamIOError("HeadersTooLarge", f"response headers over {MAX_HEAD_BYTES} bytes"))
            self.conn.close()
            return
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value.decode("latin-1")
        elif lower == b"retry-after":
            self.retry_after = value.decode("latin-1")
        elif lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
            self._length_known = True

    def headers_complete(self, status: int) -> None:
        self.status = status
        if not self._headers.done():
            self._headers.set_result(None)

    def complete(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: UpstreamIOError) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        if not self._headers.done():
            self._headers.set_exception(error)
        self._wake()

    def lost(self, exc: Exception | None) -> None:
        if self._done or self._error is not None:
            return
        if not self._headers.done():
            if not self.answered:
                self.fail(UpstreamIOError("ServerDisconnected", "the backend closed the connection before answering"))
            else:
                self.fail(UpstreamIOError("HttpParserError", "the backend's response head ended early"))
        elif exc is None and not self._length_known and not self.conn.parser.should_keep_alive():
            self.complete()  # a body delimited by the end of the connection
        else:
            detail = type(exc).__name__ if exc is not None else "IncompleteBody"
            self.fail(UpstreamIOError(detail, "the backend closed the connection before the body ended"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the client
    async def wait_headers(self, at: float, timeout_s: float, what: str) -> None:
        """Until the head is in, or ``at`` (loop time): then a timeout naming ``timeout_s`` and ``what``."""
        loop = asyncio.get_running_loop()
        error = UpstreamTimeout("TimeoutError", f"no response headers within {timeout_s:g} s ({what})")
        handle = loop.call_at(at, self.fail, error)
        try:
            await self._headers
        except BaseException:
            self.conn.close()
            raise
        finally:
            handle.cancel()

    def stream_idle(self, idle_s: float) -> None:
        """Fail the body once the reader has waited ``idle_s`` for a chunk (one timer per stream)."""

        def expire() -> None:
            self.fail(UpstreamTimeout("TimeoutError", f"no data from the backend for {idle_s:g} s (idle_s)"))
            self.conn.close()

        self._idle = IdleTimer(expire, idle_s)

    # -- UpstreamResponse
    async def read(self) -> bytes:
        parts: list[bytes] = []
        try:
            async with asyncio.timeout_at(self.deadline):
                async for chunk in self.chunks():
                    parts.append(chunk)
        except TimeoutError:
            self.conn.close()
            raise whole_answer_timeout(self._upstream.whole_s) from None
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        idle = self._idle
        loop = asyncio.get_running_loop()
        try:
            while True:
                pending = self._chunks
                if pending:
                    self._chunks, self._buffered = [], 0
                    if self._paused:
                        self._paused = False
                        if self.conn.transport is not None:
                            self.conn.transport.resume_reading()
                    yield pending[0] if len(pending) == 1 else b"".join(pending)
                    continue
                if self._done:
                    return
                if self._error is not None:
                    raise self._error
                waiter = self._waiter = loop.create_future()
                if idle is not None:
                    idle.waiting_since = loop.time()
                try:
                    await waiter
                finally:
                    self._waiter = None
                    if idle is not None:
                        idle.waiting_since = None
        finally:
            if idle is not None:
                idle.stop()

    async def aclose(self) -> None:
        if self._idle is not None:
            self._idle.stop()
        conn = self.conn
        if conn.exchange is self:
            conn.exchange = None
        if self._done and conn.keep_alive and conn.open:
            self._upstream.release(conn)
        else:
            conn.close()


class LeanUpstream(Upstream):
    """Production client built on asyncio and httptools; see the module docstring."""

    def __init__(self, timeouts: TimeoutSettings) -> None:
        self._connect_s = timeouts.connect_s
        self.whole_s = timeouts.first_byte_s
        self._idle_s = timeouts.idle_s
        self._targets: dict[str, _Target] = {}
        self._tls_context: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}

    def _tls(self) -> ssl.SSLContext:
        """One TLS context (the system's trust store, loaded once) for every ``https://`` backend."""
        if self._tls_context is None:
            self._tls_context = ssl.create_default_context()
        return self._tls_context

    def _target(self, url: str) -> _Target:
        t = self._targets.get(url)
        if t is None:
            t = self._targets[url] = _Target(url)
        return t

    # -- the pool
    def _take(self, key: tuple[str, str, int], now: float) -> _Connection | None:
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            if conn.open and now - conn.idle_since < _limits.KEEPALIVE_S:
                return conn
            conn.close()
        return None

    def release(self, conn: _Connection) -> None:
        now = asyncio.get_running_loop().time()
        stack = self._idle.setdefault(conn.key, deque())
        while stack and (not stack[0].open or now - stack[0].idle_since >= _limits.KEEPALIVE_S):
            stack.popleft().close()
        if len(stack) >= _limits.MAX_IDLE_PER_BACKEND:
            conn.close()
            return
        conn.idle_since = now
        stack.append(conn)

    async def _connect(self, t: _Target, limit_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(t.key),
                    t.host,
                    t.port,
                    ssl=self._tls() if t.tls else None,
                    server_hostname=t.host if t.tls else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(
                "ConnectionTimeoutError", f"connecting to {t.host}:{t.port} took over {limit_s:g} s", connecting=True
            ) from None
        except OSError as exc:
            raise UpstreamConnectError(type(exc).__name__, f"cannot connect to {t.host}:{t.port}: {exc}") from None
        return conn

    async def _exchange(
        self, url: str, method: bytes, body: bytes | None, headers: Mapping[str, str], head_s: float, what: str
    ) -> _Exchange:
        """Send the request; return once the answer's head is in, at most ``head_s`` from now."""
        t = self._target(url)
        request = t.request(method, headers, body)
        loop = asyncio.get_running_loop()
        at = loop.time() + head_s
        for _ in range(2):
            conn = self._take(t.key, loop.time())
            reused = conn is not None
            if conn is None:
                conn = await self._connect(t, max(0.0, min(self._connect_s, at - loop.time())))
            ex = _Exchange(self, conn)
            assert conn.transport is not None
            conn.transport.write(request)
            try:
                await ex.wait_headers(at, head_s, what)
            except UpstreamIOError as exc:
                if reused and not ex.answered and exc.detail in _STALE:
                    continue  # the server closed the idle connection as the request left: once more
                raise
            return ex
        raise UpstreamIOError("ServerDisconnected", "the backend closed the connection before answering")

    # -- Upstream
    async def post(self, url: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamResponse:
        if stream:
            ex = await self._exchange(url, b"POST", body, headers, self._idle_s, "idle_s")
            ex.stream_idle(self._idle_s)
            return ex
        deadline = asyncio.get_running_loop().time() + self.whole_s
        ex = await self._exchange(url, b"POST", body, headers, self.whole_s, "first_byte_s")
        ex.deadline = deadline
        return ex

    async def get(self, url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        deadline = asyncio.get_running_loop().time() + timeout
        ex = await self._exchange(url, b"GET", None, headers, timeout, "health check")
        ex.deadline = deadline
        try:
            return ex.status, await ex.read()
        finally:
            await ex.aclose()

    async def aclose(self) -> None:
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()
