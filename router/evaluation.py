"""Offline evaluation of a trained router on held-out prompts (``llm-gateway evaluate``).

Every held-out prompt was answered by every arm during profiling, so any routing rule is scored
exactly: pick an arm, read that arm's real outcome (correct or not, end-to-end seconds). The router
is scored through the policy object itself (:meth:`Policy.decide`), so the decision code under test
is the code that serves, under a list of flag :data:`SETTINGS` (preferences, accuracy levels,
latency budgets).

Each setting is compared, on the same prompts, with every fixed arm, random mixing at the router's
own arm shares (its exact expectation), a task-family rule and kNN fitted on the training prompts
(:mod:`router.baselines`), and the oracle. Accuracy counts labelled prompts only; latency and budget
compliance count every prompt (chat prompts have no label). Uncertainty: paired bootstrap intervals
over prompts (:mod:`router.bootstrap`) for every point and for every router-minus-baseline
difference. Honesty of the forecasts: reliability bins of the predicted quality and quantiles of
actual / predicted latency (:mod:`router.reliability`).

:func:`evaluate` runs the policy and the baselines and records, per prompt, the outcomes, picks,
reasons and forecasts; every number of the report is computed from that record by
:func:`router.scorecard.summarise`. The record stays in the result, so :func:`pool` concatenates
cross-validation folds and recomputes everything (bootstrap included) over all prompts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from router.baselines import Forecast, Outcomes, Rule, choose, knn_forecasts, outcomes, task_forecasts
from router.decision import Arm, ArmState, RouteFlags, RouteRequest
from router.linear import Array
from router.policy import Policy
from router.predictor import Prediction
from router.scorecard import REPLICATES as REPLICATES  # re-exported: the default number of bootstrap draws
from router.scorecard import decode_reasons, encode_reasons, summarise
from router.strategy import build_strategy
from router.training import Row

BALANCED_SWEEP = (0.0, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
KNN_K = 10
FORECAST_KEYS = ("predicted_quality", "predicted_latency_s", "predicted_latency_bound_s")


@dataclass(frozen=True)
class Setting:
    """One way of calling the router: its flags, and (balanced sweep only) a balanced weight override.
    ``compare``: also score the baselines under the same rule and the differences to them."""

    name: str
    flags: RouteFlags = field(default_factory=RouteFlags)
    weight: float | None = None
    compare: bool = True

    @property
    def label(self) -> str:
        return self.name.removeprefix("router:")

    @property
    def budget_s(self) -> float | None:
        return self.flags.max_latency_ms / 1000 if self.flags.max_latency_ms else None

    def meta(self) -> dict[str, Any]:
        flags = {f.name: getattr(self.flags, f.name) for f in fields(self.flags)}
        return {
            "name": self.name,
            "flags": {k: v for k, v in flags.items() if v is not None and v is not False},
            "budget_s": self.budget_s,
            "weight": self.weight,
            "compare": self.compare,
        }


SETTINGS: tuple[Setting, ...] = (
    Setting("router:quality", RouteFlags(prefer="quality")),
    Setting("router:balanced", RouteFlags(prefer="balanced")),
    Setting("router:speed", RouteFlags(prefer="speed")),
    Setting("router:default", RouteFlags()),
    *(Setting(f"router:accuracy={lv}", RouteFlags(accuracy=lv, prefer="speed")) for lv in ("low", "medium", "high")),
    *(Setting(f"router:max_latency_ms={ms}", RouteFlags(max_latency_ms=ms)) for ms in (2000, 5000, 10000)),
    *(
        Setting(f"router:quality,max_latency_ms={ms}", RouteFlags(prefer="quality", max_latency_ms=ms))
        for ms in (2000, 5000, 10000)
    ),
    Setting("router:accuracy=high,max_latency_ms=3000", RouteFlags(accuracy="high", max_latency_ms=3000)),
    *(
        Setting(f"router:balanced(w={w})", RouteFlags(prefer="balanced"), weight=w, compare=False)
        for w in BALANCED_SWEEP
    ),
)


def _vector(features: Any) -> Array:
    """The standardised prompt vector in what ``featurize`` returned (``(vector, kchars)`` for the learned policy)."""
    if isinstance(features, tuple | list):
        features = features[0]
    return np.asarray(features, dtype=np.float64).ravel()


def _calibration(policy: Policy) -> dict[str, Any] | None:
    cal = getattr(getattr(policy, "model", None), "calibration", None)
    if cal is None:
        return None
    return {"balanced_weight": float(cal.balanced_weight), "accuracy_levels": dict(cal.accuracy_levels)}


def _rule(policy: Policy, setting: Setting) -> Rule:
    """The setting's decision rule written out (:func:`router.baselines.choose`), for a policy whose
    decision cannot be fed the baselines' forecasts; a named accuracy level reads as an absolute floor."""
    flags, cal = setting.flags, _calibration(policy)
    floor: float | None = None
    if isinstance(flags.accuracy, int | float):
        floor = float(flags.accuracy)
    elif isinstance(flags.accuracy, str) and cal:
        floor = cal["accuracy_levels"].get(flags.accuracy)
    weight = setting.weight if setting.weight is not None else (cal["balanced_weight"] if cal else 0.0)
    prefer = flags.prefer or ("speed" if flags.accuracy is not None else "balanced")
    return Rule(prefer=prefer, floor=floor, budget_s=setting.budget_s, weight=weight)


_BOUNDS = {"latency_bound_s", "ttft_bound_s"} <= {f.name for f in fields(Prediction)}


def _predictions(forecast: Forecast, i: int, arms: Sequence[str]) -> dict[str, Prediction]:
    """Prompt ``i``'s baseline forecast as the policy's :class:`Prediction` (p90s as the latency bounds)."""
    out = {}
    quality = np.nan_to_num(forecast.quality[i], nan=0.0)
    for j, a in enumerate(arms):
        p = Prediction(
            quality=float(quality[j]),
            output_tokens=0.0,
            ttft_s=float(forecast.ttft_s[i, j]),
            tokens_per_s=0.0,
            latency_s=float(forecast.latency_s[i, j]),
        )
        if _BOUNDS:
            p = replace(
                p, latency_bound_s=float(forecast.latency_p90_s[i, j]), ttft_bound_s=float(forecast.ttft_p90_s[i, j])
            )
        out[a] = p
    return out


def _baseline_decisions(
    policy: Policy,
    setting: Setting,
    forecast: Forecast,
    test: Outcomes,
    features: Mapping[str, Any],
    states: list[ArmState],
) -> tuple[list[int], list[str] | None]:
    """A baseline's pick per prompt: the policy's own :meth:`~Policy.decide` for the setting, with the
    baseline's forecasts in place of the policy's ``predict``; reasons are the policy's. When the
    decision does not go through ``predict`` (it does not return the forecasts it was given), the
    rule written out instead (:func:`_rule`), and no reasons."""
    arms = [s.arm.name for s in states]
    index = {a: j for j, a in enumerate(arms)}
    current: list[dict[str, Prediction]] = [{}]
    own = vars(policy).get("predict")

    def predict(request: RouteRequest, candidates: Sequence[ArmState]) -> dict[str, Prediction]:
        return current[0]

    try:
        setattr(policy, "predict", predict)  # noqa: B010 (an instance attribute: the class's stays intact)
    except AttributeError:
        return choose(forecast, _rule(policy, setting)), None
    picks, reasons = [], []
    try:
        for i, p in enumerate(test.ids):
            current[0] = _predictions(forecast, i, arms)
            d = policy.decide(RouteRequest(flags=setting.flags, features=features[p]), states)
            if d.predictions is not current[0]:
                return choose(forecast, _rule(policy, setting)), None
            picks.append(index[d.arm.name])
            reasons.append(d.reason)
    finally:
        if own is not None:
            setattr(policy, "predict", own)  # noqa: B010
        elif "predict" in vars(policy):
            delattr(policy, "predict")
    return picks, reasons


def _route(
    policy: Policy, settings: Sequence[Setting], test: Outcomes, features: Mapping[str, Any], states: list[ArmState]
) -> tuple[dict[str, list[int]], dict[str, list[str]], list[float]]:
    """The router's pick (arm index) and reason per prompt under every setting, and each decision's seconds."""
    index = {s.arm.name: j for j, s in enumerate(states)}
    picks: dict[str, list[int]] = {}
    reasons: dict[str, list[str]] = {}
    decide_s: list[float] = []
    model = getattr(policy, "model", None)
    for setting in settings:
        if setting.weight is not None and model is not None:
            calibration = replace(model.calibration, balanced_weight=setting.weight)
            policy.model = replace(model, calibration=calibration)  # type: ignore[attr-defined]
        try:
            picked, why = [], []
            for p in test.ids:
                t0 = time.perf_counter()
                d = policy.decide(RouteRequest(flags=setting.flags, features=features[p]), states)
                decide_s.append(time.perf_counter() - t0)
                picked.append(index[d.arm.name])
                why.append(d.reason)
        finally:
            if model is not None:
                policy.model = model  # type: ignore[attr-defined]
        picks[setting.name], reasons[setting.name] = picked, why
    return picks, reasons, decide_s


def _policy_forecasts(
    policy: Policy, test: Outcomes, features: Mapping[str, Any], states: list[ArmState]
) -> dict[str, list[list[float]] | None]:
    """The policy's own forecast per prompt and arm (``policy.predict``, when it has one): quality,
    latency and, where the policy gives one, the latency bound it checks budgets against."""
    out: dict[str, list[list[float]] | None] = dict.fromkeys(FORECAST_KEYS)
    predict = getattr(policy, "predict", None)
    if not callable(predict):
        return out
    arms = [s.arm.name for s in states]
    q: list[list[float]] = []
    lat: list[list[float]] = []
    bound: list[list[Any]] = []
    for p in test.ids:
        preds = predict(RouteRequest(features=features[p]), states)
        q.append([round(float(preds[a].quality), 5) for a in arms])
        lat.append([round(float(preds[a].latency_s), 4) for a in arms])
        bound.append([getattr(preds[a], "latency_bound_s", None) for a in arms])
    out["predicted_quality"], out["predicted_latency_s"] = q, lat
    if all(isinstance(v, int | float) for row in bound for v in row):
        out["predicted_latency_bound_s"] = [[round(float(v), 4) for v in row] for row in bound]
    return out


def evaluate(
    policy: Policy,
    rows: Sequence[Row],
    features: Mapping[str, Any],
    arms: Sequence[str],
    *,
    train_rows: Sequence[Row],
    train_features: Mapping[str, Any],
    settings: Sequence[Setting] = SETTINGS,
    replicates: int = REPLICATES,
    seed: int = 0,
    k: int = KNN_K,
    arm_specs: Mapping[str, Arm] | None = None,
) -> dict[str, Any]:
    """Score the router under ``settings`` and the baselines on the held-out prompts of ``rows``.

    ``arm_specs``: each arm's public model and strategy as it was profiled (the policy treats a
    speculative arm and its plain sibling alike in quality); without them every arm is its own plain model.

    ``features`` / ``train_features``: what ``policy.featurize`` returned per prompt id, for the
    held-out and the training prompts (computed once by the caller; kNN uses their standardised
    vectors). ``train_rows`` fit the task rule and kNN. Prompts count when every arm answered them
    (and they have features); unlabelled ones count for latency and compliance only. The result is
    :func:`router.scorecard.summarise`'s report plus ``training_prompts``, ``calibration``,
    ``policy_decide_ms`` and ``per_prompt`` (the raw material :func:`pool` needs).
    """
    test = outcomes(rows, arms, keep=features)
    if not test.ids:
        raise ValueError("no held-out prompt has an outcome for every arm")
    train = outcomes(train_rows, arms, keep=train_features)
    if not train.ids:
        raise ValueError("no training prompt has an outcome for every arm (the baselines are fitted on them)")
    specs = arm_specs or {}
    states = [
        ArmState(arm=specs.get(a) or Arm(name=a, model=a, strategy=build_strategy({"kind": "plain"}))) for a in arms
    ]
    picks, reasons, decide_s = _route(policy, settings, test, features, states)

    train_x = np.stack([_vector(train_features[p]) for p in train.ids])
    test_x = np.stack([_vector(features[p]) for p in test.ids])
    forecasts = {"task-rule": task_forecasts(train, test.tasks), "knn": knn_forecasts(train, train_x, test_x, k)}
    through_policy = True
    for setting in settings:
        for kind, forecast in forecasts.items():
            if setting.compare:
                name = f"{kind}:{setting.label}"
                picks[name], why = _baseline_decisions(policy, setting, forecast, test, features, states)
                if why is None:
                    through_policy = False
                else:
                    reasons[name] = why

    forecasts_of = _policy_forecasts(policy, test, features, states)
    labels, codes = encode_reasons(reasons)
    per_prompt = {
        "prompt_ids": test.ids,
        "tasks": test.tasks,
        "correct": [[None if np.isnan(v) else int(v) for v in row] for row in test.correct.tolist()],
        "e2e_s": np.round(test.e2e_s, 4).tolist(),
        "ttft_s": np.round(test.ttft_s, 4).tolist(),
        **forecasts_of,
        "picks": picks,
        "reason_labels": labels,
        "reasons": codes,
    }
    report = summarise(per_prompt, arms, [s.meta() for s in settings], replicates=replicates, seed=seed)
    report["training_prompts"] = len(train.ids)
    report["knn_k"] = k
    report["baseline_decisions"] = "policy" if through_policy else "rule"
    report["calibration"] = _calibration(policy)
    report["policy_decide_ms"] = {
        "p50": float(np.percentile(decide_s, 50) * 1000),
        "p99": float(np.percentile(decide_s, 99) * 1000),
    }
    report["per_prompt"] = per_prompt
    return report


def pool(results: Sequence[Mapping[str, Any]], replicates: int | None = None) -> dict[str, Any]:
    """Combine :func:`evaluate` results on disjoint prompt sets (cross-validation folds).

    The folds' per-prompt outcomes, picks and forecasts are concatenated and
    :func:`router.scorecard.summarise` recomputes every number over all prompts: means are exactly
    what one evaluation over all the prompts would report, random mixing uses the pooled arm shares,
    and the bootstrap resamples all prompts. Decision latency percentiles are the folds' medians.
    ``replicates``: bootstrap draws over the pooled prompts (default: what the folds used; folds
    evaluated with 0 save the work).
    """
    if not results:
        raise ValueError("nothing to pool")
    first = results[0]
    arms, settings = first["arms"], first["settings"]
    for r in results[1:]:
        if r["arms"] != arms or [s["name"] for s in r["settings"]] != [s["name"] for s in settings]:
            raise ValueError("the results to pool differ in arms or settings")
    parts = [r["per_prompt"] for r in results]
    ids = [p for part in parts for p in part["prompt_ids"]]
    if len(set(ids)) != len(ids):
        raise ValueError("the results to pool share prompts; folds must be disjoint")
    per_prompt: dict[str, Any] = {
        key: [v for part in parts for v in part[key]] for key in ("prompt_ids", "tasks", "correct", "e2e_s", "ttft_s")
    }
    per_prompt["fold"] = [i for i, part in enumerate(parts) for _ in part["prompt_ids"]]
    for key in FORECAST_KEYS:
        have = all(part.get(key) is not None for part in parts)
        per_prompt[key] = [v for part in parts for v in part[key]] if have else None
    decoded = [decode_reasons(part) for part in parts]
    for key, source in (("picks", [part["picks"] for part in parts]), ("reasons", decoded)):
        common = [name for name in source[0] if all(name in got for got in source)]
        per_prompt[key] = {name: [v for got in source for v in got[name]] for name in common}
    per_prompt["reason_labels"], per_prompt["reasons"] = encode_reasons(per_prompt["reasons"])
    boot = first["bootstrap"]
    draws = boot["replicates"] if replicates is None else replicates
    report = summarise(per_prompt, arms, settings, replicates=draws, seed=boot["seed"])
    report["folds"] = len(results)
    report["training_prompts"] = [r["training_prompts"] for r in results]
    report["knn_k"] = first.get("knn_k")
    report["baseline_decisions"] = "policy" if all(r.get("baseline_decisions") == "policy" for r in results) else "rule"
    report["calibration"] = [r.get("calibration") for r in results]
    report["policy_decide_ms"] = {
        q: float(np.median([r["policy_decide_ms"][q] for r in results])) for q in ("p50", "p99")
    }
    report["per_prompt"] = per_prompt
    return report
