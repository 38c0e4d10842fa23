"""``llm-gateway evaluate``: score a router artifact on held-out profiled prompts, optionally
K-fold cross-validated over every profiled prompt, against the fixed-arm, random, oracle, task-rule
and kNN baselines (:mod:`router.evaluation`); writes the report (:mod:`lab.report`) and charts
(:mod:`lab.charts`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lab import profiles
from lab.charts import pareto_chart, reliability_chart
from lab.embedding import embed
from lab.progress import progress
from lab.report import dumps, markdown


def arm_specs(labels: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Each profiled arm as a :class:`router.decision.Arm` from its public model and strategy label
    (:attr:`lab.profiles.Profiles.arm_labels`); an arm whose label no strategy writes is left out."""
    from router.decision import Arm
    from router.strategy import StrategyError, strategy_from_label

    out = {}
    for arm, (model, label) in labels.items():
        try:
            out[arm] = Arm(name=arm, model=model, strategy=strategy_from_label(label))
        except StrategyError:
            continue
    return out


Augment = Callable[[dict[str, Any], list[str], list[str]], tuple[dict[str, Any], tuple[str, ...]]]


def cross_validated(
    rows: list[Any],
    texts: dict[str, str],
    k: int,
    seed: int,
    kind: str,
    specs: dict[str, Any] | None = None,
    augment: Augment | None = None,
    fit: Callable[..., tuple[Any, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Evaluate on every profiled prompt: K folds grouped by prompt, each scored by a router trained
    (with :func:`router.training.train`, as ``llm-gateway train`` does, with encoder ``kind``) on the
    others; the task rule and kNN baselines are fitted on the same training folds. The folds'
    per-prompt outcomes are pooled before the bootstrap (:func:`router.evaluation.pool`).

    ``augment(vectors, train_ids, test_ids)``, for experiments with extra prompt features: per fold,
    the prompt vectors to use and their feature names; it sees the fold's training prompts only as
    such (what it fits, it fits on ``train_ids``). ``fit``, for experiments with another way of fitting
    the router: called as :func:`router.training.train` is (the default), it returns a model and a
    report."""
    from router.evaluation import REPLICATES, evaluate, pool
    from router.learned import LearnedPolicy
    from router.training import prompt_folds, train

    ids = sorted({r.prompt_id for r in rows})
    vectors, encoder, names = embed(ids, texts, kind)
    fold_of = prompt_folds(ids, k, seed)
    arms = sorted({r.arm for r in rows})
    results = []
    for fold in range(k):
        train_rows = [r for r in rows if fold_of[r.prompt_id] != fold]
        test_rows = [r for r in rows if fold_of[r.prompt_id] == fold]
        train_ids = sorted({r.prompt_id for r in train_rows})
        fold_vectors, fold_names = vectors, names
        if augment is not None:
            fold_vectors, fold_names = augment(vectors, train_ids, sorted({r.prompt_id for r in test_rows}))
        model, _ = (fit or train)(
            train_rows,
            {i: fold_vectors[i] for i in train_ids},
            {i: len(texts[i]) / 1000 for i in train_ids},
            encoder,
            fold_names,
            seed=seed,
        )
        policy = LearnedPolicy(model=model)  # features are given: no encoder needed

        def features(pids: set[str], model: Any = model, v: dict[str, Any] = fold_vectors) -> dict[str, Any]:
            return {p: (model.standardise(v[p]), len(texts[p]) / 1000) for p in pids}

        results.append(
            evaluate(
                policy,
                test_rows,
                features({r.prompt_id for r in test_rows}),
                arms,
                train_rows=train_rows,
                train_features=features(set(train_ids)),
                seed=seed,
                replicates=0,  # the intervals are drawn once, over the pooled prompts
                arm_specs=specs,
            )
        )
        print(f"  fold {fold + 1}/{k}: {results[-1]['prompts']} prompts", flush=True)
    return pool(results, replicates=REPLICATES)


def _write_evaluation(result: dict[str, Any], out: Path, stem: str, title: str) -> None:
    """``{stem}.json`` (everything, per-prompt data included), ``{stem}.png`` (Pareto chart),
    ``{stem}-reliability.png`` and ``{stem}.md`` (the tables, the charts shown above them)."""
    (out / f"{stem}.json").write_text(dumps(result) + "\n")
    charts = []
    if pareto_chart(result, out / f"{stem}.png", title):
        charts.append(f"{stem}.png")
        if reliability_chart(result, out / f"{stem}-reliability.png", title):
            charts.append(f"{stem}-reliability.png")
    report = markdown(result, title, charts, stem)
    (out / f"{stem}.md").write_text(report)
    print(report.split("## Router minus baseline")[0].rstrip())
    print(f"report: {out / (stem + '.md')}")
    for chart in charts:
        print(f"chart: {out / chart}")
    if not charts:
        print("matplotlib not installed: no charts (pip install matplotlib)")


def _featurize(policy: Any, ids: list[str], texts: dict[str, str], label: str) -> tuple[dict[str, Any], list[float]]:
    """The policy's features of each prompt, as serving computes them, and the seconds each took."""
    features: dict[str, Any] = {}
    timings: list[float] = []
    with progress(len(ids), label, "prompt") as bar:
        for pid in ids:
            t0 = time.perf_counter()
            features[pid] = policy.featurize(texts[pid])
            timings.append(time.perf_counter() - t0)
            bar.update(1)
    return features, timings


def evaluate_command(args: argparse.Namespace) -> int:
    """Entry point of ``llm-gateway evaluate``: 0 written, 1 unusable profiles, 2 unusable artifact."""
    from router.encoder import encoder_kind
    from router.evaluation import evaluate
    from router.learned import LearnedPolicy

    try:
        data = profiles.load(args.profiles)
    except (OSError, profiles.ProfileError) as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    rows, texts = data.rows, data.texts
    try:
        policy = LearnedPolicy(artifact=args.artifact)
    except ValueError as exc:  # ArtifactError, or an encoder whose extra is not installed
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    arms = sorted(policy.model.arms)
    test_rows = [r for r in rows if r.split == "test" and r.arm in arms]
    train_rows = [r for r in rows if r.split == "train" and r.arm in arms]
    features, timings = _featurize(policy, sorted({r.prompt_id for r in test_rows}), texts, "embedding")
    train_ids = sorted({r.prompt_id for r in train_rows})
    train_features, _ = _featurize(policy, train_ids, texts, "embedding (train split, for the baselines)")
    specs = arm_specs(data.arm_labels)
    result = evaluate(
        policy,
        test_rows,
        features,
        arms,
        train_rows=train_rows,
        train_features=train_features,
        seed=args.seed,
        arm_specs=specs,
    )
    result["featurize_ms"] = {
        "p50": float(np.percentile(timings, 50) * 1000),
        "p99": float(np.percentile(timings, 99) * 1000),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_evaluation(result, out, "evaluation", f"Held-out prompts (n={result['prompts']})")
    print(
        f"held-out prompts: {result['prompts']} ({result['labelled_prompts']} labelled); featurize p50 "
        f"{result['featurize_ms']['p50']:.1f} ms, p99 {result['featurize_ms']['p99']:.1f} ms; "
        f"decide p50 {result['policy_decide_ms']['p50']:.3f} ms"
    )
    if args.cv:
        print(f"==> {args.cv}-fold cross-validation over every profiled prompt (train and test splits)")
        kind = encoder_kind(policy.model.encoder)
        cv = cross_validated([r for r in rows if r.arm in arms], texts, args.cv, args.seed, kind, specs)
        _write_evaluation(cv, out, "evaluation-cv", f"{args.cv}-fold cross-validation (n={cv['prompts']})")
    return 0
