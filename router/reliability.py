"""Is the router's forecast honest? Reliability of its predicted quality and the error of its latency.

A reliability diagram bins the predicted probability that an answer is correct and compares each
bin's mean prediction with how often the answers in it were actually correct. A bin is called
calibrated when the two are within ``tolerance`` (5 points), judged only for bins with enough
prompts (30) to tell. Latency: the ratio actual / predicted end-to-end seconds, as quantiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

BINS = 10
MIN_COUNT = 30
TOLERANCE = 0.05


def reliability(
    predicted: NDArray[np.floating],
    realised: NDArray[np.floating],
    bins: int = BINS,
    min_count: int = MIN_COUNT,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Equal-width bins over [0, 1]: per bin the count, mean prediction, realised rate and whether
    ``|realised - predicted| <= tolerance`` (``None`` under ``min_count``); plus the expected
    calibration error (count-weighted mean ``|realised - predicted|``) and the Brier score."""
    p = np.clip(np.asarray(predicted, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(realised, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    ece = 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        mean_p = float(p[m].mean()) if n else None
        rate = float(y[m].mean()) if n else None
        ok = None
        if n >= min_count and mean_p is not None and rate is not None:
            ok = bool(abs(rate - mean_p) <= tolerance + 1e-12)
        if n and mean_p is not None and rate is not None:
            ece += n * abs(rate - mean_p)
        out.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": n,
                "mean_predicted": mean_p,
                "realised": rate,
                "within_tolerance": ok,
            }
        )
    n_all = len(p)
    return {
        "prompts": n_all,
        "bins": out,
        "ece": ece / n_all if n_all else None,
        "brier": float(np.mean((p - y) ** 2)) if n_all else None,
        "mean_predicted": float(p.mean()) if n_all else None,
        "realised": float(y.mean()) if n_all else None,
    }


def ratio_quantiles(actual: NDArray[np.floating], predicted: NDArray[np.floating]) -> dict[str, Any]:
    """Quantiles (p10, p50, p90) of ``actual / predicted`` over the pairs with a positive prediction."""
    a = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    ok = p > 0
    r = a[ok] / p[ok]
    if not len(r):
        return {"prompts": 0, "p10": None, "p50": None, "p90": None}
    q10, q50, q90 = np.percentile(r, [10, 50, 90])
    return {"prompts": len(r), "p10": float(q10), "p50": float(q50), "p90": float(q90)}


def forecast_report(
    per_prompt: Mapping[str, Any],
    arms: Sequence[str],
    correct: NDArray[np.floating],
    e2e_s: NDArray[np.floating],
    chosen: Mapping[str, NDArray[np.integer]],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Reliability of the predicted quality and actual / predicted latency quantiles, from the
    per-prompt forecasts of an evaluation (``None`` when the policy made none).

    ``correct``: ``(prompts, arms)``, NaN for unlabelled prompts (left out of the reliability);
    ``chosen``: arm index per prompt for the settings whose chosen arm is binned on its own (the
    chosen arm's prediction is the selected one, so it is optimistic when predictions are noisy).
    Where the policy gave latency bounds, ``bound_coverage``: the share of prompts whose actual
    latency stayed within the bound (the policy's latency quantile, 0.9 by default, if honest).
    """
    if per_prompt.get("predicted_quality") is None or per_prompt.get("predicted_latency_s") is None:
        return None, None
    n_arms = len(arms)
    pq = np.asarray(per_prompt["predicted_quality"], dtype=np.float64).reshape(-1, n_arms)
    pl = np.asarray(per_prompt["predicted_latency_s"], dtype=np.float64).reshape(-1, n_arms)
    rows = np.flatnonzero(~np.isnan(correct).any(axis=1))
    lab_q, lab_y = pq[rows], correct[rows]
    calib = {
        "all_arms": reliability(lab_q.ravel(), lab_y.ravel()),
        "per_arm": {a: reliability(lab_q[:, j], lab_y[:, j]) for j, a in enumerate(arms)},
        "chosen": {
            name: reliability(pq[rows, picks[rows]], correct[rows, picks[rows]]) for name, picks in chosen.items()
        },
    }
    ratio = {a: ratio_quantiles(e2e_s[:, j], pl[:, j]) for j, a in enumerate(arms)}
    ratio["all"] = ratio_quantiles(e2e_s.ravel(), pl.ravel())
    if per_prompt.get("predicted_latency_bound_s") is not None:
        bound = np.asarray(per_prompt["predicted_latency_bound_s"], dtype=np.float64).reshape(-1, n_arms)
        for j, a in enumerate(arms):
            ratio[a]["bound_coverage"] = float(np.mean(e2e_s[:, j] <= bound[:, j]))
        ratio["all"]["bound_coverage"] = float(np.mean(e2e_s <= bound))
    return calib, ratio
