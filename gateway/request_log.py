"""The request log: one record per finished generation request, for ``server.log_format: json``.

Written by :meth:`gateway.accounting.Accounting.finish` — the one place every request ends, answered,
streamed, broken, refused or abandoned — to the logger ``gateway.requests`` at INFO, as the fields of
one JSON line (:mod:`gateway.logs`)::

    {"ts": ..., "level": "info", "logger": "gateway.requests", "message": "request finished",
     "request_id": "...", "endpoint": "chat", "key": "team-a", "model": "smol", "arm": "smol-plain",
     "strategy": "plain", "backend": "b1", "reason": "single-arm", "status": 200, "error": null,
     "stream": true, "latency_s": 0.8, "ttft_s": 0.12, "tokens_per_s": 41.3,
     "prompt_tokens": 7, "completion_tokens": 3, "usage_estimated": false}

``key`` is the API key's configured name (never the key; ``null`` without auth); ``model`` the
public model of the arm that answered (else of the arm chosen, else the one asked for);
``arm``/``strategy``/``backend`` who answered (``null`` when nobody did); ``reason`` the routing
reason (``failover`` when another arm answered); ``error`` the error ``code`` of a failed request;
``ttft_s``/``tokens_per_s`` for streams only; token counts from the answer's usage (``null`` when
unknown; ``usage_estimated`` when a stream's upstream sent none and the gateway made them up). Not the
decision log (``routing.decision_log``, for training): that one holds the router's features and
forecasts, this one what an operator greps for.

Off in ``text`` mode (nothing is built): the access log (``--access-log``) is the text equivalent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.limits import token_count
from gateway.logs import FIELDS

if TYPE_CHECKING:
    from gateway.accounting import Outcome

LOGGER = "gateway.requests"


class RequestLog:
    """Logs finished requests. Event-loop only; never raises for a request's data."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger(LOGGER)

    def finished(
        self, out: Outcome, status: int, latency_s: float, ttft_s: float | None = None, tps: float | None = None
    ) -> None:
        """One record for the request ``out`` ended (``status``: its final HTTP status)."""
        if not self.log.isEnabledFor(logging.INFO):
            return
        self.log.info("request finished", extra={FIELDS: record(out, status, latency_s, ttft_s, tps)})


def record(
    out: Outcome, status: int, latency_s: float, ttft_s: float | None = None, tps: float | None = None
) -> dict[str, Any]:
    """The fields of one request's line (see the module docstring)."""
    ex, live, usage = out.exchange, out.live, out.usage
    decision = ex.decision
    asked = (ex.body or {}).get("model")  # upstream calls rewrite it: only read before any
    asked = asked if isinstance(asked, str) else None
    reason = None
    if decision is not None:
        reason = decision.reason if live is None or live.arm is decision.arm else "failover"
    error = out.error
    return {
        "request_id": ex.request_id,
        "endpoint": ex.endpoint,
        "key": ex.key.name if ex.key is not None else None,
        "model": live.arm.model if live is not None else decision.arm.model if decision is not None else asked,
        "arm": live.arm.name if live is not None else None,
        "strategy": live.strategy_label if live is not None else None,
        "backend": out.backends,
        "reason": reason,
        "status": status,
        "error": error.code if error is not None else None,
        "stream": ex.stream,
        "latency_s": round(latency_s, 6),
        "ttft_s": round(ttft_s, 6) if ttft_s is not None else None,
        "tokens_per_s": round(tps, 3) if tps is not None else None,
        "prompt_tokens": token_count(usage.get("prompt_tokens")) if isinstance(usage, dict) else None,
        "completion_tokens": token_count(usage.get("completion_tokens")) if isinstance(usage, dict) else None,
        "usage_estimated": out.usage_estimated,
    }
