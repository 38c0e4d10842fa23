"""Per-arm predictors: for one prompt, how good and how fast each arm's answer will be.

For every arm the model holds four learned pieces over the same prompt vector ``x``
(sentence embedding + cheap features, standardised):

* quality — logistic regression: P(answer is correct);
* output length — ridge regression on ``log1p(output tokens)``;
* decode speed factor — ridge regression on ``log(tokens/s ÷ the arm's median tokens/s)``:
  the per-prompt part of speed (e.g. how well speculative decoding will be accepted);
* TTFT — linear in the prompt's length (thousands of characters).

A :class:`Prediction` combines them with the arm's profiled median speed, corrected by how its
recent streams compared with their forecasts where the gateway has measured some: latency = TTFT +
length / speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from router import neighbours
from router.calibration import Isotonic, LatencyMargins
from router.families import FamilyClassifier
from router.linear import Array


@dataclass(frozen=True)
class Prediction:
    """One arm's forecast for one prompt. Times in seconds, length in tokens."""

    quality: float
    output_tokens: float
    ttft_s: float
    tokens_per_s: float
    latency_s: float
    latency_bound_s: float | None = None  # the calibrated upper quantile the policy checks budgets against
    ttft_bound_s: float | None = None
    speedup: float | None = None  # decode speed over the same model's plain arm (strategy arms only)
    # the live corrections applied (measured / forecast on the arm's recent streams, bounded); the
    # forecast without them is ttft_s / live_ttft_ratio and tokens_per_s / live_speed_ratio
    live_ttft_ratio: float = 1.0
    live_speed_ratio: float = 1.0

    def as_dict(self) -> dict[str, float]:
        out = {
            "quality": round(self.quality, 4),
            "output_tokens": round(self.output_tokens, 1),
            "ttft_ms": round(self.ttft_s * 1000, 1),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "latency_ms": round(self.latency_s * 1000, 1),
        }
        if self.latency_bound_s is not None:
            out["latency_bound_ms"] = round(self.latency_bound_s * 1000, 1)
        if self.ttft_bound_s is not None:
            out["ttft_bound_ms"] = round(self.ttft_bound_s * 1000, 1)
        if self.speedup is not None:
            out["speedup"] = round(self.speedup, 3)
        if self.live_ttft_ratio != 1.0 or self.live_speed_ratio != 1.0:
            out["live_ttft_ratio"] = round(self.live_ttft_ratio, 3)
            out["live_speed_ratio"] = round(self.live_speed_ratio, 3)
        return out

    def replaced(self, **changes: Any) -> Prediction:
        """``dataclasses.replace(self, **changes)`` without its look at every field on each call (it runs
        per arm on every routed request, at several microseconds a call). ``TypeError`` for a name that is
        not a field."""
        if not changes.keys() <= _PREDICTION_FIELDS:
            raise TypeError(f"not fields of Prediction: {sorted(changes.keys() - _PREDICTION_FIELDS)}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new


_PREDICTION_FIELDS = frozenset(f.name for f in fields(Prediction))


@dataclass(frozen=True)
class ArmModel:
    """The learned pieces of one arm (see the module docstring)."""

    quality_w: Array
    length_w: Array
    speed_w: Array
    ttft_intercept_s: float
    ttft_per_kchar_s: float
    median_tokens_per_s: float
    median_ttft_s: float
    quality_knn_k: int = 0  # > 0: quality is the rate of the k nearest training prompts, not quality_w
    ttft_floor_s: float = 0.0  # TTFT never predicted below this (what the shortest prompts take)

    def predict(
        self,
        x: NDArray[np.floating],
        kchars: float,
        max_tokens: int | None,
        ttft_ratio: float = 1.0,
        speed_ratio: float = 1.0,
        slow: float = 1.0,
    ) -> Prediction:
        """This arm's forecast for the standardised prompt vector ``x`` (see :meth:`forecast`)."""
        heads = np.stack([self.quality_w, self.length_w, self.speed_w], axis=1)
        z = x @ heads[:-1] + heads[-1]
        q, n, v = (float(value) for value in z)
        return self.forecast(q, n, v, kchars, max_tokens, ttft_ratio, speed_ratio, slow)

    def forecast(
        self,
        quality_z: float,
        length_z: float,
        speed_z: float,
        kchars: float,
        max_tokens: int | None,
        ttft_ratio: float = 1.0,
        speed_ratio: float = 1.0,
        slow: float = 1.0,
        calibrate: Callable[[float], float] | None = None,
    ) -> Prediction:
        """Combine the three heads' linear outputs with the arm's speed into a :class:`Prediction`.

        ``quality_z`` is a logit, ``length_z`` a ``log1p(tokens)`` and ``speed_z`` a log speed factor
        (clipped to +-2). ``ttft_ratio`` / ``speed_ratio``: the live corrections (measured ÷ forecast
        on the arm's recent streams; 1 without). ``slow`` (>= 1, load on the arm) stretches TTFT and
        decode time alike. ``calibrate``: the arm's raw → calibrated quality map, if it has one.
        Plain-float maths: this runs for every arm of every routed request.
        """
        quality = 1.0 / (1.0 + math.exp(-min(30.0, max(-30.0, quality_z))))
        if calibrate is not None:
            quality = calibrate(quality)
        length = max(1.0, math.expm1(min(length_z, 30.0)))
        if max_tokens is not None:
            length = min(length, float(max_tokens))
        factor = math.exp(min(2.0, max(-2.0, speed_z)))
        tps = max(1e-3, self.median_tokens_per_s * factor * speed_ratio) / slow
        ttft = max(self.ttft_floor_s, self.ttft_intercept_s + self.ttft_per_kchar_s * kchars) * ttft_ratio * slow
        return Prediction(
            quality=quality,
            output_tokens=length,
            ttft_s=ttft,
            tokens_per_s=tps,
            latency_s=ttft + length / tps,
            live_ttft_ratio=ttft_ratio,
            live_speed_ratio=speed_ratio,
        )


@dataclass(frozen=True)
class Calibration:
    """Decision thresholds and calibration maps fitted on out-of-fold data (never hand-set).

    ``balanced_weight``: quality points traded per second of predicted latency under
    ``prefer: balanced``. ``accuracy_levels``: for each named level, how far below the best arm's
    calibrated quality for *this prompt* an arm may be and still qualify (``high`` ≤ ``medium`` ≤
    ``low``, fitted so the realised accuracy of the levels is ordered). ``quality_maps``: per arm,
    raw → calibrated probability. ``margins``: latency upper-bound multipliers (conformal).
    """

    balanced_weight: float
    accuracy_levels: dict[str, float]
    quality_maps: dict[str, Isotonic] = field(default_factory=dict)
    margins: LatencyMargins = field(default_factory=lambda: LatencyMargins({}, {}))


@dataclass(frozen=True)
class RouterModel:
    """Everything a trained router needs at decision time (loaded from an artifact)."""

    encoder: str
    feature_names: tuple[str, ...]
    mean: Array
    std: Array
    arms: dict[str, ArmModel]
    calibration: Calibration
    knn_x: Array | None = None  # standardised training prompts, for arms whose quality head is kNN
    knn_y: dict[str, Array] = field(default_factory=dict)  # per such arm: 1/0 per training prompt, NaN unlabelled
    families: FamilyClassifier | None = None  # the predicted task family, for reporting (router/families.py)

    def family(self, x: NDArray[np.floating]) -> str | None:
        """The most likely task family of the standardised prompt vector ``x``; ``None`` without a classifier."""
        return None if self.families is None else self.families.predict(np.asarray(x, dtype=np.float64))

    def standardise(self, raw: NDArray[np.floating]) -> Array:
        return np.asarray((raw - self.mean) / self.std, dtype=np.float64)

    @cached_property
    def _heads(self) -> tuple[dict[str, int], Array, Array]:
        """Every arm's three heads side by side: (arm -> first column, weights, biases)."""
        names = list(self.arms)
        stacked = np.stack(
            [w for n in names for w in (self.arms[n].quality_w, self.arms[n].length_w, self.arms[n].speed_w)], axis=1
        )
        return {n: 3 * i for i, n in enumerate(names)}, np.ascontiguousarray(stacked[:-1]), stacked[-1].copy()

    def predict(
        self,
        x: NDArray[np.floating],
        kchars: float,
        max_tokens: int | None,
        arms: Sequence[tuple[str, float, float, float]],
    ) -> dict[str, Prediction]:
        """Forecasts for ``arms`` — ``(name, TTFT ratio, speed ratio, slow-down)`` each (see
        :meth:`ArmModel.forecast`) — on one prompt.

        One matrix-vector product for all arms' heads at once, then :meth:`ArmModel.forecast` per
        arm: the per-request cost barely grows with the number of arms. Quality is calibrated
        (:attr:`Calibration.quality_maps`) where the model has a map for the arm. ``KeyError`` for an arm the
        model does not know.
        """
        column, weights, bias = self._heads
        z = (x @ weights + bias).tolist()
        maps = self.calibration.quality_maps
        order = None
        if self.knn_x is not None:
            order = neighbours.neighbour_order(self.knn_x, x, 2 * max(a.quality_knn_k for a in self.arms.values()))
        out = {}
        for name, ttft_ratio, speed_ratio, slow in arms:
            c = column[name]
            arm = self.arms[name]
            quality_z = z[c]
            if arm.quality_knn_k and order is not None:
                r = neighbours.rate(self.knn_y[name], order, arm.quality_knn_k)
                quality_z = math.log(r / (1.0 - r))
            out[name] = arm.forecast(
                quality_z, z[c + 1], z[c + 2], kchars, max_tokens, ttft_ratio, speed_ratio, slow, maps.get(name)
            )
        return out
