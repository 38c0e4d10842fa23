"""One held upstream call: choose a backend, post, map failures to gateway errors, release.

Every upstream request of every strategy goes through :meth:`Calls.open`, and this is the one place
where the client's failures (:class:`gateway.upstream.UpstreamIOError`) and the upstream's error
statuses become gateway errors (:func:`upstream_error`) and are reported to the backend pool:

======================================  ==========================================  ==================
what failed                             gateway error                               pool / metric
======================================  ==========================================  ==================
connect, send, headers (timeout)        ``upstream_timeout`` 504                    failure (its kind)
connect, send, headers (other)          ``upstream_<kind>`` 502                     failure (its kind)
status >= 500                           :class:`UpstreamHTTPError` 502              failure ``http_5xx``
status 4xx                              :class:`UpstreamHTTPError` (passed through)  ``http_4xx`` counted
reading a whole body                    ``upstream_timeout`` 504 / ``_stream`` 502  failure
a body that is not a JSON object        ``upstream_protocol`` 502                   failure ``protocol``
a stream after its first byte           ``upstream_timeout`` / ``_stream`` (relay)  at the end (accounting)
======================================  ==========================================  ==================

A :class:`Call` counts its backend as busy from :meth:`Calls.open` until :meth:`Call.aclose` (always
called: by :meth:`Call.read_json`, or by the relay when the stream ends), which also closes the
upstream response (so a client that goes away makes vLLM abort the generation).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import orjson

from gateway.affinity import Affinity
from gateway.backends import Backend, BackendPool
from gateway.errors import NoHealthyBackend, UpstreamError, UpstreamHTTPError
from gateway.metrics import GatewayMetrics
from gateway.protocol import Endpoint
from gateway.tracing import current
from gateway.upstream import Upstream, UpstreamIOError, UpstreamResponse, UpstreamTimeout

PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}

#: When an upstream failure happened: before the response headers, reading a whole body, or relaying
#: a stream whose first bytes have reached the client.
Phase = Literal["headers", "body", "stream"]
_NOTHING: set[str] = set()  # never added to


def upstream_error(exc: UpstreamIOError, backend: str, phase: Phase) -> UpstreamError:
    """The gateway error for ``exc``, raised while talking to ``backend`` during ``phase``."""
    timeout = isinstance(exc, UpstreamTimeout)
    if phase == "headers":
        if timeout:
            return UpstreamError(f"backend '{backend}' timed out ({exc.detail})", kind="timeout", status=504)
        return UpstreamError(f"backend '{backend}' failed: {exc.detail}", kind=exc.kind)
    if phase == "body":
        return UpstreamError(
            f"backend '{backend}' failed while answering: {exc.detail}",
            kind="timeout" if timeout else "stream",
            status=504 if timeout else 502,
        )
    if timeout:
        return UpstreamError(
            "upstream stream went idle past the timeout; the answer is incomplete", kind="timeout", status=504
        )
    return UpstreamError(f"upstream stream failed: {exc.detail}; the answer is incomplete", kind="stream")


class Call:
    """An upstream response whose headers arrived with a status below 400, on a backend held busy."""

    __slots__ = ("_calls", "backend", "closed", "response")

    def __init__(self, calls: Calls, backend: Backend, response: UpstreamResponse) -> None:
        self._calls = calls
        self.backend = backend
        self.response = response
        self.closed = False

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises :class:`UpstreamIOError` (the relay maps it, phase ``stream``)."""
        return self.response.chunks()

    async def read_json(self) -> tuple[bytes, dict[str, Any]]:
        """The whole body, raw and parsed; closes the call. A read failure or a body that is not a JSON
        object is reported to the pool and raised as an :class:`UpstreamError`; an answer as success."""
        backend, pool = self.backend, self._calls.pool
        try:
            content = await self.response.read()
        except UpstreamIOError as exc:
            err = upstream_error(exc, backend.name, "body")
            pool.report_failure(backend, err.kind, exc.detail)
            raise err from None
        finally:
            await self.aclose()
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):  # e.g. a proxy's HTML page: never pass it on as an answer
            pool.report_failure(backend, "protocol", "malformed answer")
            raise UpstreamError(
                f"backend '{backend.name}' sent a malformed answer (not a JSON object)", kind="protocol"
            )
        pool.report_success(backend)
        return content, doc

    async def aclose(self) -> None:
        """Close the response and stop counting the backend as busy; later calls do nothing."""
        if not self.closed:
            self.closed = True
            self.backend.release()
            await self.response.aclose()


class Calls:
    """Opens upstream calls for one app. Safe for concurrent requests on the event loop."""

    def __init__(self, upstream: Upstream, pool: BackendPool, metrics: GatewayMetrics, retry_after_s: int) -> None:
        self.upstream = upstream
        self.pool = pool
        self.metrics = metrics
        self.retry_after = str(retry_after_s)

    def choose(
        self, backends: Sequence[str], tried: set[str] | None = None, affinity: Affinity | None = None
    ) -> Backend | None:
        """The least-loaded usable backend of ``backends`` not in ``tried`` (see :meth:`BackendPool.choose`)."""
        return self.pool.choose(backends, _NOTHING if tried is None else tried, affinity)

    def choose_for(self, arm: str, backends: Sequence[str]) -> Backend:
        """Like :meth:`choose`; none usable is a 503 naming ``arm``."""
        backend = self.pool.choose(backends)
        if backend is None:
            raise NoHealthyBackend(f"no healthy backend for arm '{arm}'", headers={"retry-after": self.retry_after})
        return backend

    async def open(
        self, backend: Backend, endpoint: Endpoint, body: dict[str, Any], stream: bool, request_id: str
    ) -> Call:
        """Post ``body`` to ``backend`` (its ``model`` set to the backend's served model, in place) and
        return once the headers are in. ``request_id`` goes upstream as ``X-Request-Id``: vLLM names its
        answer after it (``chatcmpl-<id>``) and refuses two in flight with the same one. The request's
        trace context goes as ``traceparent`` (:mod:`gateway.tracing`: one span per attempt).

        Raises :class:`UpstreamError` (no answer) or :class:`UpstreamHTTPError` (status >= 400); the
        backend is released then, and when the caller is cancelled.
        """
        body["model"] = backend.settings.served_model
        payload = orjson.dumps(body)
        headers = {"content-type": "application/json", "x-request-id": request_id, **backend.auth_header}
        attempt = current().attempt(backend.name, PATHS[endpoint], request_id, headers)
        backend.acquire()
        try:
            resp = await self.upstream.post(backend.base_url + PATHS[endpoint], payload, headers, stream)
        except UpstreamIOError as exc:
            backend.release()
            self.pool.report_failure(backend, exc.kind, exc.detail)
            attempt.failed(exc.kind)
            raise upstream_error(exc, backend.name, "headers") from None
        except asyncio.CancelledError:  # the client left while we waited for the headers
            backend.release()
            attempt.failed("cancelled")
            raise
        if resp.status < 400:
            attempt.answered(resp.status)
            return Call(self, backend, resp)
        try:
            content = await resp.read()
        except UpstreamIOError:
            content = b""
        finally:
            await resp.aclose()
            backend.release()
        if resp.status >= 500:
            self.pool.report_failure(backend, "http_5xx", str(resp.status))
        else:
            self.metrics.upstream_error(backend.name, "http_4xx")
        attempt.failed("http_5xx" if resp.status >= 500 else "http_4xx", resp.status)
        raise UpstreamHTTPError(resp.status, content, backend.name, resp.retry_after)
