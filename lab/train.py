"""``llm-gateway train``: fit the learned router's predictors from profiles and/or served traffic.

Runs on a workstation or in CI, never in the serving path. Reads profile JSONL written by
``llm-gateway profile`` (:mod:`lab.profiles`) and, with ``--from-log``, the gateway's decision log
(:mod:`lab.traffic`), embeds the prompts with the same encoder the gateway uses, and writes an
artifact (:func:`router.artifact.save_artifact`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from lab import profiles
from lab.embedding import embed
from router.artifact import save_artifact
from router.encoder import NO_EMBEDDING, EncoderUnavailable, require_minilm


def _load_profiles(paths: list[str] | None) -> profiles.Profiles | None:
    """The profiles given (none: an empty set); ``None`` after printing why they cannot be used."""
    if not paths:
        return profiles.Profiles()
    try:
        return profiles.load(paths)
    except (OSError, profiles.ProfileError) as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return None


def train_command(args: argparse.Namespace) -> int:
    """Entry point of ``llm-gateway train``: 0 written, 1 no usable input, 2 bad arguments."""
    from router.training import train

    if not args.profiles and not args.from_log:
        print("llm-gateway: train needs --profiles, --from-log or both", file=sys.stderr)
        return 2
    if args.feedback and not args.from_log:
        print("llm-gateway: --feedback is joined to a decision log: give --from-log too", file=sys.stderr)
        return 2
    if args.encoder != NO_EMBEDDING:
        try:
            require_minilm()
        except EncoderUnavailable as exc:
            print(f"llm-gateway train --encoder {args.encoder}: {exc}", file=sys.stderr)
            return 2
    data = _load_profiles(args.profiles)
    if data is None:
        return 1
    texts = data.texts
    train_rows = [r for r in data.rows if r.split == "train"]
    kchars = {r.prompt_id: len(texts[r.prompt_id]) / 1000 for r in train_rows}
    given: dict[str, np.ndarray] = {}
    weights = log_meta = None
    if args.from_log:
        from lab.traffic import training_traffic

        try:
            traffic, given, log_meta = training_traffic(args.from_log, args.feedback, args.encoder, texts)
        except (OSError, ValueError) as exc:
            print(f"llm-gateway: {exc}", file=sys.stderr)
            return 1
        train_rows += traffic.rows
        kchars.update(traffic.kchars)
        weights = traffic.weights
        print(f"==> decision log: {json.dumps(traffic.report)}", flush=True)
    ids = sorted({r.prompt_id for r in train_rows})
    if not ids:
        print("llm-gateway: no train-split rows in the profiles or answered requests in the log", file=sys.stderr)
        return 1
    print(
        f"==> training on {len(train_rows)} rows, {len(ids)} prompts, arms: "
        + ", ".join(sorted({r.arm for r in train_rows})),
        flush=True,
    )
    vectors, encoder, names = embed([i for i in ids if i not in given], texts, args.encoder)
    vectors.update(given)
    model, report = train(
        train_rows, vectors, kchars, encoder, names, seed=args.seed, folds=args.folds, weights=weights
    )
    meta = {
        "arms": sorted(model.arms),
        "encoder": encoder,
        "profiles": [str(p) for p in args.profiles or ()],
        "profiles_sha256": data.sha256 if args.profiles else None,
        "decision_log": log_meta,
        "train_prompts": len(ids),
        "train_rows": len(train_rows),
        "seed": args.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "validation": report,
    }
    print(f"==> wrote {save_artifact(model, args.out, meta)}")
    _print_validation(report)
    return 0


def _print_validation(report: dict[str, Any]) -> None:
    """The cross-validated quality of each arm's predictors, against the constant baselines."""
    print(
        f"{'arm':28} {'rows':>5} {'acc':>6} {'logloss (base)':>16} {'AUC':>5} {'len MAE log (base)':>19} {'tok/s':>6}"
    )
    for arm, r in report["arms"].items():
        ll = f"{r['quality_log_loss']:.3f} ({r['quality_base_log_loss']:.3f})" if r["quality_log_loss"] else "-"
        auc = f"{r['quality_auc']:.2f}" if r["quality_auc"] is not None else "-"
        auc += "" if r.get("quality_head", "logistic") == "logistic" else f" ({r['quality_head']})"
        acc = f"{r['accuracy']:.2f}" if r["accuracy"] is not None else "-"
        print(
            f"{arm:28} {r['rows']:>5} {acc:>6} {ll:>16} {auc:>5} "
            f"{r['length_mae_log']:.2f} ({r['length_base_mae_log']:.2f}){'':>7} {r['median_tokens_per_s']:>6.1f}"
        )
    cal = report["calibration"]
    print(f"balanced weight {cal.get('balanced_weight')}, accuracy levels {cal.get('accuracy_levels')}")
