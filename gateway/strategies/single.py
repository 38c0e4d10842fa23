"""The ``single`` executor: one upstream call per answer (strategies plain, speculative, layer-skip).

The request's own JSON goes upstream with two changes only: ``model`` becomes the backend's
``served_model`` and, for streams, ``stream_options.include_usage`` is on (see
:mod:`gateway.admission`).

Before the first byte reaches the client, a connection failure, timeout, 5xx or broken read is
retried on the next least-loaded backend of the arm, then of the next-ranked arm, up to
``max_attempts``; an upstream 4xx is passed through at once. When every backend tried refused the
connection, they are known down (the pool takes a refusing backend out at once): the answer is the
503 + ``Retry-After`` of an arm with no healthy backend, not a 502. After the first byte, failures are
reported in-stream (:mod:`gateway.relay`), or the answer is continued on another backend of the arm
(:mod:`gateway.resume`, ``streaming.max_resumes``).
"""

from __future__ import annotations

from collections.abc import Iterator

from starlette.responses import Response

from gateway.admission import Exchange
from gateway.arms import LiveArm
from gateway.backends import Backend
from gateway.calls import Call
from gateway.errors import GatewayError, NoHealthyBackend, UpstreamError, UpstreamHTTPError
from gateway.relay import RelayResponse
from gateway.resume import Resumer
from gateway.sse import Rename
from gateway.strategies import Services, register_executor

KINDS = ("plain", "speculative", "layer-skip")


@register_executor("single", kinds=KINDS)
class Single:
    """Forwards an exchange to one backend at a time, failing over before the first byte."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.max_attempts = services.settings.max_attempts
        self.retry_after = str(services.settings.timeouts.retry_after_s)
        arms = services.catalog.arms.items()
        services.metrics.known_resume_arms(name for name, live in arms if live.arm.strategy.kind in KINDS)

    def _candidates(self, ex: Exchange) -> Iterator[tuple[LiveArm, Backend]]:
        """(arm, backend) to try in order: the ranked arms' least-loaded untried backends."""
        assert ex.decision is not None
        tried: set[str] = set()
        attempts = 0
        for arm in ex.decision.ranked or (ex.decision.arm,):
            live = self.s.catalog.arms[arm.name]
            affinity = live.affinity_for(ex.session, ex.body) if ex.body is not None else None
            while attempts < self.max_attempts:
                backend = self.s.calls.choose(live.backends, tried, affinity)
                if affinity is not None:
                    self.s.metrics.affinity(live.arm.name, "kept" if affinity.kept else "spilled")
                if backend is None:
                    break
                tried.add(backend.name)
                attempts += 1
                yield live, backend

    async def run(self, ex: Exchange) -> Response:
        body = ex.body
        assert body is not None and ex.decision is not None
        last_error: GatewayError | None = None
        refused: dict[str, UpstreamError] = {}  # connections refused: those backends are known down now
        for live, backend in self._candidates(ex):
            try:
                ex.sent()  # the backend counts it from here (calls.open acquires it before awaiting)
                call = await self.s.calls.open(backend, ex.endpoint, body, ex.stream, ex.request_id)
            except UpstreamError as exc:
                if exc.kind == "connect":
                    refused[backend.name] = exc
                else:
                    last_error = exc
                continue
            except UpstreamHTTPError as exc:
                if exc.status >= 500:
                    last_error = exc
                    continue
                exc.headers.update(ex.route_headers(live, backend.name))
                raise
            if ex.stream:
                return self._relay(ex, live, call)
            try:
                return await self._complete(ex, live, call)
            except UpstreamError as exc:
                last_error = exc
        if last_error is not None:
            raise last_error
        if refused and self._usable_left(ex):  # max_attempts ran out first: not "no healthy backend"
            raise list(refused.values())[-1]
        down = f" ({', '.join(refused)} refused the connection)" if refused else ""
        raise NoHealthyBackend(
            f"no healthy backend for model '{ex.decision.arm.model}'{down}", headers={"retry-after": self.retry_after}
        )

    def _usable_left(self, ex: Exchange) -> bool:
        assert ex.decision is not None
        pool = self.s.calls.pool
        arms = ex.decision.ranked or (ex.decision.arm,)
        return any(pool.usable(name) for arm in arms for name in self.s.catalog.arms[arm.name].backends)

    async def _complete(self, ex: Exchange, live: LiveArm, call: Call) -> Response:
        backend = call.backend
        headers = ex.route_headers(live, backend.name)
        out = self.s.accounting.answered(ex, live, backend.name)
        content, doc = await call.read_json()
        content = Rename.of(backend.settings.served_model, live.arm.model).body(content, doc)
        usage = doc.get("usage") or {}
        out.usage = usage if isinstance(usage, dict) else None
        out.status = call.response.status
        self.s.accounting.finish(out)
        return Response(content, status_code=out.status, media_type=call.response.content_type, headers=headers)

    def _relay(self, ex: Exchange, live: LiveArm, call: Call) -> RelayResponse:
        backend = call.backend
        headers = ex.route_headers(live, backend.name)
        out = self.s.accounting.answered(ex, live, backend.name, backend)
        rename = Rename.of(backend.settings.served_model, live.arm.model)
        assert ex.body is not None
        s = self.s
        resumer = Resumer(
            s.settings.streaming,
            s.calls,
            s.metrics,
            live.arm.name,
            live.arm.model,
            live.backends,
            ex.endpoint,
            ex.body,
            ex.request_id,
        )
        return RelayResponse(
            call,
            headers,
            rename,
            not ex.wants_usage,
            s.accounting,
            out,
            resumer=resumer,
            max_event_bytes=s.settings.streaming.max_event_bytes,
        )
