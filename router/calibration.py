"""Turning raw forecasts into promises: calibrated probabilities and latency upper bounds.

* :class:`Isotonic` maps a quality head's raw probability to the rate at which answers with that
  prediction were actually right (pool-adjacent-violators on out-of-fold predictions), so
  ``accuracy: 0.6`` means "at least a 60 % chance", not "a logistic output of 0.6".
* :class:`LatencyMargins` holds split-conformal multipliers: quantiles of
  ``actual / predicted`` latency, from out-of-fold predictions, per arm and predicted-length
  bucket. ``predicted * margin(q)`` is an upper bound that held for a share ``q`` of unseen
  prompts; a budget is checked against that bound, not the point forecast.
* :class:`ResidualTracker` keeps the bound honest once deployed: a rolling window of the same
  ratio measured on live traffic, per arm, rescales the offline margins (wider when the machine
  got slower than profiled, narrower when faster), within fixed limits.

Pure NumPy and plain floats; nothing here does I/O.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUANTILES = (0.5, 0.75, 0.8, 0.9, 0.95, 0.99)
LENGTH_EDGES = (48.0, 160.0)  # predicted output tokens: short | medium | long answers
MIN_BUCKET = 30  # out-of-fold rows a bucket needs for its own margins; fewer: the arm's overall ones


@dataclass(frozen=True)
class Isotonic:
    """A non-decreasing step map from raw to calibrated probability (identity when fitted on nothing)."""

    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    @classmethod
    def fit(cls, raw: Sequence[float], labels: Sequence[float], prior: float = 2.0) -> Isotonic:
        """Pool-adjacent-violators on ``(raw, label)`` pairs. Each block's rate is shrunk towards the
        overall rate by ``prior`` pseudo-observations, so a block of three prompts cannot claim 0 or 1."""
        if len(raw) == 0:
            return cls()
        order = np.argsort(np.asarray(raw, dtype=float), kind="stable")
        xs = np.asarray(raw, dtype=float)[order]
        ys = np.asarray(labels, dtype=float)[order]
        base = float(ys.mean())
        blocks: list[list[float]] = []  # [sum of labels, count, first x, last x]
        for xv, yv in zip(xs, ys, strict=True):
            blocks.append([yv, 1.0, xv, xv])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
                s, n, _, last = blocks.pop()
                blocks[-1][0] += s
                blocks[-1][1] += n
                blocks[-1][3] = last
        knots_x, knots_y = [], []
        for s, n, first, last in blocks:
            rate = (s + prior * base) / (n + prior)
            knots_x.append((first + last) / 2)
            knots_y.append(rate)
        return cls(tuple(knots_x), tuple(float(v) for v in np.maximum.accumulate(knots_y)))

    def __call__(self, p: float) -> float:
        """The calibrated probability of raw ``p`` (linear between block centres, flat outside)."""
        x, y = self.x, self.y
        if not x:
            return p
        i = bisect.bisect_right(x, p)
        if i == 0:
            return y[0]
        if i == len(x):
            return y[-1]
        span = x[i] - x[i - 1]
        t = (p - x[i - 1]) / span if span > 0 else 1.0
        return y[i - 1] + t * (y[i] - y[i - 1])

    def as_dict(self) -> dict[str, list[float]]:
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Isotonic:
        x, y = tuple(float(v) for v in doc["x"]), tuple(float(v) for v in doc["y"])
        if len(x) != len(y) or any(b < a for a, b in itertools.pairwise(y)):
            raise ValueError("isotonic map: x and y differ in length or y decreases")
        return cls(x, y)


def _quantile(ratios: np.ndarray, q: float) -> float:
    # the finite-sample conformal rank: ceil((n + 1) q) / n, capped at the largest ratio
    n = len(ratios)
    return float(np.quantile(ratios, min(1.0, math.ceil((n + 1) * q) / n), method="higher"))


def _quantiles(ratios: np.ndarray) -> list[float]:
    return [_quantile(ratios, q) for q in QUANTILES]


@dataclass(frozen=True)
class LatencyMargins:
    """Per arm: ``actual / predicted`` quantiles (:data:`QUANTILES`), overall and per length bucket."""

    overall: dict[str, tuple[float, ...]]
    buckets: dict[str, tuple[tuple[float, ...] | None, ...]]
    ttft: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @staticmethod
    def bucket(predicted_tokens: float) -> int:
        return bisect.bisect_right(LENGTH_EDGES, predicted_tokens)

    @classmethod
    def fit(
        cls,
        latency: Mapping[str, Sequence[tuple[float, float, float]]],
        ttft: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    ) -> LatencyMargins:
        """``latency[arm]``: ``(predicted tokens, predicted s, actual s)`` out-of-fold; ``ttft[arm]``:
        ``(predicted s, actual s)``. Arms with no rows get no margins (the policy then uses 1)."""
        overall, buckets, ttft_q = {}, {}, {}
        for arm, triples in latency.items():
            if not triples:
                continue
            data = np.asarray(triples, dtype=float)
            ratio = data[:, 2] / np.maximum(data[:, 1], 1e-6)
            overall[arm] = tuple(_quantiles(ratio))
            which = np.array([cls.bucket(t) for t in data[:, 0]])
            buckets[arm] = tuple(
                tuple(_quantiles(ratio[which == b])) if (which == b).sum() >= MIN_BUCKET else None
                for b in range(len(LENGTH_EDGES) + 1)
            )
        for arm, pairs in (ttft or {}).items():
            if pairs:
                data = np.asarray(pairs, dtype=float)
                ttft_q[arm] = tuple(_quantiles(data[:, 1] / np.maximum(data[:, 0], 1e-6)))
        return cls(overall, buckets, ttft_q)

    def latency(self, arm: str, predicted_tokens: float, q_index: int) -> float:
        """The multiplier that bounds ``arm``'s latency at quantile ``QUANTILES[q_index]`` (1 if unknown)."""
        per_bucket = self.buckets.get(arm)
        if per_bucket is not None:
            row = per_bucket[self.bucket(predicted_tokens)]
            if row is not None:
                return row[q_index]
        row2 = self.overall.get(arm)
        return row2[q_index] if row2 is not None else 1.0

    def arm_overall(self, arm: str, q_index: int) -> float:
        """The arm's margin over all lengths (what the live :class:`ResidualTracker` is compared with)."""
        row = self.overall.get(arm)
        return row[q_index] if row is not None else 1.0

    def first_token(self, arm: str, q_index: int) -> float:
        row = self.ttft.get(arm)
        return row[q_index] if row is not None else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "quantiles": list(QUANTILES),
            "length_edges": list(LENGTH_EDGES),
            "overall": {a: list(v) for a, v in self.overall.items()},
            "buckets": {a: [None if r is None else list(r) for r in v] for a, v in self.buckets.items()},
            "ttft": {a: list(v) for a, v in self.ttft.items()},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> LatencyMargins:
        if tuple(doc["quantiles"]) != QUANTILES or tuple(doc["length_edges"]) != LENGTH_EDGES:
            raise ValueError("latency margins were fitted for other quantiles or length buckets; retrain")
        width = len(QUANTILES)

        def row(values: Sequence[float]) -> tuple[float, ...]:
            out = tuple(float(v) for v in values)
            if len(out) != width or any(v <= 0 for v in out):
                raise ValueError("latency margin row has the wrong length or a non-positive value")
            return out

        return cls(
            overall={a: row(v) for a, v in doc["overall"].items()},
            buckets={a: tuple(None if r is None else row(r) for r in v) for a, v in doc["buckets"].items()},
            ttft={a: row(v) for a, v in doc.get("ttft", {}).items()},
        )


def quantile_index(q: float) -> int:
    """Index of ``q`` in :data:`QUANTILES`; ``ValueError`` naming the allowed values otherwise."""
    for i, v in enumerate(QUANTILES):
        if abs(v - q) < 1e-9:
            return i
    raise ValueError(f"latency_quantile must be one of {list(QUANTILES)}, got {q!r}")


class ResidualTracker:
    """Rolling ``actual / predicted`` latency per arm from live traffic.

    :meth:`factor` is how much wider (> 1) or narrower (< 1) the live quantile is than the offline
    one: the policy multiplies the offline margin by it. It stays 1 until ``min_samples`` requests
    of the arm have finished and is clamped to ``[1 / limit, limit]``, so a burst can move the
    bound but never switch it off or make it absurd. Not thread-safe: call from the event loop.
    """

    def __init__(self, window: int = 200, min_samples: int = 30, limit: float = 3.0, refresh_every: int = 10) -> None:
        if window < min_samples or min_samples < 1 or limit < 1 or refresh_every < 1:
            raise ValueError("need window >= min_samples >= 1, limit >= 1 and refresh_every >= 1")
        self.window, self.min_samples, self.limit = window, min_samples, limit
        self.refresh_every = refresh_every
        self._ratios: dict[str, deque[float]] = {}
        self._seen: dict[str, int] = {}
        # (arm, quantile index) -> (live quantile, observations seen when it was computed): a quantile of
        # a 200-long window moves little per observation, so it is recomputed every ``refresh_every``
        # observations, not on every decision (it was 0.1 ms per routed request under steady traffic)
        self._cache: dict[tuple[str, int], tuple[float, int]] = {}

    def observe(self, arm: str, predicted_s: float, actual_s: float) -> None:
        if not (predicted_s > 0 and actual_s > 0 and math.isfinite(actual_s)):
            return
        self._ratios.setdefault(arm, deque(maxlen=self.window)).append(actual_s / predicted_s)
        self._seen[arm] = self._seen.get(arm, 0) + 1

    def samples(self, arm: str) -> int:
        return len(self._ratios.get(arm, ()))

    def factor(self, arm: str, q_index: int, offline: float) -> float:
        """Live quantile ÷ ``offline`` (the arm's overall offline margin at the same quantile), clamped."""
        ratios = self._ratios.get(arm)
        if ratios is None or len(ratios) < self.min_samples or offline <= 0:
            return 1.0
        key, seen = (arm, q_index), self._seen[arm]
        cached = self._cache.get(key)
        if cached is None or seen - cached[1] >= self.refresh_every:
            cached = (_quantile(np.fromiter(ratios, dtype=float), QUANTILES[q_index]), seen)
            self._cache[key] = cached
        return min(self.limit, max(1.0 / self.limit, cached[0] / offline))
