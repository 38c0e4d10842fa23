"""The decision log (``routing.decision_log``): one JSON line per request the learned policy routed.

A line is written when the request ends — answered, failed, or abandoned by the client — so it
holds what the policy knew and what then happened, which ``llm-gateway train --from-log`` joins
with the ratings of ``POST /v1/feedback`` to learn from real traffic. Fields:

* ``request_id`` (the ``x-request-id`` header; vLLM's response id is ``chatcmpl-<request_id>``),
  ``at`` (Unix time of the decision), ``endpoint`` (``chat`` / ``completions``);
* the prompt: ``prompt_sha256``, ``prompt_chars``, ``features`` (the policy's raw, unstandardised
  feature vector when its encoder is features-only, else ``null``), and ``prompt`` itself only
  when ``feedback.store_prompts`` is true;
* the decision: ``flags`` (the caller's :class:`~router.decision.RouteFlags`), ``predictions``
  (every candidate arm's forecast, :meth:`~router.predictor.Prediction.as_dict`), ``arm`` (the
  arm chosen), ``reason``, ``family`` (the predicted task family, or null), ``propensity`` (the
  probability the policy had of choosing it: below 1 when it explores, ``routing.params.explore``);
* what happened: ``served_arm`` and ``backend`` (who answered; another arm than ``arm`` after a
  failover, ``null`` when nobody did), ``status`` (HTTP status; 499: the client went away),
  ``ttft_s`` (streams only), ``output_tokens``, ``latency_s`` (received to last byte) and
  ``tokens_per_s`` (decode rate after the first token, streams only).

Cost on the serving path: the line is built and written once, at the end, with one ``O_APPEND``
write (about 0.01 ms; appends of a line are atomic, so workers may share the file, and a file
rotated away is simply created again). A failed write is logged, counted
(``gateway_decision_log_errors_total``) and otherwise ignored: it never fails the request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.jsonl import append_line, encode_line
from router import Decision, RouteRequest

log = logging.getLogger("gateway.decision_log")


class DecisionLog:
    """Appends decision lines to ``path`` (its directory is created when missing).

    ``store_prompts``: also write the prompt text. ``on_error``: called once per line that could
    not be written (the gateway counts them in a metric).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        store_prompts: bool = False,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        self.store_prompts = store_prompts
        self.on_error = on_error
        self.errors = 0

    def open(
        self,
        request_id: str,
        endpoint: str,
        request: RouteRequest,
        decision: Decision,
        features: Sequence[float] | None = None,
    ) -> DecisionRecord:
        """Start the record of one routed request; :meth:`DecisionRecord.finish` writes it."""
        return DecisionRecord(self, request_id, endpoint, request, decision, features)

    def write(self, line: dict[str, Any]) -> bool:
        """Append ``line`` as one JSON line; ``False`` (logged, counted, never raised) if that fails."""
        try:
            append_line(self.path, encode_line(line))
        except Exception as exc:  # never fail the request over its log line
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.error("cannot write the decision log %s (%d lines lost so far): %s", self.path, self.errors, exc)
            if self.on_error is not None:
                self.on_error()
            return False
        return True


class DecisionRecord:
    """One routed request's decision, waiting for its outcome. :meth:`finish` writes it once."""

    __slots__ = ("_log", "at", "decision", "endpoint", "features", "finished", "request", "request_id")

    def __init__(
        self,
        owner: DecisionLog,
        request_id: str,
        endpoint: str,
        request: RouteRequest,
        decision: Decision,
        features: Sequence[float] | None,
    ) -> None:
        self._log = owner
        self.request_id = request_id
        self.endpoint = endpoint
        self.request = request
        self.decision = decision
        self.features = features
        self.at = time.time()
        self.finished = False

    def finish(
        self,
        status: int,
        *,
        served_arm: str | None = None,
        backend: str | None = None,
        ttft_s: float | None = None,
        output_tokens: int | None = None,
        latency_s: float | None = None,
        tokens_per_s: float | None = None,
    ) -> None:
        """Write the line with the request's outcome; later calls do nothing. Never raises."""
        if self.finished:
            return
        self.finished = True
        decision, prompt = self.decision, self.request.prompt
        line: dict[str, Any] = {
            "request_id": self.request_id,
            "at": round(self.at, 3),
            "endpoint": self.endpoint,
            "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "prompt_chars": len(prompt),
            "features": self.features,
            "flags": self.request.flags,  # a dataclass: orjson writes it as an object
            "predictions": {name: p.as_dict() for name, p in decision.predictions.items()},
            "arm": decision.arm.name,
            "reason": decision.reason,
            "family": decision.family,
            "propensity": decision.propensity,
            "served_arm": served_arm,
            "backend": backend,
            "status": status,
            "ttft_s": _rounded(ttft_s),
            "output_tokens": output_tokens,
            "latency_s": _rounded(latency_s),
            "tokens_per_s": _rounded(tokens_per_s),
        }
        if self._log.store_prompts:
            line["prompt"] = prompt
        self._log.write(line)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
