"""Fitting the policy's thresholds and calibration maps on out-of-fold predictions.

Called by :func:`router.training.train` after every arm's heads were cross-validated; it never
sees a training fit's own predictions, so the maps and margins describe unseen prompts:

* per arm, an isotonic map raw quality → realised rate (:class:`router.calibration.Isotonic`);
* per arm and predicted-length bucket, conformal latency and TTFT margins
  (:class:`router.calibration.LatencyMargins`);
* the ``balanced`` weight: the trade-off that maximises accuracy gained minus latency paid,
  both normalised by the span of the fixed arms, on the actual outcomes;
* the named accuracy levels as allowed shortfalls from the prompt's best calibrated quality,
  chosen so the realised accuracy of ``low`` / ``medium`` / ``high`` keeps at least
  :data:`LEVEL_RETENTION` of what routing for quality reaches, and is ordered.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from router.calibration import Isotonic, LatencyMargins
from router.choice import level_floor
from router.predictor import Calibration

LEVEL_RETENTION = {"high": 1.0, "medium": 0.9, "low": 0.75}
DELTA_GRID = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class Outcome(Protocol):
    """What a profile row tells about one (prompt, arm): see :class:`router.training.Row`."""

    @property
    def prompt_id(self) -> str: ...
    @property
    def arm(self) -> str: ...
    @property
    def correct(self) -> bool | None: ...
    @property
    def ttft_s(self) -> float: ...
    @property
    def e2e_s(self) -> float: ...


@dataclass
class OutOfFold:
    """Out-of-fold forecasts per prompt id and arm."""

    quality: dict[str, dict[str, float]]  # raw probability
    latency: dict[str, dict[str, float]]  # seconds, as the policy forecasts it
    tokens: dict[str, dict[str, float]]  # predicted output tokens
    ttft: dict[str, dict[str, float]]  # seconds


def calibrate(rows: Sequence[Outcome], oof: OutOfFold, arms: Sequence[str]) -> tuple[Calibration, dict[str, Any]]:
    """All thresholds and maps, with a JSON-able report of how each was chosen."""
    actual: dict[str, dict[str, Outcome]] = defaultdict(dict)
    for r in rows:
        actual[r.prompt_id][r.arm] = r
    maps = {}
    for arm in arms:
        pairs = [
            (q[arm], 1.0 if actual[p][arm].correct else 0.0)
            for p, q in oof.quality.items()
            if arm in q and arm in actual[p] and actual[p][arm].correct is not None
        ]
        if pairs:
            raw, lab = zip(*pairs, strict=True)
            maps[arm] = Isotonic.fit(raw, lab)
    margins = LatencyMargins.fit(
        {
            arm: [
                (oof.tokens[p][arm], lat[arm], actual[p][arm].e2e_s)
                for p, lat in oof.latency.items()
                if arm in lat and arm in actual[p]
            ]
            for arm in arms
        },
        {
            arm: [(t[arm], actual[p][arm].ttft_s) for p, t in oof.ttft.items() if arm in t and arm in actual[p]]
            for arm in arms
        },
    )
    pids = [
        p
        for p in sorted(oof.quality)
        if all(a in oof.quality[p] and a in oof.latency[p] for a in arms)
        and all(a in actual[p] and actual[p][a].correct is not None for a in arms)
    ]
    if not pids:
        empty = {"low": 0.0, "medium": 0.0, "high": 0.0}
        return Calibration(0.0, empty, maps, margins), {"prompts": 0, "margins": margins.as_dict()}
    q = np.array([[maps[a](oof.quality[p][a]) if a in maps else oof.quality[p][a] for a in arms] for p in pids])
    lat = np.array([[oof.latency[p][a] for a in arms] for p in pids])
    acc = np.array([[1.0 if actual[p][a].correct else 0.0 for a in arms] for p in pids])
    e2e = np.array([[actual[p][a].e2e_s for a in arms] for p in pids])
    weight, sweep = _balanced_weight(q, lat, acc, e2e)
    levels, level_sweep = _levels(q, lat, acc, e2e)
    report = {
        "prompts": len(pids),
        "balanced_weight": weight,
        "accuracy_levels": levels,
        "sweep": sweep,
        "level_sweep": level_sweep,
        "fixed_arms": {
            a: {"accuracy": float(fa), "latency_s": float(fl)}
            for a, fa, fl in zip(arms, acc.mean(axis=0), e2e.mean(axis=0), strict=True)
        },
        "quality_maps": {a: m.as_dict() for a, m in maps.items()},
        "margins": margins.as_dict(),
    }
    return Calibration(weight, levels, maps, margins), report


def _balanced_weight(
    q: np.ndarray, lat: np.ndarray, acc: np.ndarray, e2e: np.ndarray
) -> tuple[float, list[dict[str, float]]]:
    """Route with ``argmax q - w * latency`` for each ``w`` on a log grid; keep the best utility."""
    fixed_acc, fixed_lat = acc.mean(axis=0), e2e.mean(axis=0)
    acc_span = max(fixed_acc.max() - fixed_acc.min(), 1e-9)
    lat_span = max(fixed_lat.max() - fixed_lat.min(), 1e-9)
    rows = np.arange(len(q))
    best_w, best_u, sweep = 0.0, -np.inf, []
    for w in [0.0, *np.geomspace(1e-4, 1.0, 25).tolist()]:
        pick = np.argmax(q - w * lat, axis=1)
        a_mean, t_mean = float(acc[rows, pick].mean()), float(e2e[rows, pick].mean())
        utility = (a_mean - fixed_acc.min()) / acc_span - (t_mean - fixed_lat.min()) / lat_span
        sweep.append({"weight": w, "accuracy": a_mean, "latency_s": t_mean, "utility": utility})
        if utility > best_u + 1e-12:
            best_w, best_u = w, utility
    return best_w, sweep


def level_picks(q: np.ndarray, lat: np.ndarray, delta: float) -> np.ndarray:
    """Per prompt, the fastest arm whose calibrated quality meets the level (:func:`router.choice.level_floor`)."""
    ok = q >= level_floor(q.max(axis=1, keepdims=True), delta)
    return np.asarray(np.argmin(np.where(ok, lat, np.inf), axis=1))


def _levels(
    q: np.ndarray, lat: np.ndarray, acc: np.ndarray, e2e: np.ndarray
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The largest shortfall per level whose realised accuracy (and every smaller one's) keeps the
    level's share of the quality route's; ordered by construction (high ≤ medium ≤ low)."""
    rows = np.arange(len(q))
    sweep = []
    for delta in DELTA_GRID:
        pick = level_picks(q, lat, delta)
        sweep.append(
            {"delta": delta, "accuracy": float(acc[rows, pick].mean()), "latency_s": float(e2e[rows, pick].mean())}
        )
    reference = sweep[0]["accuracy"]
    levels: dict[str, float] = {}
    previous = 0.0
    for name in ("high", "medium", "low"):
        target = LEVEL_RETENTION[name] * reference
        chosen = previous
        for point in sweep:
            if point["delta"] < previous:
                continue
            if point["accuracy"] + 1e-12 < target:
                break
            chosen = point["delta"]
        levels[name] = previous = chosen
    return levels, sweep
