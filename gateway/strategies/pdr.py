"""The ``pdr`` executor: parallel draft → distill → refine on an arm's backends.

:class:`gateway.strategies.pdr_runner.PDRRunner` orchestrates the stages; this module gives it its
upstream calls and answers. Every stage's call takes the least-loaded healthy backend of its arm
(drafts may use a cheaper ``draft_arm``, distill and refine a ``refine_arm``), goes through
:mod:`gateway.calls` like any other (held busy, failures mapped and reported there), and has its own
upstream request id (``<request id>-<n>``, drafts ``<request id>-d-<n>``: vLLM refuses duplicate ids
in flight). A stream's last refine is relayed like a single call's stream (:mod:`gateway.relay`),
with the earlier stages' usage added to its usage chunk; stage times go to
``gateway_pdr_stage_seconds`` and, with tracing on, to a ``pdr.<stage>`` span each (:mod:`gateway.tracing`).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
from starlette.responses import Response

from gateway.admission import Exchange
from gateway.arms import LiveArm
from gateway.errors import InvalidRequest
from gateway.relay import RelayResponse
from gateway.sse import Rename
from gateway.strategies import Services, register_executor
from gateway.strategies.pdr_runner import CompleteFn, PDRRunner
from router.strategy import PDRStrategy


@register_executor("pdr", kinds=("pdr",))
class PDR:
    """Answers exchanges routed to ``pdr`` arms (chat completions only)."""

    def __init__(self, services: Services) -> None:
        self.s = services

    def _complete(self, live: LiveArm, request_id: str, used: list[str]) -> CompleteFn:
        """A ``complete`` callable for the runner: one call to ``live``'s least-loaded backend, whose
        name is appended to ``used``; the answer carries the public model name."""
        calls = self.s.calls
        counter = itertools.count(1)

        async def complete(body: dict[str, Any]) -> dict[str, Any]:
            backend = calls.choose_for(live.arm.name, live.backends)
            used.append(backend.name)
            call = await calls.open(backend, "chat", body, False, f"{request_id}-{next(counter)}")
            _, doc = await call.read_json()
            doc["model"] = live.arm.model
            return doc

        return complete

    async def run(self, ex: Exchange) -> Response:
        body, decision = ex.body, ex.decision
        assert body is not None and decision is not None
        ex.sent()  # its stages acquire their backends as they go
        catalog, metrics = self.s.catalog, self.s.metrics
        live = catalog.arms[decision.arm.name]
        strategy = live.arm.strategy
        assert isinstance(strategy, PDRStrategy)  # this executor runs kind "pdr" only
        if ex.endpoint != "chat":
            raise InvalidRequest(
                f"arm '{live.arm.name}' (strategy pdr) answers chat completions only", param="model", code="unsupported"
            )
        refine_arm = catalog.arms[strategy.refine_arm] if strategy.refine_arm else live
        draft_arm = catalog.arms[strategy.draft_arm] if strategy.draft_arm else refine_arm
        used: list[str] = []
        model, label, span = live.arm.model, live.strategy_label, ex.span

        def on_stage(stage: str, seconds: float) -> None:
            metrics.pdr_stage(model, label, stage, seconds)
            span.stage(stage, seconds)

        runner = PDRRunner(
            strategy,
            self._complete(refine_arm, ex.request_id, used),
            draft_complete=self._complete(draft_arm, ex.request_id + "-d", used),
            on_stage=on_stage,
        )
        if not ex.stream:
            answer = await runner.complete(body)
            backends = ",".join(dict.fromkeys(used))
            out = self.s.accounting.answered(ex, live, backends)
            out.usage = answer["usage"]
            self.s.accounting.finish(out)
            headers = ex.route_headers(live, backends)
            return Response(orjson.dumps(answer), media_type="application/json", headers=headers)
        final = await runner.prepare_stream(body)
        refine_started = time.perf_counter()
        backend = self.s.calls.choose_for(refine_arm.arm.name, refine_arm.backends)
        used.append(backend.name)
        call = await self.s.calls.open(backend, "chat", final, True, f"{ex.request_id}-0")
        backends = ",".join(dict.fromkeys(used))
        out = self.s.accounting.answered(ex, live, backends, backend)
        out.stage_started = refine_started
        rename = Rename.of(backend.settings.served_model, model)
        return RelayResponse(
            call,
            ex.route_headers(live, backends),
            rename,
            not ex.wants_usage,
            self.s.accounting,
            out,
            runner.usage,
            max_event_bytes=self.s.settings.streaming.max_event_bytes,
        )
