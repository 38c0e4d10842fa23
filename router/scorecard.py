"""The numbers of an evaluation report, from its per-prompt record (:func:`summarise`).

:mod:`router.evaluation` produces the per-prompt record (every arm's real outcome per prompt, the
router's and the baselines' picks and reasons, the policy's forecasts) and pools folds by
concatenating it; this module turns one record into everything the report says: every rule scored
as arm weights per prompt (a fixed arm, random mixing, the oracle, the router under each setting,
its task-rule, kNN and budget-oracle baselines), paired bootstrap intervals over source items
(:mod:`router.bootstrap`) for every point and router-minus-baseline difference, budget compliance,
forecast reliability (:mod:`router.reliability`) and per-task slices. Pure numpy; no policy is run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router.baselines import Outcomes, oracle_picks
from router.bootstrap import PairedMeans, weighted_quantile
from router.linear import Array
from router.prompt_ids import group_of
from router.reliability import forecast_report

REPLICATES = 2000
LEVEL = 0.95
UNMEETABLE = "budget-unmeetable"  # the reason a policy gives when it believes no arm fits the budget
CHOSEN_RELIABILITY = ("router:default", "router:quality")
SLICE_RULES = ("oracle", "router:quality", "router:default", "task-rule:quality", "knn:quality")

Intervals = Mapping[Hashable, tuple[float | None, list[float] | None]]  # (statistic, rule...) -> (mean, [low, high])


def encode_reasons(reasons: Mapping[str, Sequence[str]]) -> tuple[list[str], dict[str, list[int]]]:
    """Reasons as indices into a sorted list of the labels (keeps the per-prompt JSON small)."""
    labels = sorted({r for rs in reasons.values() for r in rs})
    code = {r: i for i, r in enumerate(labels)}
    return labels, {name: [code[r] for r in rs] for name, rs in reasons.items()}


def decode_reasons(per_prompt: Mapping[str, Any]) -> dict[str, list[str]]:
    """The reasons per rule and prompt, back from :func:`encode_reasons`'s indices in ``per_prompt``."""
    labels = per_prompt["reason_labels"]
    return {name: [labels[i] for i in codes] for name, codes in per_prompt["reasons"].items()}


@dataclass
class _Rules:
    """Every rule scored: its arm weights per prompt, ``(prompts, arms)``, one array for accuracy and
    one for latency (they differ for random mixing only), its kind and setting, and the baselines each
    router setting is compared with."""

    weights: dict[str, tuple[Array, Array]] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, kind: str, setting: str | None, w_acc: Array, w_lat: Array | None = None) -> None:
        self.weights[name] = (w_acc, w_acc if w_lat is None else w_lat)
        self.info[name] = {"kind": kind, "setting": setting}


def _outcomes(per_prompt: Mapping[str, Any], n_arms: int) -> Outcomes:
    """The per-prompt outcomes as arrays (``correct`` NaN where unlabelled)."""
    correct = np.array([[np.nan if v is None else float(v) for v in row] for row in per_prompt["correct"]])
    correct = correct.reshape(-1, n_arms)
    e2e = np.asarray(per_prompt["e2e_s"], dtype=np.float64).reshape(-1, n_arms)
    ttft = np.asarray(per_prompt["ttft_s"], dtype=np.float64).reshape(-1, n_arms)
    return Outcomes(list(per_prompt["prompt_ids"]), list(per_prompt["tasks"]), correct, e2e, ttft)


def _rules(
    test: Outcomes, arms: Sequence[str], settings: Sequence[Mapping[str, Any]], picks: Mapping[str, np.ndarray]
) -> _Rules:
    """Fixed arms, random, the oracle, and per setting the router and (``compare``) its baselines:
    mixing at the router's shares (labelled prompts' shares for accuracy), task rule, kNN and, under a
    budget, the oracle within it."""
    n, n_arms = len(test.e2e_s), len(arms)
    labelled = test.labelled
    eye = np.eye(n_arms)
    rules = _Rules()
    for j, a in enumerate(arms):
        rules.add(f"fixed:{a}", "fixed", None, np.tile(eye[j], (n, 1)))
    rules.add("random", "random", None, np.full((n, n_arms), 1 / n_arms))
    rules.add("oracle", "oracle", None, eye[oracle_picks(test)])
    for s in settings:
        name, label = s["name"], s["name"].removeprefix("router:")
        onehot = eye[picks[name]]
        rules.add(name, "router", name, onehot)
        if not s["compare"]:
            continue
        share_all = onehot.mean(axis=0)
        share_lab = onehot[labelled].mean(axis=0) if labelled.any() else share_all
        rules.add(f"mix:{label}", "mix", name, np.tile(share_lab, (n, 1)), np.tile(share_all, (n, 1)))
        rules.add(f"task-rule:{label}", "task-rule", name, eye[picks[f"task-rule:{label}"]])
        rules.add(f"knn:{label}", "knn", name, eye[picks[f"knn:{label}"]])
        oracle = "oracle"
        if s["budget_s"] is not None:
            oracle = f"oracle:{label}"
            rules.add(oracle, "oracle", name, eye[oracle_picks(test, s["budget_s"])])
        rules.baselines[name] = [
            *(f"fixed:{a}" for a in arms),
            f"mix:{label}",
            f"task-rule:{label}",
            f"knn:{label}",
            oracle,
        ]
    return rules


def _intervals(
    test: Outcomes,
    settings: Sequence[Mapping[str, Any]],
    rules: _Rules,
    acc_p: Mapping[str, Array],
    lat_p: Mapping[str, Array],
    replicates: int,
    seed: int,
) -> tuple[Intervals, dict[str, np.ndarray], int]:
    """Means with paired bootstrap intervals (prompts of one source item drawn together) of accuracy,
    latency, router-minus-baseline differences and budget compliance; also, per budget setting, which
    prompts some arm answers within the budget, and the number of source items."""
    labelled = test.labelled
    everyone = np.ones(len(test.e2e_s), dtype=bool)
    stats = PairedMeans()
    for name in rules.weights:
        stats.add(("accuracy", name), acc_p[name], labelled)
        stats.add(("latency", name), lat_p[name], everyone)
    feasible: dict[str, np.ndarray] = {}
    for s in settings:
        name = s["name"]
        for b in rules.baselines.get(name, []):
            stats.add(("d_accuracy", name, b), acc_p[name] - acc_p[b], labelled)
            stats.add(("d_latency", name, b), lat_p[name] - lat_p[b], everyone)
        if s["budget_s"] is not None:
            fits = test.e2e_s <= s["budget_s"]
            feasible[name] = fits.any(axis=1)
            for r in [name, *rules.baselines.get(name, [])]:
                comply = (rules.weights[r][1] * fits).sum(axis=1)
                stats.add(("compliance", name, r), comply, everyone)
                stats.add(("compliance_feasible", name, r), comply, feasible[name])
    cluster_of: dict[str, int] = {}
    groups = np.array([cluster_of.setdefault(group_of(p), len(cluster_of)) for p in test.ids], dtype=np.int64)
    return stats.run(replicates, seed, LEVEL, groups), feasible, len(cluster_of)


def _points(
    test: Outcomes, arms: Sequence[str], rules: _Rules, ci: Intervals, reasons: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """One point per rule: accuracy and mean latency with intervals, p90 latency, arm shares (all
    prompts, labelled prompts) and, where the rule gave reasons, their shares."""
    n, labelled = len(test.e2e_s), test.labelled
    points = []
    for name, (w_acc, w_lat) in rules.weights.items():
        acc, acc_ci = ci[("accuracy", name)]
        lat, lat_ci = ci[("latency", name)]
        share = w_lat.mean(axis=0)
        share_lab = w_acc[labelled].mean(axis=0) if labelled.any() else share
        pt: dict[str, Any] = {
            "name": name,
            **rules.info[name],
            "accuracy": acc,
            "accuracy_ci": acc_ci,
            "latency_s": lat,
            "latency_ci": lat_ci,
            "latency_p90_s": weighted_quantile(test.e2e_s, w_lat, 0.9),
            "share": {a: float(v) for a, v in zip(arms, share, strict=True) if v > 0},
            "share_labelled": {a: float(v) for a, v in zip(arms, share_lab, strict=True) if v > 0},
        }
        if name in reasons:
            counts = Counter(reasons[name])
            pt["reasons"] = {r: c / n for r, c in sorted(counts.items())}
        points.append(pt)
    return points


def _gap_recovered(points: list[dict[str, Any]], ci: Intervals) -> dict[str, Any] | None:
    """Set each point's share of the best-fixed-to-oracle accuracy gap it recovers (``None`` when
    there is no gap); return the best fixed arm's point."""
    fixed = [pt for pt in points if pt["kind"] == "fixed" and pt["accuracy"] is not None]
    best_fixed = max(fixed, key=lambda pt: pt["accuracy"]) if fixed else None
    oracle_acc = ci[("accuracy", "oracle")][0]
    for pt in points:
        gap = None if best_fixed is None or oracle_acc is None else oracle_acc - best_fixed["accuracy"]
        ok = gap is not None and gap > 0 and pt["accuracy"] is not None and best_fixed is not None
        pt["gap_recovered"] = (pt["accuracy"] - best_fixed["accuracy"]) / gap if ok else None  # type: ignore[index,operator]
    return best_fixed


def _differences(rules: _Rules, ci: Intervals) -> list[dict[str, Any]]:
    """Router minus each of its baselines, per setting: accuracy and latency with intervals."""
    differences = []
    for name, bases in rules.baselines.items():
        for b in bases:
            d_acc, d_acc_ci = ci[("d_accuracy", name, b)]
            d_lat, d_lat_ci = ci[("d_latency", name, b)]
            differences.append(
                {
                    "setting": name,
                    "baseline": b,
                    "accuracy": d_acc,
                    "accuracy_ci": d_acc_ci,
                    "latency_s": d_lat,
                    "latency_ci": d_lat_ci,
                }
            )
    return differences


def _compliance(
    settings: Sequence[Mapping[str, Any]],
    rules: _Rules,
    ci: Intervals,
    feasible: Mapping[str, np.ndarray],
    reasons: Mapping[str, Sequence[str]],
    n: int,
) -> list[dict[str, Any]]:
    """Per budget setting: how often the router and each baseline meet the budget (all prompts, the
    feasible ones), and how well an ``UNMEETABLE`` reason marks the prompts no arm can serve in time."""
    compliance = []
    for s in settings:
        name = s["name"]
        if name not in feasible:
            continue
        ok_rows = feasible[name]
        unmeetable = np.array([r == UNMEETABLE for r in reasons[name]], dtype=bool)
        infeasible = ~ok_rows
        compliance.append(
            {
                "setting": name,
                "budget_s": s["budget_s"],
                "prompts": n,
                "infeasible_prompts": int(infeasible.sum()),
                "infeasible_share": float(infeasible.mean()),
                "infeasible_reported": float(unmeetable[infeasible].mean()) if infeasible.any() else None,
                "unmeetable_on_feasible": float(unmeetable[ok_rows].mean()) if ok_rows.any() else None,
                "rules": [
                    _rule_compliance(name, r, ci, ok_rows, reasons.get(r))
                    for r in [name, *rules.baselines.get(name, [])]
                ],
            }
        )
    return compliance


def _rule_compliance(
    setting: str, rule: str, ci: Intervals, ok_rows: np.ndarray, said: Sequence[str] | None
) -> dict[str, Any]:
    """One rule's budget compliance under ``setting``; ``said``: the rule's reasons, if it gives any."""
    share_all, all_ci = ci[("compliance", setting, rule)]
    share_ok, ok_ci = ci[("compliance_feasible", setting, rule)]
    infeasible = ~ok_rows
    reported = alarms = None
    if said is not None:
        flagged = np.array([x == UNMEETABLE for x in said], dtype=bool)
        reported = float(flagged[infeasible].mean()) if infeasible.any() else None
        alarms = float(flagged[ok_rows].mean()) if ok_rows.any() else None
    return {
        "rule": rule,
        "all": share_all,
        "all_ci": all_ci,
        "feasible": share_ok,
        "feasible_ci": ok_ci,
        "infeasible_reported": reported,
        "unmeetable_on_feasible": alarms,
    }


def _slices(
    test: Outcomes, arms: Sequence[str], rules: _Rules, acc_p: Mapping[str, Array], lat_p: Mapping[str, Array]
) -> dict[str, Any]:
    """Per task: prompt counts, and accuracy and mean latency of the fixed arms and :data:`SLICE_RULES`."""
    labelled = test.labelled
    task_arr = np.array(test.tasks)
    slices: dict[str, Any] = {}
    for t in sorted(set(test.tasks)):
        m = task_arr == t
        entry: dict[str, Any] = {"prompts": int(m.sum()), "labelled": int((m & labelled).sum()), "rules": {}}
        for name in [f"fixed:{a}" for a in arms] + [r for r in SLICE_RULES if r in rules.weights]:
            lab = m & labelled
            entry["rules"][name] = {
                "accuracy": float(acc_p[name][lab].mean()) if lab.any() else None,
                "latency_s": float(lat_p[name][m].mean()),
            }
        slices[t] = entry
    return slices


def summarise(
    per_prompt: Mapping[str, Any],
    arms: Sequence[str],
    settings: Sequence[Mapping[str, Any]],
    *,
    replicates: int = REPLICATES,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything the report says, from the per-prompt outcomes and picks (see :func:`router.evaluation.evaluate`).

    Keys: ``prompts``, ``labelled_prompts``, ``tasks``, ``arms``, ``bootstrap``, ``settings``,
    ``points`` (every rule: accuracy and mean latency with intervals, p90 latency, arm shares, gap
    recovered), ``best_fixed``, ``differences`` (router minus each baseline per setting, with
    intervals), ``compliance`` (per budget setting), ``reliability``, ``latency_ratio``, ``slices``.
    """
    test = _outcomes(per_prompt, len(arms))
    n, labelled = len(test.e2e_s), test.labelled
    picks = {name: np.asarray(v, dtype=int) for name, v in per_prompt["picks"].items()}
    reasons = decode_reasons(per_prompt)
    rules = _rules(test, arms, settings, picks)
    filled = np.nan_to_num(test.correct, nan=0.0)
    acc_p = {name: (w * filled).sum(axis=1) for name, (w, _) in rules.weights.items()}
    lat_p = {name: (w * test.e2e_s).sum(axis=1) for name, (_, w) in rules.weights.items()}
    ci, feasible, clusters = _intervals(test, settings, rules, acc_p, lat_p, replicates, seed)
    points = _points(test, arms, rules, ci, reasons)
    best_fixed = _gap_recovered(points, ci)
    chosen = {name: picks[name] for name in CHOSEN_RELIABILITY if name in picks}
    calib, ratio = forecast_report(per_prompt, arms, test.correct, test.e2e_s, chosen)
    task_arr = np.array(test.tasks)
    return {
        "prompts": n,
        "labelled_prompts": int(labelled.sum()),
        "tasks": {t: int((task_arr == t).sum()) for t in sorted(set(test.tasks))},
        "arms": list(arms),
        "bootstrap": {
            "replicates": replicates,
            "seed": seed,
            "level": LEVEL,
            "paired": True,
            "unit": "source item (router.prompt_ids.group_of): its prompts are drawn together",
            "clusters": clusters,
        },
        "settings": [dict(s) for s in settings],
        "points": points,
        "best_fixed": best_fixed["name"] if best_fixed else None,
        "differences": _differences(rules, ci),
        "compliance": _compliance(settings, rules, ci, feasible, reasons, n),
        "reliability": calib,
        "latency_ratio": ratio,
        "slices": _slices(test, arms, rules, acc_p, lat_p),
    }
