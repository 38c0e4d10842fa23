"""Offline evaluation of a trained router on held-out prompts (``llm-gateway evaluate``).

Every held-out prompt was answered by every arm during profiling, so any routing rule can be
scored exactly: pick an arm, read that arm's real outcome (correct or not, end-to-end seconds).
The router is scored through :class:`router.learned.LearnedPolicy` itself, so the decision code
under test is the code that serves. Compared: each fixed arm, uniform random routing (its
expectation), the oracle (the fastest correct arm; the fastest arm when none is correct), and
the router over a sweep of flags.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from router.decision import Arm, ArmState, RouteFlags, RouteRequest
from router.policy import Policy
from router.predictor import Calibration
from router.strategy import build_strategy
from router.training import Row

BALANCED_SWEEP = (0.0, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


@dataclass(frozen=True)
class Point:
    """One routing rule's result: mean accuracy and mean end-to-end latency over the prompts."""

    name: str
    accuracy: float
    latency_s: float
    share: dict[str, float]


def _point(name: str, picks: Sequence[str], outcomes: Mapping[str, Mapping[str, Row]], pids: Sequence[str]) -> Point:
    acc = np.mean([1.0 if outcomes[p][a].correct else 0.0 for p, a in zip(pids, picks, strict=True)])
    lat = np.mean([outcomes[p][a].e2e_s for p, a in zip(pids, picks, strict=True)])
    counts: dict[str, float] = defaultdict(float)
    for a in picks:
        counts[a] += 1 / len(picks)
    return Point(name, float(acc), float(lat), dict(sorted(counts.items())))


def evaluate(
    policy: Policy,
    rows: Sequence[Row],
    features: Mapping[str, Any],
    arms: Sequence[str],
    prompt_lengths: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Score fixed arms, random, oracle and the router's flag sweep on labelled held-out prompts.

    ``features``: what ``policy.featurize`` returned per prompt id (computed once by the caller).
    """
    outcomes: dict[str, dict[str, Row]] = defaultdict(dict)
    task_of: dict[str, str] = {}
    for r in rows:
        outcomes[r.prompt_id][r.arm] = r
        task_of[r.prompt_id] = r.task
    pids = sorted(
        p
        for p in outcomes
        if p in features and all(a in outcomes[p] and outcomes[p][a].correct is not None for a in arms)
    )
    if not pids:
        raise ValueError("no held-out prompt has a labelled outcome for every arm")
    states = [ArmState(arm=Arm(name=a, model=a, strategy=build_strategy({"kind": "plain"}))) for a in arms]
    points = [_point(f"fixed:{a}", [a] * len(pids), outcomes, pids) for a in arms]
    acc = np.array([[1.0 if outcomes[p][a].correct else 0.0 for a in arms] for p in pids])
    e2e = np.array([[outcomes[p][a].e2e_s for a in arms] for p in pids])
    points.append(Point("random", float(acc.mean()), float(e2e.mean()), {a: 1 / len(arms) for a in arms}))
    oracle = []
    for i, _ in enumerate(pids):
        correct = [j for j in range(len(arms)) if acc[i, j] == 1.0]
        pool = correct or list(range(len(arms)))
        oracle.append(arms[min(pool, key=lambda j: e2e[i, j])])
    points.append(_point("oracle", oracle, outcomes, pids))

    sweeps: list[tuple[str, RouteFlags, float | None]] = [
        (f"router:balanced(w={w})", RouteFlags(prefer="balanced"), w) for w in BALANCED_SWEEP
    ]
    sweeps += [
        ("router:speed", RouteFlags(prefer="speed"), None),
        ("router:quality", RouteFlags(prefer="quality"), None),
        ("router:default", RouteFlags(), None),
    ]
    sweeps += [
        (f"router:accuracy={lv}", RouteFlags(accuracy=lv, prefer="speed"), None) for lv in ("low", "medium", "high")
    ]
    model = getattr(policy, "model", None)
    router_picks: dict[str, list[str]] = {}
    decide_s: list[float] = []
    for name, flags, weight in sweeps:
        if weight is not None and model is not None:
            levels = model.calibration.accuracy_levels
            policy.model = replace(model, calibration=Calibration(weight, levels))  # type: ignore[attr-defined]
        picks = []
        for p in pids:
            t0 = time.perf_counter()
            d = policy.decide(RouteRequest(flags=flags, features=features[p]), states)
            decide_s.append(time.perf_counter() - t0)
            picks.append(d.arm.name)
        if model is not None:
            policy.model = model  # type: ignore[attr-defined]
        router_picks[name] = picks
        points.append(_point(name, picks, outcomes, pids))

    best_fixed = max((pt for pt in points if pt.name.startswith("fixed:")), key=lambda pt: pt.accuracy)
    orc = next(pt for pt in points if pt.name == "oracle")
    gap = orc.accuracy - best_fixed.accuracy

    def recovered(pt: Point) -> float | None:
        return None if gap <= 0 else (pt.accuracy - best_fixed.accuracy) / gap

    tasks = sorted(set(task_of[p] for p in pids))
    slices = {}
    for t in tasks:
        idx = [i for i, p in enumerate(pids) if task_of[p] == t]
        sub = [pids[i] for i in idx]
        slices[t] = {
            "prompts": len(idx),
            **{f"fixed:{a}": float(acc[idx, j].mean()) for j, a in enumerate(arms)},
            "oracle": _point("o", [oracle[i] for i in idx], outcomes, sub).accuracy,
            **{
                k: _point(k, [v[i] for i in idx], outcomes, sub).accuracy
                for k, v in router_picks.items()
                if k in ("router:default", "router:quality")
            },
        }
    return {
        "prompts": len(pids),
        "arms": list(arms),
        "points": [{**vars(pt), "gap_recovered": recovered(pt)} for pt in points],
        "best_fixed": best_fixed.name,
        "slices": slices,
        "policy_decide_ms": {
            "p50": float(np.percentile(decide_s, 50) * 1000),
            "p99": float(np.percentile(decide_s, 99) * 1000),
        },
    }


def pool(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine :func:`evaluate` results on disjoint prompt sets (cross-validation folds).

    Means are weighted by each result's prompt count, so the pooled point equals what one
    evaluation over all the prompts would report; gap recovered is recomputed from the pooled
    points. Decision latency percentiles are the folds' medians.
    """
    if not results:
        raise ValueError("nothing to pool")
    total = sum(r["prompts"] for r in results)
    names = [pt["name"] for pt in results[0]["points"]]
    points: list[Point] = []
    for name in names:
        per = [(r["prompts"], next(pt for pt in r["points"] if pt["name"] == name)) for r in results]
        share: dict[str, float] = defaultdict(float)
        for n, pt in per:
            for arm, s in pt["share"].items():
                share[arm] += s * n / total
        points.append(
            Point(
                name,
                sum(pt["accuracy"] * n for n, pt in per) / total,
                sum(pt["latency_s"] * n for n, pt in per) / total,
                dict(sorted(share.items())),
            )
        )
    best_fixed = max((pt for pt in points if pt.name.startswith("fixed:")), key=lambda pt: pt.accuracy)
    orc = next(pt for pt in points if pt.name == "oracle")
    gap = orc.accuracy - best_fixed.accuracy
    slices: dict[str, dict[str, float]] = {}
    for r in results:
        for task, sl in r["slices"].items():
            acc = slices.setdefault(task, defaultdict(float))
            acc["prompts"] += sl["prompts"]
            for k, v in sl.items():
                if k != "prompts":
                    acc[k] += v * sl["prompts"]
    for sl in slices.values():
        n = sl["prompts"]
        for k in list(sl):
            if k != "prompts":
                sl[k] /= n
    return {
        "prompts": total,
        "folds": len(results),
        "arms": results[0]["arms"],
        "points": [
            {**vars(pt), "gap_recovered": None if gap <= 0 else (pt.accuracy - best_fixed.accuracy) / gap}
            for pt in points
        ],
        "best_fixed": best_fixed.name,
        "slices": {t: dict(v) for t, v in slices.items()},
        "policy_decide_ms": {q: float(np.median([r["policy_decide_ms"][q] for r in results])) for q in ("p50", "p99")},
    }
