"""Experiment: would a *paired* speed-up head pick the speculation length better than per-arm heads?

The router predicts each arm's decode speed with its own ridge head on ``log(tokens/s)``, fitted one
arm at a time. Choosing among one model's strategies then rests on the difference of two noisy
predictions, and on SmolLM2 with n-gram k = 2 / 4 / 6 the router reaches 1.01x the best fixed length
where a task-family rule reaches 1.03x (``loadtests.strategy_choice``). This experiment fits, for
each non-plain strategy arm, one ridge head on the *paired* target ``log(tokens/s of the arm ÷
tokens/s of plain)`` on the same prompt (what the prompt does to both cancels), weighted by the
answer's decode tokens (a short answer's speed is the noisiest, and throughput is a ratio of sums
that long answers dominate). The choice is the arm with the highest predicted speed-up (plain = 1).
Out of fold, grouped by source item, the same folds as the report; the same prompt features as the
shipped artifacts (``--encoder none``). Reported with paired cluster-bootstrap 95 % intervals.

    .venv/bin/python -m loadtests.paired_speed --profiles profiles/router.jsonl \\
        profiles/router-smollm2-ngram2-paired.jsonl profiles/router-smollm2-ngram6-paired.jsonl \\
        --arms smollm2-plain,smollm2-spec-ngram2,smollm2-spec-ngram4,smollm2-spec-ngram6
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from loadtests.strategy_choice import family_rule, load, predicted_speeds, ratio_ci
from router.encoder import load_encoder
from router.learned import prompt_vector
from router.linear import Array, fit_ridge, predict_linear
from router.prompt_ids import group_of
from router.training import L2_GRID, Row, prompt_folds

GRID = (0.003, 0.03, *L2_GRID)  # weights average 1: the shipped grid starts too strong for them


def _ridge_cv(x: Array, y: Array, w: Array, folds: np.ndarray) -> Array:
    """Ridge weights with the L2 of least weighted out-of-fold error (inner folds = ``folds``)."""
    best: tuple[float, float] | None = None
    for l2 in GRID:
        err = 0.0
        for f in np.unique(folds):
            test = folds == f
            coef = fit_ridge(x[~test], y[~test], l2, weight=w[~test])
            err += float(np.sum(w[test] * (predict_linear(coef, x[test]) - y[test]) ** 2))
        if best is None or err < best[0]:
            best = (err, l2)
    assert best is not None
    return fit_ridge(x, y, best[1], weight=w)


def paired_choice(
    rows: dict[str, dict[str, Row]], texts: dict[str, str], arms: list[str], pids: list[str], folds: np.ndarray
) -> np.ndarray:
    """Out-of-fold arm index per prompt chosen by token-weighted paired speed-up heads."""
    encoder = load_encoder("none")
    x = np.stack([prompt_vector(encoder, texts[p]) for p in pids])
    speed = np.array([[rows[p][a].decode_tps or 0.0 for a in arms] for p in pids])
    tokens = np.array([max(rows[p][arms[0]].output_tokens - 1, 1) for p in pids], dtype=float)
    y = np.log(speed[:, 1:] / speed[:, [0]])
    predicted = np.zeros_like(y)
    for f in np.unique(folds):
        train = folds != f
        mu, sd = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
        z = (x - mu) / sd
        w = tokens / tokens[train].mean()
        for j in range(y.shape[1]):
            coef = _ridge_cv(z[train], y[train, j], w[train], folds[train])
            predicted[~train, j] = predict_linear(coef, z[~train])
    choice: np.ndarray = np.argmax(np.hstack([np.zeros((len(pids), 1)), predicted]), axis=1)
    return choice


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", required=True)
    ap.add_argument("--arms", required=True, help="one model's strategy arms, plain first")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replicates", type=int, default=2000)
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    rows, texts = load(args.profiles, arms)
    all_rows = [r for p in rows.values() for r in p.values() if r.arm in arms]
    fold_of = prompt_folds(sorted({r.prompt_id for r in all_rows}), args.folds, args.seed)
    pids = sorted(rows)
    folds = np.array([fold_of[p] for p in pids])
    measured = np.array([[rows[p][a].decode_tps or 0.0 for a in arms] for p in pids])
    tokens = np.array([[rows[p][a].output_tokens - 1 for a in arms] for p in pids], dtype=float)
    tasks = np.array([rows[p][arms[0]].task for p in pids])
    per_arm = predicted_speeds(rows, texts, arms, fold_of, args.seed, all_rows)
    best_fixed = int(np.argmax(tokens.sum(axis=0) / (tokens / measured).sum(axis=0)))
    rules = {
        f"fixed:{arms[best_fixed]} (best fixed)": np.full(len(pids), best_fixed),
        "family rule (told the family)": family_rule(tokens, measured, tasks, folds),
        "router (per-arm speed heads, shipped)": np.argmax([[per_arm[p][a] for a in arms] for p in pids], axis=1),
        "paired, token-weighted speed-up heads": paired_choice(rows, texts, arms, pids, folds),
    }
    idx = np.arange(len(pids))
    tok = np.stack([tokens[idx, c] for c in rules.values()])
    sec = np.stack([tokens[idx, c] / measured[idx, c] for c in rules.values()])
    groups = np.unique([group_of(p) for p in pids], return_inverse=True)[1]
    print(f"{len(pids)} prompts, arms {', '.join(arms)}")
    print("| rule | decode tok/s | ÷ best fixed [95 % CI] | share per arm |")
    print("|---|---|---|---|")
    for i, (name, choice) in enumerate(rules.items()):
        point, low, high = ratio_ci(tok, sec, i, 0, groups, args.replicates, args.seed)
        share = ", ".join(f"{a.split('-')[-1]} {np.mean(choice == j):.0%}" for j, a in enumerate(arms))
        print(f"| {name} | {tok[i].sum() / sec[i].sum():.1f} | {point:.3f} [{low:.3f}, {high:.3f}] | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
