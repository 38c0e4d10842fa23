"""Serving an arm of the ``pdr`` strategy: wires :class:`gateway.pdr.PDRRunner` to the arm's backends.

Every stage's upstream call takes the least-loaded healthy backend of its arm (drafts may use a
cheaper ``draft_arm``), is counted as in flight on it, and maps failures to gateway errors exactly
as a plain request would; usage, stage times and the request's outcome go to the metrics.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

from gateway.arms import ArmCatalog, LiveArm
from gateway.backends import Backend, BackendPool
from gateway.decision_log import DecisionRecord
from gateway.errors import InvalidRequest, NoHealthyBackend, UpstreamError, UpstreamHTTPError
from gateway.metrics import GatewayMetrics
from gateway.pdr import PDRRunner
from gateway.protocol import Endpoint
from gateway.upstream import UpstreamIOError, UpstreamResponse, UpstreamTimeout
from router import Decision
from router.strategy import PDRStrategy

Send = Callable[[Backend, Endpoint, bytes, bool, str], Awaitable[UpstreamResponse]]
Remember = Callable[[str, Endpoint, LiveArm, str, str, dict[str, Any]], None]


class PDRForwarder:
    """Answers requests routed to a ``pdr`` arm. ``send`` posts one upstream request (with its
    request id); ``remember`` records the decision for feedback."""

    def __init__(
        self,
        catalog: ArmCatalog,
        pool: BackendPool,
        metrics: GatewayMetrics,
        retry_after_s: int,
        send: Send,
        remember: Remember,
    ) -> None:
        self._catalog = catalog
        self._pool = pool
        self._metrics = metrics
        self._retry_after = str(retry_after_s)
        self._send = send
        self._remember = remember

    def _calls(
        self, live: LiveArm, request_id: str, used: list[str]
    ) -> tuple[Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], AsyncIterator[bytes]]]:
        """``complete``/``stream`` callables for :class:`PDRRunner`, bound to ``live``'s backends.

        Each call takes the least-loaded healthy backend of the arm, gets its own upstream request
        id (``<request id>-<n>``: vLLM refuses duplicate ids in flight) and appends the backend's
        name to ``used``. Failures become gateway errors and mark the backend as they would for a
        plain request.
        """
        counter = iter(range(1, 1 << 30))
        needle = b'"model":'

        def pick() -> Backend:
            backend = self._pool.choose(live.backends)
            if backend is None:
                raise NoHealthyBackend(
                    f"no healthy backend for arm '{live.arm.name}'",
                    headers={"retry-after": self._retry_after},
                )
            used.append(backend.name)
            return backend

        async def call(backend: Backend, body: dict[str, Any], stream: bool) -> UpstreamResponse:
            payload = orjson.dumps({**body, "model": backend.settings.served_model})
            try:
                resp = await self._send(backend, "chat", payload, stream, f"{request_id}-{next(counter)}")
            except UpstreamIOError as exc:
                self._pool.report_failure(backend, exc.kind, exc.detail)
                kind = "timeout" if isinstance(exc, UpstreamTimeout) else exc.kind
                raise UpstreamError(
                    f"backend '{backend.name}' failed: {exc.detail}",
                    kind=kind,
                    status=504 if kind == "timeout" else 502,
                ) from None
            if resp.status >= 400:
                try:
                    content = await resp.read()
                except UpstreamIOError:
                    content = b""
                finally:
                    await resp.aclose()
                if resp.status >= 500:
                    self._pool.report_failure(backend, "http_5xx", str(resp.status))
                raise UpstreamHTTPError(resp.status, content)
            return resp

        @asynccontextmanager
        async def answer(body: dict[str, Any], stream: bool) -> AsyncIterator[tuple[Backend, UpstreamResponse]]:
            """One upstream call held open: the backend counted as busy and the response closed after."""
            backend = pick()
            backend.acquire()
            try:
                resp = await call(backend, body, stream)
                try:
                    yield backend, resp
                except UpstreamIOError as exc:
                    self._pool.report_failure(backend, "stream", exc.detail)
                    raise UpstreamError(
                        f"backend '{backend.name}' failed while answering: {exc.detail}", kind="stream"
                    ) from None
                finally:
                    await resp.aclose()
            finally:
                backend.release()

        async def complete(body: dict[str, Any]) -> dict[str, Any]:
            async with answer(body, False) as (backend, resp):
                content = await resp.read()
            try:
                doc = orjson.loads(content)
            except orjson.JSONDecodeError:
                doc = None
            if not isinstance(doc, dict):
                self._pool.report_failure(backend, "protocol", "non-JSON body")
                raise UpstreamError(f"backend '{backend.name}' answered with a non-JSON body", kind="protocol")
            self._pool.report_success(backend)
            doc["model"] = live.arm.model
            return doc

        async def stream(body: dict[str, Any]) -> AsyncIterator[bytes]:
            async with answer(body, True) as (backend, resp):
                served = needle + orjson.dumps(backend.settings.served_model)
                public = needle + orjson.dumps(live.arm.model)
                async for chunk in resp.chunks():
                    yield chunk.replace(served, public)

        return complete, stream

    async def forward(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        decision: Decision,
        started: float,
        request_id: str,
        trace: DecisionRecord | None = None,
    ) -> Response:
        """Answer with the ``pdr`` strategy: drafts, distill and refine run by :class:`PDRRunner`;
        ``trace`` (the decision log's record, if any) gets the outcome when the answer ends."""
        live = self._catalog.arms[decision.arm.name]
        strategy = live.arm.strategy
        assert isinstance(strategy, PDRStrategy)
        if endpoint != "chat":
            raise InvalidRequest(
                f"arm '{live.arm.name}' (strategy pdr) answers chat completions only", param="model", code="unsupported"
            )
        refine_arm = self._catalog.arms[strategy.refine_arm] if strategy.refine_arm else live
        draft_arm = self._catalog.arms[strategy.draft_arm] if strategy.draft_arm else refine_arm
        used: list[str] = []
        complete, stream = self._calls(refine_arm, request_id, used)
        draft_complete, _ = self._calls(draft_arm, request_id + "-d", used)
        model, label = live.arm.model, live.strategy_label
        runner = PDRRunner(
            strategy,
            complete,
            stream,
            draft_complete=draft_complete,
            on_stage=lambda stage, seconds: self._metrics.pdr_stage(model, label, stage, seconds),
        )
        headers = {
            "x-route-arm": live.arm.name,
            "x-route-model": model,
            "x-route-strategy": label,
            "x-route-reason": decision.reason,
            "x-request-id": request_id,
        }
        series = self._metrics.series(model, label)

        def finish(status: int) -> None:
            usage = runner.usage
            self._metrics.observe_usage(series, usage["prompt_tokens"], usage["completion_tokens"])
            elapsed = time.perf_counter() - started
            series.duration.observe(elapsed)
            if trace is not None:
                trace.finish(
                    status,
                    served_arm=live.arm.name,
                    backend=headers.get("x-route-backend"),
                    output_tokens=usage["completion_tokens"],
                    latency_s=elapsed,
                )
            self._metrics.request_done(model, label, endpoint, status)

        if not body.get("stream"):
            answer = await runner.complete(body)
            headers["x-route-backend"] = ",".join(dict.fromkeys(used))
            self._remember(request_id, endpoint, live, headers["x-route-backend"], decision.reason, body)
            finish(200)
            return Response(orjson.dumps(answer), media_type="application/json", headers=headers)
        events = await runner.open_stream(body)  # stages before the first byte: errors are still JSON
        headers["x-route-backend"] = ",".join(dict.fromkeys(used))
        self._remember(request_id, endpoint, live, headers["x-route-backend"], decision.reason, body)

        async def relay() -> AsyncIterator[bytes]:
            status = 499
            try:
                async for chunk in events:
                    yield chunk
                status = 200
            finally:
                finish(status)

        return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)
