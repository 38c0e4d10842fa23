"""``llm-gateway train`` and ``llm-gateway evaluate``: the offline side of the learned router.

These commands run on a workstation or in CI, never in the serving path. They read profile
JSONL written by ``llm-gateway profile``, embed the prompts with the same encoder the gateway
uses, and write an artifact (``train``) or a report with a Pareto chart (``evaluate``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from router.artifact import save_artifact
from router.training import Row, latest_rows, read_rows


def _progress(done: int, total: int, label: str, started: float) -> None:
    if not sys.stderr.isatty() and done not in (total,) and done % 50:
        return
    rate = done / max(time.monotonic() - started, 1e-9)
    width = 30
    fill = int(width * done / max(total, 1))
    sys.stderr.write(f"\r  {label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {rate:.0f}/s ")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _read_profiles(paths: list[str]) -> tuple[list[Row], dict[str, str], str]:
    """Rows (the last per prompt and arm, see :func:`router.training.latest_rows`), prompt text per id
    (from the rows' ``prompt`` field), and a hash of the input files."""
    rows: list[Row] = []
    texts: dict[str, str] = {}
    digest = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        digest.update(data)
        lines = data.decode().splitlines()
        rows.extend(read_rows(lines))
        for line in lines:
            if line.strip():
                r = json.loads(line)
                if isinstance(r.get("prompt"), str):
                    texts.setdefault(r["prompt_id"], r["prompt"])
    rows = latest_rows(rows)
    missing = {r.prompt_id for r in rows} - set(texts)
    if missing:
        raise SystemExit(
            f"llm-gateway: {len(missing)} profiled prompts have no 'prompt' text in the profile rows "
            f"(e.g. {sorted(missing)[0]}); re-run `llm-gateway profile` (it records the prompt text)"
        )
    return rows, texts, digest.hexdigest()


def _vectors(ids: list[str], texts: dict[str, str], kind: str) -> tuple[dict[str, np.ndarray], str, tuple[str, ...]]:
    from router.encoder import load_encoder
    from router.learned import feature_names, prompt_vector

    encoder = load_encoder(kind)
    out: dict[str, np.ndarray] = {}
    started = time.monotonic()
    for n, pid in enumerate(ids, 1):
        out[pid] = prompt_vector(encoder, texts[pid])
        _progress(n, len(ids), "embedding", started)
    return out, encoder.name, feature_names(encoder)


def train_command(args: argparse.Namespace) -> int:
    from router.training import train

    rows, texts, data_hash = _read_profiles(args.profiles)
    train_rows = [r for r in rows if r.split == "train"]
    ids = sorted({r.prompt_id for r in train_rows})
    if not ids:
        print("llm-gateway: no train-split rows in the profiles", file=sys.stderr)
        return 1
    print(
        f"==> training on {len(train_rows)} rows, {len(ids)} prompts, arms: "
        + ", ".join(sorted({r.arm for r in train_rows})),
        flush=True,
    )
    vectors, encoder, names = _vectors(ids, texts, args.encoder)
    model, report = train(
        train_rows, vectors, {i: len(texts[i]) / 1000 for i in ids}, encoder, names, seed=args.seed, folds=args.folds
    )
    meta = {
        "arms": sorted(model.arms),
        "encoder": encoder,
        "profiles": [str(p) for p in args.profiles],
        "profiles_sha256": data_hash,
        "train_prompts": len(ids),
        "train_rows": len(train_rows),
        "seed": args.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "validation": report,
    }
    path = save_artifact(model, args.out, meta)
    print(f"==> wrote {path}")
    print(
        f"{'arm':28} {'rows':>5} {'acc':>6} {'logloss (base)':>16} {'AUC':>5} {'len MAE log (base)':>19} {'tok/s':>6}"
    )
    for arm, r in report["arms"].items():
        ll = f"{r['quality_log_loss']:.3f} ({r['quality_base_log_loss']:.3f})" if r["quality_log_loss"] else "-"
        auc = f"{r['quality_auc']:.2f}" if r["quality_auc"] is not None else "-"
        acc = f"{r['accuracy']:.2f}" if r["accuracy"] is not None else "-"
        print(
            f"{arm:28} {r['rows']:>5} {acc:>6} {ll:>16} {auc:>5} "
            f"{r['length_mae_log']:.2f} ({r['length_base_mae_log']:.2f}){'':>7} {r['median_tokens_per_s']:>6.1f}"
        )
    cal = report["calibration"]
    print(f"balanced weight {cal.get('balanced_weight')}, accuracy levels {cal.get('accuracy_levels')}")
    return 0


def _chart(result: dict[str, Any], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pt in result["points"]:
        name = pt["name"]
        style = (
            ("s", "tab:blue")
            if name.startswith("fixed:")
            else ("*", "tab:green")
            if name == "oracle"
            else ("x", "tab:gray")
            if name == "random"
            else ("o", "tab:red")
        )
        ax.scatter(pt["latency_s"], pt["accuracy"] * 100, marker=style[0], color=style[1], s=60)
        if not name.startswith("router:balanced"):
            ax.annotate(
                name.removeprefix("router:"),
                (pt["latency_s"], pt["accuracy"] * 100),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
    sweep = sorted(
        (p for p in result["points"] if p["name"].startswith("router:balanced")), key=lambda p: p["latency_s"]
    )
    ax.plot(
        [p["latency_s"] for p in sweep],
        [p["accuracy"] * 100 for p in sweep],
        color="tab:red",
        alpha=0.5,
        label="router, balanced weight sweep",
    )
    ax.set_xlabel("mean end-to-end latency (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title}: router vs fixed arms")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _cross_validated(rows: list[Any], texts: dict[str, str], k: int, seed: int, kind: str) -> dict[str, Any]:
    """Evaluate on every profiled prompt: K folds grouped by prompt, each scored by a router
    trained (with :func:`router.training.train`, as ``llm-gateway train`` does, with encoder
    ``kind``) on the others."""
    from router.evaluation import evaluate, pool
    from router.learned import LearnedPolicy
    from router.training import prompt_folds, train

    ids = sorted({r.prompt_id for r in rows})
    vectors, encoder, names = _vectors(ids, texts, kind)
    fold_of = prompt_folds(ids, k, seed)
    arms = sorted({r.arm for r in rows})
    results = []
    for fold in range(k):
        train_rows = [r for r in rows if fold_of[r.prompt_id] != fold]
        test_rows = [r for r in rows if fold_of[r.prompt_id] == fold]
        train_ids = sorted({r.prompt_id for r in train_rows})
        model, _ = train(
            train_rows,
            {i: vectors[i] for i in train_ids},
            {i: len(texts[i]) / 1000 for i in train_ids},
            encoder,
            names,
            seed=seed,
        )
        policy = LearnedPolicy(model=model)  # features are given: no encoder needed
        features = {
            r.prompt_id: (model.standardise(vectors[r.prompt_id]), len(texts[r.prompt_id]) / 1000) for r in test_rows
        }
        results.append(evaluate(policy, test_rows, features, arms))
        print(f"  fold {fold + 1}/{k}: {results[-1]['prompts']} prompts", flush=True)
    return pool(results)


def _write_evaluation(result: dict[str, Any], out: Path, stem: str, title: str) -> None:
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| rule | accuracy | mean latency (s) | gap recovered | arm share |", "|---|---|---|---|---|"]
    for pt in result["points"]:
        gap = "" if pt["gap_recovered"] is None else f"{pt['gap_recovered'] * 100:.0f}%"
        share = ", ".join(f"{a} {s * 100:.0f}%" for a, s in pt["share"].items())
        lines.append(f"| {pt['name']} | {pt['accuracy'] * 100:.1f}% | {pt['latency_s']:.2f} | {gap} | {share} |")
    table = "\n".join(lines)
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    if _chart(result, out / f"{stem}.png", title):
        print(f"chart: {out / (stem + '.png')}")
    else:
        print("matplotlib not installed: no chart (pip install matplotlib)")


def evaluate_command(args: argparse.Namespace) -> int:
    from router.encoder import encoder_kind
    from router.evaluation import evaluate
    from router.learned import LearnedPolicy

    rows, texts, _ = _read_profiles(args.profiles)
    test_rows = [r for r in rows if r.split == "test"]
    policy = LearnedPolicy(artifact=args.artifact)
    arms = sorted(policy.model.arms)
    ids = sorted({r.prompt_id for r in test_rows})
    features: dict[str, Any] = {}
    timings: list[float] = []
    started = time.monotonic()
    for n, pid in enumerate(ids, 1):
        t0 = time.perf_counter()
        features[pid] = policy.featurize(texts[pid])
        timings.append(time.perf_counter() - t0)
        _progress(n, len(ids), "embedding", started)
    result = evaluate(policy, test_rows, features, arms)
    result["featurize_ms"] = {
        "p50": float(np.percentile(timings, 50) * 1000),
        "p99": float(np.percentile(timings, 99) * 1000),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_evaluation(result, out, "evaluation", f"Held-out prompts (n={result['prompts']})")
    print(
        f"held-out prompts: {result['prompts']}; featurize p50 {result['featurize_ms']['p50']:.1f} ms, "
        f"p99 {result['featurize_ms']['p99']:.1f} ms; decide p50 {result['policy_decide_ms']['p50']:.3f} ms"
    )
    if args.cv:
        print(f"==> {args.cv}-fold cross-validation over every profiled prompt (train and test splits)")
        kind = encoder_kind(policy.model.encoder)
        cv = _cross_validated([r for r in rows if r.arm in arms], texts, args.cv, args.seed, kind)
        _write_evaluation(cv, out, "evaluation-cv", f"{args.cv}-fold cross-validation (n={cv['prompts']})")
    return 0
