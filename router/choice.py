"""The learned policy's decision rules: forecasts plus the caller's flags in, one ranked choice out.

The contract (``docs/router.md``, "What the flags promise"):

1. An arm *fits* a budget when its calibrated upper bound — ``Prediction.latency_bound_s``
   (``ttft_bound_s`` for ``max_ttft_ms``), by default the 90th percentile of what that arm's
   latency turned out to be on unseen prompts — is within the budget. It *meets the accuracy
   floor* when its calibrated quality is at least the floor.
2. Among the arms that do both, ``prefer`` chooses: ``speed`` the least predicted latency,
   ``quality`` the highest quality (within :data:`QUALITY_RESOLUTION`, a tie: less latency), ``balanced`` the highest
   ``quality - weight * latency_s``. With an accuracy flag and no ``prefer``, ``speed``: the
   floor already says how good the answer must be. Reason ``prefer-<preference>``.
3. When no arm does both, nothing is dropped silently:

   * ``strict``: :class:`~router.decision.RouteUnmeetable` naming the flag, before any generation.
   * ``priority: latency`` (the default): among arms that fit the budget, the highest quality
     (reason ``accuracy-unmet``); if none fits, the arm most likely to fit (``budget-unmeetable``).
   * ``priority: accuracy``: among arms that meet the floor, the one most likely to fit the budget
     (``budget-unmeetable``); if none meets it, the highest quality among those that fit, else of
     all (``accuracy-unmet``).

"Most likely to fit" is the arm whose budget covers the highest calibrated quantile of its
latency (ties: the lower median bound). Ties everywhere else go to configuration order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from router.decision import ArmState, Decision, RouteFlags, RouteUnmeetable
from router.predictor import Prediction

Key = Callable[[ArmState], Any]
QUALITY_RESOLUTION = 0.01
"""Calibrated qualities closer than this (one point) are ties, broken by predicted latency: the
estimates are not accurate to a finer grain, and without it ``prefer: quality`` sent prompts that
no arm answers (predicted 0.1 % vs 0 %) to the slowest arm, 20 s instead of 6 s (``docs/router.md``)."""


def level_floor(best: float, shortfall: float) -> float:
    """The quality a named accuracy level asks for when the prompt's best arm reaches ``best``: at most
    ``shortfall`` below it, and never finer than :data:`QUALITY_RESOLUTION` (``high`` with a shortfall
    of 0 is ``prefer: quality``'s choice set)."""
    return best - max(shortfall, QUALITY_RESOLUTION) - 1e-12


def _fits(p: Prediction, max_lat: float | None, max_ttft: float | None) -> bool:
    lat = p.latency_s if p.latency_bound_s is None else p.latency_bound_s
    ttft = p.ttft_s if p.ttft_bound_s is None else p.ttft_bound_s
    return (max_lat is None or lat <= max_lat) and (max_ttft is None or ttft <= max_ttft)


def _fit_odds(p: Prediction, max_lat: float | None, max_ttft: float | None) -> tuple[float, float]:
    """Sort key, smaller = likelier to fit: how far the bound overshoots the tighter budget."""
    over = 0.0
    if max_lat is not None:
        over = max(over, (p.latency_bound_s or p.latency_s) / max_lat)
    if max_ttft is not None:
        over = max(over, (p.ttft_bound_s or p.ttft_s) / max_ttft)
    return over, p.latency_s


def choose(
    flags: RouteFlags,
    healthy: Sequence[ArmState],
    preds: dict[str, Prediction],
    floor: float | None,
    weight: float,
    family: str | None = None,
) -> Decision:
    """Apply the contract above; ``floor`` is the accuracy floor already resolved to a probability.
    ``family``: the prompt's task family, carried by the decision."""
    max_lat = flags.max_latency_ms / 1000 if flags.max_latency_ms else None
    max_ttft = flags.max_ttft_ms / 1000 if flags.max_ttft_ms else None
    order = {s.arm.name: i for i, s in enumerate(healthy)}

    def by_latency(s: ArmState) -> tuple[float, int]:
        return preds[s.arm.name].latency_s, order[s.arm.name]

    def by_quality_in(pool: Sequence[ArmState]) -> Key:
        """Highest quality first; arms within :data:`QUALITY_RESOLUTION` of the best count as tied
        and go fastest first."""
        best = max((preds[s.arm.name].quality for s in pool), default=0.0)

        def key(s: ArmState) -> tuple[int, float, float, int]:
            p = preds[s.arm.name]
            if p.quality >= best - QUALITY_RESOLUTION:
                return 0, 0.0, p.latency_s, order[s.arm.name]
            return 1, -p.quality, p.latency_s, order[s.arm.name]

        return key

    def by_balance(s: ArmState) -> tuple[float, int]:
        p = preds[s.arm.name]
        return -(p.quality - weight * p.latency_s), order[s.arm.name]

    def by_fit(s: ArmState) -> tuple[float, float, int]:
        return (*_fit_odds(preds[s.arm.name], max_lat, max_ttft), order[s.arm.name])

    accurate = [s for s in healthy if floor is None or preds[s.arm.name].quality >= floor]
    fitting = [s for s in healthy if _fits(preds[s.arm.name], max_lat, max_ttft)]
    fit_names = {s.arm.name for s in fitting}  # arm names are unique; a set, not ArmState equality per test
    feasible = [s for s in accurate if s.arm.name in fit_names]
    prefer = flags.prefer or ("speed" if flags.accuracy is not None else "balanced")
    key: Key
    if feasible:
        key = by_latency if prefer == "speed" else by_quality_in(feasible) if prefer == "quality" else by_balance
        ranked, reason = sorted(feasible, key=key), f"prefer-{prefer}"
        why = f"{len(feasible)} of {len(healthy)} arms meet the flags; chose by {prefer}"
    else:
        budget_param = "route.max_latency_ms" if max_lat is not None else "route.max_ttft_ms"
        if flags.strict:
            _refuse(floor, fitting, accurate, budget_param, max_lat, max_ttft)
        if flags.priority == "accuracy" and accurate:
            pool, key, reason = accurate, by_fit, "budget-unmeetable"
            why = "no arm that reaches the accuracy floor is predicted to fit the budget; chose the likeliest to fit"
        elif not fitting:
            pool, key, reason = list(healthy), by_fit, "budget-unmeetable"
            why = "no arm is predicted to fit the budget; chose the arm most likely to fit"
        else:
            pool, key, reason = fitting, by_quality_in(fitting), "accuracy-unmet"
            why = f"no arm that fits the flags reaches the accuracy floor {floor:.2f}; chose the highest quality"
        ranked = sorted(pool, key=key)
    ranked_names = {s.arm.name for s in ranked}
    rest = sorted((s for s in healthy if s.arm.name not in ranked_names), key=by_latency)
    arms = tuple(s.arm for s in [*ranked, *rest])
    return Decision(arm=arms[0], reason=reason, ranked=arms, predictions=preds, explanation=why, family=family)


def _refuse(
    floor: float | None,
    fitting: Sequence[ArmState],
    accurate: Sequence[ArmState],
    budget_param: str,
    max_lat: float | None,
    max_ttft: float | None,
) -> None:
    if not fitting:
        budget = (
            f"{max_lat * 1000:.0f} ms" if max_lat is not None else f"{(max_ttft or 0) * 1000:.0f} ms to first token"
        )
        raise RouteUnmeetable(budget_param, f"no arm is predicted to answer within {budget} (route.strict is set)")
    if not accurate:
        raise RouteUnmeetable("route.accuracy", f"no arm reaches the accuracy floor {floor:.2f} (route.strict is set)")
    raise RouteUnmeetable(
        "route.accuracy", "no single arm both meets the accuracy floor and fits the budget (route.strict is set)"
    )
