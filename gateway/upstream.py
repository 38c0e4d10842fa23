"""The gateway's HTTP client towards its backends: one small interface, three implementations.

:class:`Upstream` is all the gateway needs from an HTTP client: a POST whose response body can be
read whole or relayed chunk by chunk as it arrives, and a GET for health checks and load scrapes.

* :class:`gateway.upstream_lean.LeanUpstream` — production, the default (``server.upstream_client:
  lean``): the gateway's own HTTP/1.1 client on an asyncio protocol and httptools' parser.
* :class:`AiohttpUpstream` — production (``server.upstream_client: aiohttp``). One
  ``aiohttp.ClientSession`` per process (C HTTP parser, no anyio, no cookie jar, no decompression).

Both keep at most :data:`MAX_IDLE_PER_BACKEND` idle connections per backend, each dropped after
:data:`KEEPALIVE_S` of idleness.
* :class:`HttpxUpstream` — any ``httpx.AsyncBaseTransport`` (``httpx.MockTransport`` in tests, or an
  injected transport); what ``create_app(settings, transport=...)`` uses.

:func:`build_upstream` picks one from the settings.

Timeouts (from ``settings.timeouts``): ``connect_s`` to open a connection; until the response
headers arrive, ``first_byte_s`` (``idle_s`` for streams, whose headers come at once); between two
body reads, ``idle_s`` for streams and ``first_byte_s`` otherwise. A non-streaming answer must also
arrive *whole* within ``first_byte_s`` of the POST (headers and body together), so an upstream that
trickles its body a byte at a time cannot hold a request past it.

Exceptions — every failure to talk to a backend is an :class:`UpstreamIOError`; nothing else
escapes (the library's own exceptions never reach the caller)::

    UpstreamIOError            kind "protocol": connection lost, malformed response
    ├── UpstreamConnectError   kind "connect": refused, unresolvable, connection reset while connecting
    └── UpstreamTimeout        kind "timeout" ("connect_timeout" when ``connecting``: connect timed out)

Closing a response (:meth:`UpstreamResponse.aclose`, always called) returns its connection to the
pool if the body was read to its end, and otherwise closes the connection — so a client that goes
away mid-stream makes vLLM see a disconnect and abort the generation.

Async-safety: one instance serves all concurrent requests of its event loop.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import httpx
from yarl import URL

from gateway.settings import Settings, TimeoutSettings

#: Idle keep-alive connections kept per backend; more are closed when released. Above the expected
#: per-backend concurrency, so steady load reuses connections rather than opening new ones.
MAX_IDLE_PER_BACKEND = 64
#: An idle connection is dropped after this long: under uvicorn's default keep-alive (5 s, vLLM's
#: too), so the gateway does not send a request on a connection the server is closing.
KEEPALIVE_S = 4.0


class UpstreamIOError(Exception):
    """A backend could not be reached or did not answer properly. ``detail``: the cause's type name."""

    kind = "protocol"

    def __init__(self, detail: str, message: str = "") -> None:
        super().__init__(message or detail)
        self.detail = detail


class UpstreamConnectError(UpstreamIOError):
    """No connection could be opened (refused, unresolvable host, ...)."""

    kind = "connect"


class UpstreamTimeout(UpstreamIOError):
    """A timeout: connecting (``connecting=True``), waiting for headers, or between two body reads."""

    kind = "timeout"

    def __init__(self, detail: str, message: str = "", connecting: bool = False) -> None:
        super().__init__(detail, message)
        self.connecting = connecting
        if connecting:
            # not "connect": a refused connection proves the backend is gone, a slow connect does not
            # (a CPU-starved gateway sees those too), so it counts towards health.unhealthy_after
            self.kind = "connect_timeout"


class UpstreamResponse(abc.ABC):
    """An upstream response whose headers have arrived; the body is read with :meth:`read` or
    :meth:`chunks` (once), then :meth:`aclose` must be called (it never raises)."""

    status: int
    content_type: str
    retry_after: str | None  # the response's Retry-After header, if any

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The whole body. Raises :class:`UpstreamIOError`."""

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (transfer encoding removed, no buffering).
        Raises :class:`UpstreamIOError`."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the connection: back to the pool if the body was read to its end, else closed."""


class Upstream(abc.ABC):
    """The HTTP client shared by the whole app. ``url`` is absolute (a backend's base URL + path)."""

    @abc.abstractmethod
    async def post(self, url: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamResponse:
        """Send a JSON POST; return once the response headers have arrived.

        ``stream`` selects the timeouts (see the module docstring). Raises :class:`UpstreamIOError`.
        """

    @abc.abstractmethod
    async def get(self, url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        """``(status, body)`` of a GET that must complete within ``timeout`` seconds.
        Raises :class:`UpstreamIOError`."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open what needs a running event loop (called from the app's lifespan)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every connection."""


def whole_answer_timeout(limit_s: float) -> UpstreamTimeout:
    return UpstreamTimeout("TimeoutError", f"the whole answer did not arrive within {limit_s:g} s (first_byte_s)")


# ============================================================================ aiohttp


def _aiohttp_error(exc: BaseException, connecting: bool = False) -> UpstreamIOError:
    detail = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(detail, str(exc), connecting=True)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(detail, str(exc), connecting=connecting)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(detail, str(exc))
    return UpstreamIOError(detail, str(exc))


class _CappedConnector(aiohttp.TCPConnector):
    """A TCP connector that keeps at most ``max_idle`` idle connections per host."""

    def __init__(self, max_idle: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_idle = max_idle

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        idle = self._conns.get(key)
        if idle is not None and len(idle) >= self._max_idle:
            should_close = True
        super()._release(key, protocol, should_close=should_close)


class IdleTimer:
    """``idle_s`` for a streamed body without moving a timer at every read, as aiohttp's ``sock_read``
    does (a cancel and a new timer per chunk): the reader notes when it starts waiting
    (``waiting_since``) and when it stops (``None``); the one timer, when it fires, calls ``expire()``
    if the reader has waited ``idle_s`` for a chunk, and otherwise re-arms itself. Time the relay
    spends with a chunk (a slow client) is not idle time."""

    __slots__ = ("expire", "handle", "idle_s", "loop", "waiting_since")

    def __init__(self, expire: Callable[[], None], idle_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.expire, self.idle_s = expire, idle_s
        self.waiting_since: float | None = self.loop.time()
        self.handle: asyncio.TimerHandle | None = self.loop.call_at(self.waiting_since + idle_s, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        since = self.waiting_since
        if since is not None and now - since >= self.idle_s:
            self.handle = None
            self.expire()
            return
        self.handle = self.loop.call_at((now if since is None else since) + self.idle_s, self._check)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class _AiohttpResponse(UpstreamResponse):
    __slots__ = ("_deadline", "_idle", "_limit_s", "_resp", "content_type", "retry_after", "status")

    def __init__(
        self, resp: aiohttp.ClientResponse, deadline: float | None = None, limit_s: float = 0.0, idle_s: float = 0.0
    ) -> None:
        self._resp = resp
        self._deadline, self._limit_s = deadline, limit_s  # loop time by which read() must be done
        self.status = resp.status
        self.content_type = resp.headers.get("content-type", "application/json")
        self.retry_after = resp.headers.get("retry-after")
        self._idle: IdleTimer | None = None
        conn = resp.connection
        if idle_s and conn is not None and conn.protocol is not None:
            # the body's idle timeout is ours from here (aiohttp's, armed at the headers, is not re-armed)
            conn.protocol.read_timeout = None
            content = resp.content
            self._idle = IdleTimer(
                lambda: content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket")), idle_s
            )

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout_at(self._deadline):
                try:
                    return await self._resp.read()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise _aiohttp_error(exc) from None
        except TimeoutError:
            raise whole_answer_timeout(self._limit_s) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        content, idle = self._resp.content, self._idle
        try:
            if idle is None:
                while chunk := await content.readany():
                    yield chunk
                return
            time = idle.loop.time
            while True:
                idle.waiting_since = time()
                chunk = await content.readany()
                idle.waiting_since = None
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _aiohttp_error(exc) from None
        finally:
            if idle is not None:
                idle.stop()

    async def aclose(self) -> None:
        if self._idle is not None:
            self._idle.stop()
        resp = self._resp
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()


class AiohttpUpstream(Upstream):
    """Production client: one aiohttp session, keep-alive, bounded idle connections per backend."""

    def __init__(self, timeouts: TimeoutSettings) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect_s, sock_read=timeouts.idle_s
        )
        self._once_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect_s, sock_read=timeouts.first_byte_s
        )
        self._whole_s = timeouts.first_byte_s
        self._idle_s = timeouts.idle_s
        self._urls: dict[str, URL] = {}

    async def start(self) -> None:
        if self._session is None:
            connector = _CappedConnector(
                MAX_IDLE_PER_BACKEND,
                limit=0,  # no cap on concurrent requests: admission is the gateway's job, not the pool's
                keepalive_timeout=KEEPALIVE_S,
                ttl_dns_cache=60,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                timeout=self._once_timeout,
            )

    def _url(self, url: str) -> URL:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = URL(url)
        return parsed

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamResponse:
        if self._session is None:
            await self.start()
        assert self._session is not None
        deadline = None if stream else asyncio.get_running_loop().time() + self._whole_s
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    resp = await self._session.post(
                        self._url(url),
                        data=body,
                        headers=headers,
                        timeout=self._stream_timeout if stream else self._once_timeout,
                        allow_redirects=False,
                    )
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise _aiohttp_error(exc) from None
        except TimeoutError:
            raise whole_answer_timeout(self._whole_s) from None
        return _AiohttpResponse(resp, deadline, self._whole_s, self._idle_s if stream else 0.0)

    async def get(self, url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(self._url(url), headers=headers, allow_redirects=False) as resp:
                    return resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _aiohttp_error(exc) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ============================================================================ httpx


def _httpx_error(exc: httpx.HTTPError) -> UpstreamIOError:
    detail = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(detail, str(exc), connecting=isinstance(exc, httpx.ConnectTimeout))
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError(detail, str(exc))
    return UpstreamIOError(detail, str(exc))


class _HttpxResponse(UpstreamResponse):
    __slots__ = ("_deadline", "_limit_s", "_resp", "content_type", "retry_after", "status")

    def __init__(self, resp: httpx.Response, deadline: float | None = None, limit_s: float = 0.0) -> None:
        self._resp = resp
        self._deadline, self._limit_s = deadline, limit_s
        self.status = resp.status_code
        self.content_type = resp.headers.get("content-type", "application/json")
        self.retry_after = resp.headers.get("retry-after")

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout_at(self._deadline):
                try:
                    return await self._resp.aread()
                except httpx.HTTPError as exc:
                    raise _httpx_error(exc) from None
        except TimeoutError:
            raise whole_answer_timeout(self._limit_s) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise _httpx_error(exc) from None

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxUpstream(Upstream):
    """An httpx client over ``transport`` (e.g. ``httpx.MockTransport``), or over ``client`` as given."""

    def __init__(
        self,
        timeouts: TimeoutSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.client = client or httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=MAX_IDLE_PER_BACKEND, keepalive_expiry=KEEPALIVE_S
            ),
        )
        t = timeouts
        self._stream_timeout = httpx.Timeout(connect=t.connect_s, read=t.idle_s, write=t.connect_s, pool=t.connect_s)
        self._once_timeout = httpx.Timeout(
            connect=t.connect_s, read=t.first_byte_s, write=t.connect_s, pool=t.connect_s
        )
        self._whole_s = t.first_byte_s

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamResponse:
        req = self.client.build_request(
            "POST",
            url,
            content=body,
            headers=headers,
            timeout=self._stream_timeout if stream else self._once_timeout,
        )
        deadline = None if stream else asyncio.get_running_loop().time() + self._whole_s
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    resp = await self.client.send(req, stream=True)
                except httpx.HTTPError as exc:
                    raise _httpx_error(exc) from None
        except TimeoutError:
            raise whole_answer_timeout(self._whole_s) from None
        return _HttpxResponse(resp, deadline, self._whole_s)

    async def get(self, url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        try:
            r = await self.client.get(url, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise _httpx_error(exc) from None
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.client.aclose()


def build_upstream(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Upstream:
    """The client ``settings.server.upstream_client`` names, or an httpx client over ``transport``."""
    if transport is not None:
        return HttpxUpstream(settings.timeouts, transport)
    if settings.server.upstream_client == "lean":
        from gateway.upstream_lean import LeanUpstream

        return LeanUpstream(settings.timeouts)
    return AiohttpUpstream(settings.timeouts)
