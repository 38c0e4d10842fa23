"""Fitting the per-arm predictors from profiles (``llm-gateway train``).

Input: profile rows (one per prompt x arm, read by :mod:`lab.profiles`) and the prompt texts.
Only the ``train`` split is used; the split is a fixed function of the prompt id, so
``evaluate`` always sees prompts the router never trained on. Regularisation strengths are
chosen by K-fold cross-validation grouped by prompt (fixed seed); the decision thresholds and
calibration maps (:mod:`router.thresholds`) are fitted on the out-of-fold predictions, never on
training fits.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from router import neighbours
from router.families import fit_families, held_out_accuracy
from router.linear import Array, fit_logistic, fit_ridge, log_loss, predict_linear, predict_logistic
from router.predictor import ArmModel, RouterModel
from router.prompt_ids import group_of
from router.thresholds import OutOfFold, calibrate

L2_GRID = (0.3, 3.0, 30.0, 300.0, 3000.0)


@dataclass(frozen=True)
class Row:
    """One usable profile observation."""

    prompt_id: str
    task: str
    split: str
    arm: str
    correct: bool | None
    output_tokens: int
    ttft_s: float  # NaN when not measured (a non-streamed answer from the decision log)
    decode_tps: float | None
    e2e_s: float


CIRCULAR_TASKS = frozenset({"mmlu-circular"})
CIRCULAR_ORDERS = 2  # option orders per item (lab.datasets._mmlu_circular)


def circular_labels(rows: Sequence[Row]) -> list[Row]:
    """Multiple-choice rows asked under several option orders (:func:`router.prompt_ids.group_of`) are
    labelled correct only if the arm was right under every order it was asked; an order still
    missing leaves the label ``None`` (not yet known). The last row per (prompt, arm) counts."""
    latest = {(r.prompt_id, r.arm): r for r in rows if r.task in CIRCULAR_TASKS}
    verdict: dict[tuple[str, str], list[bool | None]] = defaultdict(list)
    for (pid, arm), r in latest.items():
        verdict[(group_of(pid), arm)].append(r.correct)
    out = []
    for r in rows:
        if r.task in CIRCULAR_TASKS:
            seen = verdict[(group_of(r.prompt_id), r.arm)]
            complete = len(seen) >= CIRCULAR_ORDERS and all(v is not None for v in seen)
            r = replace(r, correct=all(seen) if complete else None)
        out.append(r)
    return out


def latest_rows(rows: Iterable[Row]) -> list[Row]:
    """One row per (prompt, arm): the last one given. Profiles are appended to, so re-profiling an arm
    (in the same file or a later one) replaces its older measurements."""
    latest: dict[tuple[str, str], Row] = {}
    for r in rows:
        latest.pop((r.prompt_id, r.arm), None)
        latest[(r.prompt_id, r.arm)] = r
    return list(latest.values())


def prompt_folds(ids: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """Fold number (0..k-1) per prompt id: a fixed function of the ids and the seed. Prompts made from
    one source item (same :func:`router.prompt_ids.group_of`) share a fold."""
    groups = sorted({group_of(i) for i in ids}, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    fold = {g: n % k for n, g in enumerate(groups)}
    return {pid: fold[group_of(pid)] for pid in ids}


class _Fit(Protocol):
    def __call__(self, x: Array, y: Array, l2: float, *, weight: Array | None = None) -> Array: ...


def _cv_choose(
    x: Array,
    y: Array,
    fold: np.ndarray,
    fit: _Fit,
    loss: Callable[[Array, Array, Array | None], float],
    predict: Callable[[Array, Array], Array],
    weight: Array | None = None,
) -> tuple[float, Array]:
    """Pick the L2 strength with the least cross-validated (``weight``-weighted) loss; return it and
    the OOF predictions. A fold holding every row is predicted by the (weighted) mean of ``y``."""
    best: tuple[float, float, Array] | None = None
    for l2 in L2_GRID:
        oof = np.zeros(len(y))
        for f in np.unique(fold):
            test = fold == f
            if test.all():
                oof[test] = np.average(y, weights=weight)
                continue
            w = fit(x[~test], y[~test], l2, weight=None if weight is None else weight[~test])
            oof[test] = predict(w, x[test])
        score = loss(oof, y, weight)
        if best is None or score < best[0] - 1e-12:
            best = (score, l2, oof)
    assert best is not None
    return best[1], best[2]


def _out_of_fold(
    x: Array, y: Array, mask: np.ndarray, fold: np.ndarray, l2: float, weight: Array | None = None
) -> Array:
    """Ridge predictions for every row from a fit on the other folds' rows where ``mask`` holds
    (``y`` is given for the masked rows only; ``weight``, if given, for every row)."""
    out = np.zeros(len(x))
    target = np.zeros(len(x))
    target[mask] = y
    for f in np.unique(fold):
        test = fold == f
        train_rows = mask & ~test
        if train_rows.any():
            w = None if weight is None else weight[train_rows]
            out[test] = predict_linear(fit_ridge(x[train_rows], target[train_rows], l2, weight=w), x[test])
    return out


def _mse(p: Array, y: Array, weight: Array | None = None) -> float:
    return float(np.mean((p - y) ** 2) if weight is None else np.average((p - y) ** 2, weights=weight))


def _ttft_line(rows: Sequence[Row], kchars: Mapping[str, float]) -> tuple[float, float, float, float]:
    """TTFT linear in prompt length over the rows that measured it, never below what short prompts
    take: ``(intercept, per kchar, floor, median)`` (all 0 when none did: the forecast then has no
    TTFT part). Prefill cost on CPU is not linear (flat for short prompts, steep past a few hundred
    tokens), so the least-squares line can cross zero; the floor is the median TTFT of the shortest
    quarter of prompts."""
    kc = np.array([kchars[r.prompt_id] for r in rows])
    ttft = np.array([r.ttft_s for r in rows])
    known = ~np.isnan(ttft)
    if not known.any():
        return 0.0, 0.0, 0.0, 0.0
    if not known.all():
        kc, ttft = kc[known], ttft[known]
    design = np.stack([np.ones_like(kc), kc], axis=1)
    (_, b), *_ = np.linalg.lstsq(design, ttft, rcond=None)
    b = max(0.0, float(b))
    floor = float(np.median(ttft[kc <= np.percentile(kc, 25)]))
    return float(np.median(ttft - b * kc)), b, floor, float(np.median(ttft))


@dataclass
class ArmReport:
    rows: int
    accuracy: float | None
    quality_log_loss: float | None
    quality_base_log_loss: float | None
    quality_auc: float | None
    quality_head: str
    length_mae_log: float
    length_base_mae_log: float
    speed_mae_log: float | None
    median_tokens_per_s: float
    median_ttft_s: float
    l2: dict[str, float]


def auc(scores: Array, labels: Array) -> float | None:
    """Area under the ROC curve (ties averaged); ``None`` with one class only."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]), kind="stable"), kind="stable").astype(float) + 1
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):  # average ranks of ties
        m = allv == v
        ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@dataclass
class _QualityHead:
    """An arm's fitted quality head: logistic weights (zeros, p = 0.5, for an arm without enough
    labels), the chosen L2 (``None`` then), the out-of-fold log-loss against the base rate's, AUC,
    and the kNN ``k`` (0: the logistic head serves) with every prompt's label (NaN where none)."""

    weights: Array
    l2: float | None = None
    log_loss: float | None = None
    base_log_loss: float | None = None
    auc: float | None = None
    knn_k: int = 0
    knn_y: Array | None = None


def _fit_quality(
    arm: str,
    arm_rows: Sequence[Row],
    x: Array,
    fold: np.ndarray,
    sw: Array | None,
    folds: int,
    ids: Sequence[str],
    oof: OutOfFold,
) -> _QualityHead:
    """The quality head on the labelled rows (at least ``folds`` of them); records the out-of-fold
    predictions in ``oof.quality``."""
    lab = np.array([r.correct is not None for r in arm_rows])
    y_q = np.array([1.0 if r.correct else 0.0 for r in arm_rows])
    if lab.sum() < folds:
        return _QualityHead(weights=np.zeros(x.shape[1] + 1))  # no labels for this arm: quality unknown (p = 0.5)
    sw_q = None if sw is None else sw[lab]
    l2, oof_q = _cv_choose(x[lab], y_q[lab], fold[lab], fit_logistic, log_loss, predict_logistic, sw_q)
    w_q = fit_logistic(x[lab], y_q[lab], l2, weight=sw_q)
    base = np.full(int(lab.sum()), np.average(y_q[lab], weights=sw_q))
    q_ll, q_base = log_loss(oof_q, y_q[lab], sw_q), log_loss(base, y_q[lab], sw_q)
    knn_k, oof_knn, q_ll = neighbours.choose_k(x[lab], y_q[lab], fold[lab], q_ll, sw_q)
    oof_q = oof_knn if oof_knn is not None else oof_q
    labels = {r.prompt_id: float(bool(r.correct)) for r, m in zip(arm_rows, lab, strict=True) if m}
    for r, p in zip([r for r, m in zip(arm_rows, lab, strict=True) if m], oof_q, strict=True):
        oof.quality[r.prompt_id][arm] = float(p)
    return _QualityHead(
        weights=w_q,
        l2=l2,
        log_loss=q_ll,
        base_log_loss=q_base,
        auc=auc(oof_q, y_q[lab]),
        knn_k=knn_k,
        knn_y=np.array([labels.get(i, np.nan) for i in ids]),
    )


@dataclass
class _SpeedHead:
    """An arm's decode-speed factor head: ridge weights on ``log(tokens/s / median)`` (zeros with
    fewer than ``folds`` measured rows), the chosen L2 (``None`` then), its out-of-fold MAE, the
    out-of-fold factor of every row and the median decode speed (1.0 when none was measured)."""

    weights: Array
    l2: float | None
    mae_log: float | None
    out_of_fold: Array
    median_tokens_per_s: float


def _fit_speed(arm_rows: Sequence[Row], x: Array, fold: np.ndarray, sw: Array | None, folds: int) -> _SpeedHead:
    speed_rows = np.array([bool(r.decode_tps and r.decode_tps > 0) for r in arm_rows])
    tps = np.array([r.decode_tps or 0.0 for r in arm_rows])
    median_tps = float(np.median(tps[speed_rows])) if speed_rows.any() else 1.0
    if speed_rows.sum() < folds:
        return _SpeedHead(np.zeros(x.shape[1] + 1), None, None, np.zeros(len(arm_rows)), median_tps)
    y_sp = np.log(tps[speed_rows] / median_tps)
    sw_sp = None if sw is None else sw[speed_rows]
    l2, oof_sp = _cv_choose(x[speed_rows], y_sp, fold[speed_rows], fit_ridge, _mse, predict_linear, sw_sp)
    w_sp = fit_ridge(x[speed_rows], y_sp, l2, weight=sw_sp)
    speed_mae = float(np.mean(np.abs(oof_sp - y_sp)))
    return _SpeedHead(w_sp, l2, speed_mae, _out_of_fold(x, y_sp, speed_rows, fold, l2, sw), median_tps)


def _fit_arm(
    arm: str,
    arm_rows: Sequence[Row],
    x_of: Mapping[str, Array],
    fold_of: Mapping[str, int],
    kchars: Mapping[str, float],
    weights: Mapping[tuple[str, str], float] | None,
    folds: int,
    ids: Sequence[str],
    oof: OutOfFold,
) -> tuple[ArmModel, ArmReport, Array | None]:
    """One arm's model (quality, length and speed heads, TTFT line) and report, and its kNN labels
    (``None`` without enough labels); records the out-of-fold forecasts in ``oof``."""
    x = np.stack([x_of[r.prompt_id] for r in arm_rows])
    fold = np.array([fold_of[r.prompt_id] for r in arm_rows])
    sw = None if weights is None else np.array([float(weights.get((r.prompt_id, r.arm), 1.0)) for r in arm_rows])
    quality = _fit_quality(arm, arm_rows, x, fold, sw, folds, ids, oof)
    y_len = np.log1p(np.array([r.output_tokens for r in arm_rows], dtype=float))
    l2_len, oof_len = _cv_choose(x, y_len, fold, fit_ridge, _mse, predict_linear, sw)
    speed = _fit_speed(arm_rows, x, fold, sw, folds)
    a, b, ttft_floor, median_ttft = _ttft_line(arm_rows, kchars)
    model = ArmModel(
        quality_w=quality.weights,
        length_w=fit_ridge(x, y_len, l2_len, weight=sw),
        speed_w=speed.weights,
        ttft_intercept_s=a,
        ttft_per_kchar_s=b,
        ttft_floor_s=ttft_floor,
        median_tokens_per_s=speed.median_tokens_per_s,
        median_ttft_s=median_ttft,
        quality_knn_k=quality.knn_k,
    )
    for r, ln, sp in zip(arm_rows, oof_len, speed.out_of_fold, strict=True):
        # the serving formula (ArmModel.forecast) on out-of-fold heads: what the margins must cover
        p = model.forecast(0.0, float(ln), float(sp), kchars[r.prompt_id], None)
        oof.latency[r.prompt_id][arm] = p.latency_s
        oof.tokens[r.prompt_id][arm] = p.output_tokens
        if not np.isnan(r.ttft_s):
            oof.ttft[r.prompt_id][arm] = p.ttft_s
    l2s = {"quality": quality.l2, "length": l2_len, "speed": speed.l2}
    labelled = [r.correct for r in arm_rows if r.correct is not None]
    report = ArmReport(
        rows=len(arm_rows),
        accuracy=float(np.mean(labelled)) if labelled else None,
        quality_log_loss=quality.log_loss,
        quality_base_log_loss=quality.base_log_loss,
        quality_auc=quality.auc,
        quality_head=f"knn-{quality.knn_k}" if quality.knn_k else "logistic",
        length_mae_log=float(np.mean(np.abs(oof_len - y_len))),
        length_base_mae_log=float(np.mean(np.abs(y_len - y_len.mean()))),
        speed_mae_log=speed.mae_log,
        median_tokens_per_s=speed.median_tokens_per_s,
        median_ttft_s=median_ttft,
        l2={k: v for k, v in l2s.items() if v is not None},
    )
    return model, report, quality.knn_y


def train(
    rows: Sequence[Row],
    vectors: Mapping[str, Array],
    kchars: Mapping[str, float],
    encoder: str,
    feature_names: Sequence[str],
    seed: int = 0,
    folds: int = 5,
    weights: Mapping[tuple[str, str], float] | None = None,
) -> tuple[RouterModel, dict[str, Any]]:
    """Fit every arm's predictors and calibrate the policy thresholds.

    ``vectors``: raw prompt vector per prompt id (embedding + cheap features); ``kchars``: prompt
    length in thousands of characters. ``weights``: a sample weight per ``(prompt id, arm)`` row
    (absent rows weigh 1; ``None``: all rows 1, exactly as without weights), e.g. the inverse
    propensity of a logged decision; the quality, length and speed heads and their cross-validated
    losses use it (the kNN rates and the TTFT line do not). A row whose ``ttft_s`` is NaN (TTFT not
    measured) counts for everything but the TTFT line and its margin. Returns the model and a
    JSON-able report.
    """
    ids = sorted(vectors)
    raw = np.stack([vectors[i] for i in ids])
    mean = raw.mean(axis=0)
    std = np.maximum(raw.std(axis=0), 1e-6)
    x_of = {pid: (vectors[pid] - mean) / std for pid in ids}
    fold_of = prompt_folds(ids, folds, seed)
    by_arm: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.prompt_id in x_of:
            by_arm[r.arm].append(r)
    arms: dict[str, ArmModel] = {}
    reports: dict[str, ArmReport] = {}
    knn_y: dict[str, Array] = {}
    oof = OutOfFold(defaultdict(dict), defaultdict(dict), defaultdict(dict), defaultdict(dict))
    for arm, arm_rows in sorted(by_arm.items()):
        arm_rows.sort(key=lambda r: r.prompt_id)
        arms[arm], reports[arm], labels = _fit_arm(arm, arm_rows, x_of, fold_of, kchars, weights, folds, ids, oof)
        if labels is not None:
            knn_y[arm] = labels
    calibration, cal_report = calibrate([r for r in rows if r.prompt_id in x_of], oof, sorted(arms))
    uses_knn = any(m.quality_knn_k for m in arms.values())
    family_of = {r.prompt_id: r.task for r in rows if r.prompt_id in x_of}
    families = fit_families(x_of, family_of, [i for i in ids if i in family_of])
    model = RouterModel(
        encoder=encoder,
        feature_names=tuple(feature_names),
        mean=mean,
        std=std,
        arms=arms,
        calibration=calibration,
        knn_x=np.stack([x_of[i] for i in ids]) if uses_knn else None,
        knn_y={a: y for a, y in knn_y.items() if arms[a].quality_knn_k} if uses_knn else {},
        families=families,
    )
    report = {
        "arms": {k: vars(v) for k, v in reports.items()},
        "calibration": cal_report,
        "prompts": len(ids),
        "seed": seed,
        "folds": folds,
    }
    if families is not None:
        in_fold = {i: fold_of[i] for i in ids if i in family_of}
        report["families"] = {
            "names": list(families.names),
            "held_out_accuracy": held_out_accuracy(x_of, family_of, in_fold, folds),
        }
    return model, report
