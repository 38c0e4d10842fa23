"""Experiment: does shrinking each arm's per-prompt quality forecast toward its neighbourhood's
average outcome, or choosing the quality heads' L2 by routing utility, close the gap to the
task-family rule?

The diagnosis in docs/router.md: the task rule, told each prompt's family, routes on the family's
*average* outcome, while the router's per-prompt quality forecasts vary within a family more than
the outcomes do, so ``balanced`` sends the low-forecast part of a family elsewhere. Two treatments,
each a ``fit`` for :func:`lab.evaluate.cross_validated` (same folds, seed and bootstrap as
``llm-gateway evaluate --cv 5``), each choosing its hyper-parameters inside every training fold on
the *routing utility* of the balanced rule over the training prompts' inner out-of-fold forecasts
(the objective :mod:`router.thresholds` fits the balanced weight with, after refitting the isotonic
maps and the weight on the new forecasts), never on the test fold:

* ``--treatment shrink`` (:class:`ShrinkageFit`): every arm's raw quality forecast becomes
  ``(1 - alpha) * forecast + alpha * rate``, ``rate`` the arm's success rate over the ``k`` nearest
  labelled training prompts (the heads' standardised prompt space; smoothed toward the arm's base
  rate by two pseudo-prompts); ``alpha`` in :data:`ALPHAS` (0: the shipped router), ``k`` in :data:`KS`.
* ``--treatment l2`` (:class:`UtilityL2Fit`): every arm's quality head refitted as a logistic head
  with one L2 from :data:`router.training.L2_GRID`, or kept as trained (log-loss choice), whichever
  routes best.

    .venv/bin/python -m lab.shrinkage --artifact router/artifacts/local --profiles profiles/router.jsonl
    .venv/bin/python -m lab.shrinkage --artifact router/artifacts/local-full --profiles profiles/router.jsonl \\
        profiles/router-qwen-ngram4.jsonl profiles/router-smollm2-full-avg.jsonl      # add --treatment l2

Prints the shipped router's difference to the task rule split by task family (:func:`family_gap`),
the hyper-parameters chosen per fold and, for the router's default and a few flag settings, accuracy
and mean latency shipped and treated, each paired against the task rule and kNN (95 % bootstrap
intervals, as the evaluation report; the baselines decide with the treated router's balanced weight),
and treated minus shipped, paired.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lab import profiles
from lab.evaluate import arm_specs, cross_validated
from router.bootstrap import bootstrap_means
from router.linear import Array, fit_logistic, predict_logistic
from router.predictor import Prediction, RouterModel
from router.prompt_ids import group_of
from router.thresholds import OutOfFold, calibrate
from router.training import L2_GRID, Row, _fit_arm, prompt_folds, train

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
KS = (10, 25, 50)
PRIOR = 2.0  # pseudo-prompts at the arm's base rate in a neighbourhood's rate
SETTINGS = ("router:default", "router:quality", "router:accuracy=medium", "router:accuracy=high")


def neighbour_rates(train_x: Array, train_y: Array, query_x: Array, k: int, prior: float = PRIOR) -> Array:
    """Per query row, the success rate of its ``k`` nearest training rows (squared Euclidean; ties by
    training order), smoothed toward the training rows' mean by ``prior`` pseudo-rows."""
    if k < 1 or prior < 0:
        raise ValueError(f"k must be >= 1 and prior >= 0, got k={k!r}, prior={prior!r}")
    if len(train_y) == 0:
        raise ValueError("neighbour_rates needs training rows")
    base = float(np.mean(train_y))
    d = (query_x**2).sum(axis=1)[:, None] + (train_x**2).sum(axis=1)[None, :] - 2 * query_x @ train_x.T
    near = np.argsort(d, axis=1, kind="stable")[:, : min(k, len(train_y))]
    return np.asarray((train_y[near].sum(axis=1) + prior * base) / (near.shape[1] + prior), dtype=np.float64)


def blend(raw: Array, rate: Array, alpha: float) -> Array:
    """The shrunk forecast: ``(1 - alpha) * raw + alpha * rate`` (``alpha`` in [0, 1])."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return np.asarray((1.0 - alpha) * raw + alpha * rate, dtype=np.float64)


@dataclass(frozen=True)
class ShrunkModel(RouterModel):
    """A trained router whose raw quality forecasts are blended with neighbourhood rates before the
    (refitted) isotonic maps. ``raw``: the trained model without its quality maps."""

    raw: RouterModel | None = None
    alpha: float = 0.0
    k: int = 10
    train_x: Array | None = None  # standardised training prompts
    labels: dict[str, Array] = field(default_factory=dict)  # per arm: 1/0 per training prompt, NaN unlabelled

    def predict(
        self, x: Any, kchars: float, max_tokens: int | None, arms: Sequence[tuple[str, float, float, float]]
    ) -> dict[str, Prediction]:
        assert self.raw is not None and self.train_x is not None
        preds = self.raw.predict(x, kchars, max_tokens, arms)
        maps = self.calibration.quality_maps
        out = {}
        for name, p in preds.items():
            q = p.quality
            y = self.labels.get(name)
            if y is not None and self.alpha > 0:
                seen = ~np.isnan(y)
                rate = neighbour_rates(self.train_x[seen], y[seen], np.asarray(x)[None, :], self.k)[0]
                q = float(blend(np.array([q]), np.array([rate]), self.alpha)[0])
            out[name] = p.replaced(quality=maps[name](q) if name in maps else q)
        return out


def inner_out_of_fold(
    rows: Sequence[Row], x_of: Mapping[str, Array], kchars: Mapping[str, float], seed: int, folds: int
) -> OutOfFold:
    """The inner out-of-fold forecasts :func:`router.training.train` calibrates on (same folds, heads)."""
    ids = sorted(x_of)
    fold_of = prompt_folds(ids, folds, seed)
    by_arm: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.prompt_id in x_of:
            by_arm[r.arm].append(r)
    oof = OutOfFold(defaultdict(dict), defaultdict(dict), defaultdict(dict), defaultdict(dict))
    for arm, arm_rows in sorted(by_arm.items()):
        arm_rows.sort(key=lambda r: r.prompt_id)
        _fit_arm(arm, arm_rows, x_of, fold_of, kchars, None, folds, ids, oof)
    return oof


def inner_rates(
    x_of: Mapping[str, Array], labels: Mapping[str, Array], ids: Sequence[str], k: int, seed: int, folds: int
) -> dict[str, dict[str, float]]:
    """Per prompt and arm, the neighbourhood rate from the other inner folds' labelled prompts."""
    fold = prompt_folds(ids, folds, seed)
    f_arr = np.array([fold[i] for i in ids])
    x = np.stack([x_of[i] for i in ids])
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for arm, y in labels.items():
        seen = ~np.isnan(y)
        for f in range(folds):
            query, pool = f_arr == f, seen & (f_arr != f)
            if not query.any() or not pool.any():
                continue
            rates = neighbour_rates(x[pool], y[pool], x[query], k)
            for i, r in zip(np.flatnonzero(query).tolist(), rates, strict=True):
                out[ids[i]][arm] = float(r)
    return out


class _Fitted(NamedTuple):
    """What both treatments start from: the router as trained, the training prompts standardised, the
    inner out-of-fold forecasts and the labels."""

    model: RouterModel
    report: dict[str, Any]
    ids: list[str]
    x_of: dict[str, Array]
    oof: OutOfFold
    labels: dict[str, Array]
    rows_in: list[Row]

    @classmethod
    def of(
        cls,
        rows: Sequence[Row],
        vectors: Mapping[str, Array],
        kchars: Mapping[str, float],
        encoder: str,
        feature_names: Sequence[str],
        seed: int,
        folds: int,
    ) -> _Fitted:
        model, report = train(rows, vectors, kchars, encoder, feature_names, seed=seed, folds=folds)
        ids = sorted(vectors)
        x_of = {i: model.standardise(vectors[i]) for i in ids}
        oof = inner_out_of_fold(rows, x_of, kchars, seed, folds)
        labels = _labels(rows, ids, sorted(model.arms))
        return cls(model, report, ids, x_of, oof, labels, [r for r in rows if r.prompt_id in x_of])


class ShrinkageFit:
    """``fit`` for :func:`lab.evaluate.cross_validated`: :func:`router.training.train`, then ``alpha``
    and ``k`` chosen on the training prompts' inner out-of-fold routing utility. ``alphas`` fixed to
    one value skips the choice (``(0.0,)`` is the shipped router)."""

    def __init__(self, alphas: Sequence[float] = ALPHAS, ks: Sequence[int] = KS) -> None:
        self.alphas, self.ks = tuple(alphas), tuple(ks)
        self.chosen: list[dict[str, float]] = []

    def __call__(
        self,
        rows: Sequence[Row],
        vectors: Mapping[str, Array],
        kchars: Mapping[str, float],
        encoder: str,
        feature_names: Sequence[str],
        seed: int = 0,
        folds: int = 5,
    ) -> tuple[RouterModel, dict[str, Any]]:
        model, report, ids, x_of, oof, labels, rows_in = _Fitted.of(
            rows, vectors, kchars, encoder, feature_names, seed, folds
        )
        best: tuple[float, float, int, Any] | None = None
        for k in self.ks:
            rates = inner_rates(x_of, labels, ids, k, seed, folds)
            for alpha in self.alphas:
                q = {
                    p: {a: _mix(v, rates[p].get(a), alpha) for a, v in arms.items()} for p, arms in oof.quality.items()
                }
                cal, rep = calibrate(rows_in, replace(oof, quality=q), sorted(model.arms))
                utility = max((s["utility"] for s in rep.get("sweep", [])), default=0.0)
                if best is None or utility > best[0] + 1e-9:
                    best = (utility, alpha, k, cal)
        assert best is not None
        utility, alpha, k, cal = best
        self.chosen.append({"alpha": alpha, "k": k, "utility": utility})
        raw = replace(model, calibration=replace(model.calibration, quality_maps={}))
        fields = {f: getattr(model, f) for f in model.__dataclass_fields__}
        shrunk = ShrunkModel(
            **{**fields, "calibration": cal},
            raw=raw,
            alpha=alpha,
            k=k,
            train_x=np.stack([x_of[i] for i in ids]),
            labels=labels,
        )
        return shrunk, report


class UtilityL2Fit:
    """``fit`` for :func:`lab.evaluate.cross_validated`: :func:`router.training.train`, then every arm's
    quality head refitted as a logistic head with one L2 strength from :data:`router.training.L2_GRID`,
    or kept as trained, whichever gives the best inner out-of-fold routing utility (the balanced
    objective, after refitting the isotonic maps and the weight), not the least log-loss."""

    def __init__(self) -> None:
        self.chosen: list[dict[str, float | None]] = []

    def __call__(
        self,
        rows: Sequence[Row],
        vectors: Mapping[str, Array],
        kchars: Mapping[str, float],
        encoder: str,
        feature_names: Sequence[str],
        seed: int = 0,
        folds: int = 5,
    ) -> tuple[RouterModel, dict[str, Any]]:
        model, report, ids, x_of, oof, labels, rows_in = _Fitted.of(
            rows, vectors, kchars, encoder, feature_names, seed, folds
        )
        fold = prompt_folds(ids, folds, seed)
        f_arr = np.array([fold[i] for i in ids])
        x = np.stack([x_of[i] for i in ids])
        best: tuple[float, float | None, Any] | None = None
        for l2 in (None, *L2_GRID):
            q = {p: dict(v) for p, v in oof.quality.items()}
            if l2 is not None:
                for arm, y in labels.items():
                    seen = ~np.isnan(y)
                    for f in range(folds):
                        test, fit_rows = seen & (f_arr == f), seen & (f_arr != f)
                        w = fit_logistic(x[fit_rows], y[fit_rows], l2)
                        for i, v in zip(np.flatnonzero(test).tolist(), predict_logistic(w, x[test]), strict=True):
                            q[ids[i]][arm] = float(v)
            cal, rep = calibrate(rows_in, replace(oof, quality=q), sorted(model.arms))
            utility = max((s["utility"] for s in rep.get("sweep", [])), default=0.0)
            if best is None or utility > best[0] + 1e-9:
                best = (utility, l2, cal)
        assert best is not None
        utility, l2, cal = best
        self.chosen.append({"l2": l2, "utility": utility})
        if l2 is None:
            return model, report
        arms = dict(model.arms)
        for arm, y in labels.items():
            seen = ~np.isnan(y)
            arms[arm] = replace(arms[arm], quality_w=fit_logistic(x[seen], y[seen], l2), quality_knn_k=0)
        return replace(model, arms=arms, calibration=cal, knn_x=None, knn_y={}), report


def _mix(raw: float, rate: float | None, alpha: float) -> float:
    return raw if rate is None or alpha == 0 else (1.0 - alpha) * raw + alpha * rate


def _labels(rows: Sequence[Row], ids: Sequence[str], arms: Sequence[str]) -> dict[str, Array]:
    index = {p: n for n, p in enumerate(ids)}
    out = {a: np.full(len(ids), np.nan) for a in arms}
    for r in rows:
        if r.prompt_id in index and r.correct is not None and r.arm in out:
            out[r.arm][index[r.prompt_id]] = 1.0 if r.correct else 0.0
    return {a: y for a, y in out.items() if (~np.isnan(y)).any()}


def _versus(result: dict[str, Any], setting: str, baseline: str) -> str:
    vs = next(d for d in result["differences"] if d["setting"] == setting and d["baseline"] == baseline)
    acc, acc_ci, lat, lat_ci = 100 * vs["accuracy"], vs["accuracy_ci"], vs["latency_s"], vs["latency_ci"]
    return (
        f"{acc:+.1f} [{100 * acc_ci[0]:+.1f}, {100 * acc_ci[1]:+.1f}] points, "
        f"{lat:+.2f} [{lat_ci[0]:+.2f}, {lat_ci[1]:+.2f}] s"
    )


def paired_change(base: dict[str, Any], new: dict[str, Any], setting: str, seed: int = 0) -> dict[str, Any]:
    """``new`` minus ``base`` under ``setting`` on the same pooled prompts: accuracy (labelled prompts)
    and mean latency, with 95 % cluster-bootstrap intervals over source items (as the report's)."""
    a, b = base["per_prompt"], new["per_prompt"]
    if a["prompt_ids"] != b["prompt_ids"]:
        raise ValueError("the two results are not over the same prompts in the same order")
    correct, e2e = np.array(a["correct"], dtype=float), np.array(a["e2e_s"], dtype=float)
    rows = np.arange(len(correct))
    pa, pb = np.array(a["picks"][setting]), np.array(b["picks"][setting])
    labelled = ~np.isnan(correct).any(axis=1)
    d_acc = np.nan_to_num(correct[rows, pb] - correct[rows, pa])
    d_lat = e2e[rows, pb] - e2e[rows, pa]
    cluster: dict[str, int] = {}
    groups = np.array([cluster.setdefault(group_of(p), len(cluster)) for p in a["prompt_ids"]])
    masks = np.stack([labelled, np.ones(len(rows), dtype=bool)])
    point, low, high = bootstrap_means(np.stack([d_acc, d_lat]), masks, seed=seed, groups=groups)
    return {
        "accuracy": float(point[0]),
        "accuracy_ci": [float(low[0]), float(high[0])],
        "latency_s": float(point[1]),
        "latency_ci": [float(low[1]), float(high[1])],
    }


def family_gap(result: dict[str, Any], setting: str, baseline: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Router minus ``baseline`` under ``setting``, split by task family: each family's share of the
    accuracy difference (points over all labelled prompts) and of the latency difference (seconds over
    all prompts), so the shares add up to the report's difference; 95 % cluster-bootstrap intervals,
    and per family which arms the router and the baseline chose."""
    pp = result["per_prompt"]
    correct, e2e = np.array(pp["correct"], dtype=float), np.array(pp["e2e_s"], dtype=float)
    rows, tasks = np.arange(len(correct)), np.array(pp["tasks"])
    mine, theirs = np.array(pp["picks"][setting]), np.array(pp["picks"][baseline])
    labelled = ~np.isnan(correct).any(axis=1)
    d_acc = np.nan_to_num(correct[rows, mine] - correct[rows, theirs])
    d_lat = e2e[rows, mine] - e2e[rows, theirs]
    cluster: dict[str, int] = {}
    groups = np.array([cluster.setdefault(group_of(p), len(cluster)) for p in pp["prompt_ids"]])
    families = sorted(set(pp["tasks"]))
    values = np.stack([v * (tasks == f) for f in families for v in (d_acc, d_lat)])
    masks = np.stack([m for _ in families for m in (labelled, np.ones(len(rows), dtype=bool))])
    point, low, high = bootstrap_means(values, masks, seed=seed, groups=groups)
    arms = result["arms"]
    out = {}
    for n, f in enumerate(families):
        a, t = 2 * n, 2 * n + 1
        out[f] = {
            "prompts": int((tasks == f).sum()),
            "accuracy": float(point[a]),
            "accuracy_ci": [float(low[a]), float(high[a])],
            "latency_s": float(point[t]),
            "latency_ci": [float(low[t]), float(high[t])],
            "router_arms": dict(Counter(arms[j] for j in mine[tasks == f])),
            "baseline_arms": dict(Counter(arms[j] for j in theirs[tasks == f])),
        }
    return out


def _line(result: dict[str, Any], setting: str) -> str:
    point = next(p for p in result["points"] if p["name"] == setting)
    rule = setting.split(":", 1)[1]
    return (
        f"{100 * point['accuracy']:.1f} % at {point['latency_s']:.2f} s; vs task rule "
        f"{_versus(result, setting, f'task-rule:{rule}')}; vs kNN {_versus(result, setting, f'knn:{rule}')}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.shrinkage", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", nargs="+", required=True, help="profile JSONL files (as llm-gateway evaluate)")
    ap.add_argument("--artifact", required=True, help="the artifact whose arms to route between")
    ap.add_argument("--cv", type=int, default=5, help="outer folds")
    ap.add_argument("--seed", type=int, default=0, help="fold and bootstrap seed")
    ap.add_argument(
        "--treatment", choices=("shrink", "l2"), default="shrink", help="shrinkage, or L2 by routing utility"
    )
    ap.add_argument("--out", help="write both pooled results here (JSON)")
    a = ap.parse_args(argv)
    data = profiles.load(a.profiles)
    arms = set(json.loads((Path(a.artifact) / "router.json").read_text())["arms"])
    rows = [r for r in data.rows if r.arm in arms]
    specs = arm_specs(data.arm_labels)
    print("==> shipped training", flush=True)
    base = cross_validated(rows, data.texts, a.cv, a.seed, "none", specs)
    fit: ShrinkageFit | UtilityL2Fit
    if a.treatment == "shrink":
        print("==> quality shrunk toward the neighbourhood rate, alpha and k by inner CV", flush=True)
        fit = ShrinkageFit()
    else:
        print("==> quality heads' L2 chosen by inner-CV routing utility", flush=True)
        fit = UtilityL2Fit()
    new = cross_validated(rows, data.texts, a.cv, a.seed, "none", specs, fit=fit)
    print(
        "\nchosen per outer fold: " + "; ".join(str({k: v for k, v in c.items() if k != "utility"}) for c in fit.chosen)
    )
    for setting in ("router:default", "router:accuracy=medium"):
        print(f"shipped {setting} minus task rule, by family (points; s):")
        for fam, g in family_gap(base, setting, "task-rule:" + setting.split(":", 1)[1], a.seed).items():
            print(
                f"  {fam:14s} {g['prompts']:4d} prompts: {_fmt(g)}; "
                f"router {g['router_arms']}, rule {g['baseline_arms']}"
            )
    for setting in SETTINGS:
        change = paired_change(base, new, setting, a.seed)
        print(
            f"{setting}\n  shipped: {_line(base, setting)}\n  treated: {_line(new, setting)}\n"
            f"  treated - shipped: {_fmt(change)}"
        )
    if a.out:
        Path(a.out).write_text(json.dumps({"shipped": base, "treated": new, "chosen": fit.chosen}) + "\n")
    return 0


def _fmt(d: dict[str, Any]) -> str:
    acc, lat = d["accuracy_ci"], d["latency_ci"]
    return (
        f"{100 * d['accuracy']:+.1f} [{100 * acc[0]:+.1f}, {100 * acc[1]:+.1f}] points, "
        f"{d['latency_s']:+.2f} [{lat[0]:+.2f}, {lat[1]:+.2f}] s"
    )


if __name__ == "__main__":
    sys.exit(main())
