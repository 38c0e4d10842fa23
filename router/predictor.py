"""Per-arm predictors: for one prompt, how good and how fast each arm's answer will be.

For every arm the model holds four learned pieces over the same prompt vector ``x``
(sentence embedding + cheap features, standardised):

* quality — logistic regression: P(answer is correct);
* output length — ridge regression on ``log1p(output tokens)``;
* decode speed factor — ridge regression on ``log(tokens/s ÷ the arm's median tokens/s)``:
  the per-prompt part of speed (e.g. how well speculative decoding will be accepted);
* TTFT — linear in the prompt's length (thousands of characters).

A :class:`Prediction` combines them with the arm's *live* speed and TTFT where the gateway has
measurements (the profile medians otherwise): latency = TTFT + length / speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from router.linear import Array, predict_linear, predict_logistic


@dataclass(frozen=True)
class Prediction:
    """One arm's forecast for one prompt. Times in seconds, length in tokens."""

    quality: float
    output_tokens: float
    ttft_s: float
    tokens_per_s: float
    latency_s: float

    def as_dict(self) -> dict[str, float]:
        return {
            "quality": round(self.quality, 4),
            "output_tokens": round(self.output_tokens, 1),
            "ttft_ms": round(self.ttft_s * 1000, 1),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "latency_ms": round(self.latency_s * 1000, 1),
        }


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

    def predict(
        self,
        x: NDArray[np.floating],
        kchars: float,
        max_tokens: int | None,
        live_ttft_s: float | None,
        live_tokens_per_s: float | None,
    ) -> Prediction:
        quality = float(predict_logistic(self.quality_w, x[None, :])[0])
        length = float(np.expm1(predict_linear(self.length_w, x[None, :])[0]))
        length = max(1.0, length)
        if max_tokens is not None:
            length = min(length, float(max_tokens))
        factor = float(np.exp(np.clip(predict_linear(self.speed_w, x[None, :])[0], -2.0, 2.0)))
        base_tps = live_tokens_per_s or self.median_tokens_per_s
        tps = max(1e-3, base_tps * factor)
        ttft = max(0.0, self.ttft_intercept_s + self.ttft_per_kchar_s * kchars)
        if live_ttft_s is not None and self.median_ttft_s > 0:
            ttft *= live_ttft_s / self.median_ttft_s
        return Prediction(
            quality=quality, output_tokens=length, ttft_s=ttft, tokens_per_s=tps, latency_s=ttft + length / tps
        )


@dataclass(frozen=True)
class Calibration:
    """Decision thresholds fitted on data (never hand-set).

    ``balanced_weight``: quality points traded per second of predicted latency under
    ``prefer: balanced``. ``accuracy_levels``: the floor each named level stands for.
    """

    balanced_weight: float
    accuracy_levels: dict[str, float]


@dataclass(frozen=True)
class RouterModel:
    """Everything a trained router needs at decision time (loaded from an artifact)."""

    encoder: str
    feature_names: tuple[str, ...]
    mean: Array
    std: Array
    arms: dict[str, ArmModel]
    calibration: Calibration

    def standardise(self, raw: NDArray[np.floating]) -> Array:
        return np.asarray((raw - self.mean) / self.std, dtype=np.float64)
