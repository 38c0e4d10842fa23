"""Does the router pick the decoding strategy per prompt? Speculation's speed-up, predicted vs measured.

For one model served with several strategies (e.g. SmolLM2 plain and with n-gram speculation),
every prompt profiled on all of them is scored out of fold: K folds grouped by source item, the
router trained (``router.training.train``, features-only encoder) on the other folds predicts each
strategy's decode speed for the held-out prompts, and the strategy with the highest predicted speed
is "the router's choice". At temperature 0 speculation does not change the text, so the choice is
only about speed. Reported, with paired cluster-bootstrap 95 % CIs:

* decode throughput (answer tokens ÷ decode seconds) of every fixed strategy, the router's choice
  and the oracle, over all prompts, copy/edit prompts (``rename``, ``extract``) and free text;
* the router's throughput ÷ the best fixed strategy's, and ÷ plain's on free text;
* predicted vs measured speed-up of each non-plain strategy over plain: correlation of the logs,
  and how often each says "slower".

Usage::

    python -m loadtests.strategy_choice --profiles profiles/router.jsonl \\
        --arms smollm2-plain,smollm2-spec-ngram4 --out docs/router/strategy
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lab import profiles
from loadtests.strategy_noise import noise_oracle
from router.bootstrap import resample_counts
from router.encoder import load_encoder
from router.learned import feature_names, prompt_vector
from router.prompt_ids import group_of
from router.training import Row, prompt_folds, train

COPY_TASKS = ("rename", "extract")


def load(paths: list[str], arms: list[str]) -> tuple[dict[str, dict[str, Row]], dict[str, str]]:
    data = profiles.load(paths)
    by_prompt: dict[str, dict[str, Row]] = defaultdict(dict)
    for r in data.rows:
        by_prompt[r.prompt_id][r.arm] = r
    usable = {
        p: rows
        for p, rows in by_prompt.items()
        if all(a in rows and (rows[a].decode_tps or 0) > 0 and rows[a].output_tokens > 1 for a in arms)
    }
    return usable, data.texts


def predicted_speeds(
    rows: dict[str, dict[str, Row]],
    texts: dict[str, str],
    arms: list[str],
    fold_of: dict[str, int],
    seed: int,
    all_rows: list[Row],
) -> dict[str, dict[str, float]]:
    """Out-of-fold predicted tokens/s per prompt and arm (the router trained on the other folds;
    ``fold_of``: :func:`router.training.prompt_folds` of every prompt in ``all_rows``)."""
    encoder = load_encoder("none")
    ids = sorted({r.prompt_id for r in all_rows})
    vectors = {i: prompt_vector(encoder, texts[i]) for i in ids}
    names = feature_names(encoder)
    out: dict[str, dict[str, float]] = {}
    for fold in sorted(set(fold_of.values())):
        train_rows = [r for r in all_rows if fold_of[r.prompt_id] != fold and r.arm in arms]
        train_ids = sorted({r.prompt_id for r in train_rows})
        model, _ = train(
            train_rows,
            {i: vectors[i] for i in train_ids},
            {i: len(texts[i]) / 1000 for i in train_ids},
            encoder.name,
            names,
            seed=seed,
        )
        for pid in rows:
            if fold_of[pid] != fold:
                continue
            x = model.standardise(vectors[pid])
            preds = model.predict(x, len(texts[pid]) / 1000, None, [(a, 1.0, 1.0, 1.0) for a in arms])
            out[pid] = {a: preds[a].tokens_per_s for a in arms}
    return out


def throughput_ci(
    tokens: np.ndarray, seconds: np.ndarray, groups: np.ndarray, replicates: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratio-of-sums throughput per rule (rows) with percentile CIs, resampling source items."""
    point = tokens.sum(axis=1) / seconds.sum(axis=1)
    reps = []
    for counts in resample_counts(tokens.shape[1], replicates, seed, groups):
        reps.append((counts @ tokens.T) / (counts @ seconds.T))
    allr = np.vstack(reps)
    low, high = np.percentile(allr, [2.5, 97.5], axis=0)
    return point, low, high


def ratio_ci(
    tokens: np.ndarray, seconds: np.ndarray, a: int, b: int, groups: np.ndarray, replicates: int, seed: int
) -> tuple[float, float, float]:
    """Throughput of rule ``a`` ÷ rule ``b``, paired over the same resampled items."""
    point = (tokens[a].sum() / seconds[a].sum()) / (tokens[b].sum() / seconds[b].sum())
    reps = []
    for counts in resample_counts(tokens.shape[1], replicates, seed, groups):
        ta, sa = counts @ tokens[a], counts @ seconds[a]
        tb, sb = counts @ tokens[b], counts @ seconds[b]
        reps.append((ta / sa) / (tb / sb))
    low, high = np.percentile(np.concatenate(reps), [2.5, 97.5])
    return float(point), float(low), float(high)


def family_rule(tokens: np.ndarray, measured: np.ndarray, tasks: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """The task-rule baseline, out of fold: each prompt gets the arm whose throughput (ratio of sums)
    was highest on the *other* folds' prompts of its task family. It is told the true family, which
    the router is not (the router sees only the prompt)."""
    seconds = tokens / measured
    choice = np.zeros(len(tasks), dtype=int)
    for f in np.unique(folds):
        for t in np.unique(tasks):
            train = (folds != f) & (tasks == t)
            test = (folds == f) & (tasks == t)
            if test.any() and train.any():
                choice[test] = int(np.argmax(tokens[train].sum(axis=0) / seconds[train].sum(axis=0)))
    return choice


def analyse(
    rows: dict[str, dict[str, Row]],
    preds: dict[str, dict[str, float]],
    arms: list[str],
    replicates: int,
    seed: int,
    folds: dict[str, int] | None = None,
) -> dict[str, Any]:
    pids = sorted(p for p in rows if p in preds)
    measured = np.array([[rows[p][a].decode_tps or 0.0 for a in arms] for p in pids])
    tokens_arm = np.array([[rows[p][a].output_tokens - 1 for a in arms] for p in pids], dtype=float)
    predicted = np.array([[preds[p][a] for a in arms] for p in pids])
    choice = np.argmax(predicted, axis=1)
    oracle = np.argmax(measured, axis=1)
    idx = np.arange(len(pids))
    tasks = np.array([rows[p][arms[0]].task for p in pids])
    rules = {f"fixed:{a}": np.full(len(pids), j) for j, a in enumerate(arms)}
    if folds is not None:
        rules["family rule"] = family_rule(tokens_arm, measured, tasks, np.array([folds[p] for p in pids]))
    rules["router"] = choice
    rules["oracle"] = oracle
    names = list(rules)
    tok = np.stack([tokens_arm[idx, rules[n]] for n in names])
    sec = np.stack([tokens_arm[idx, rules[n]] / measured[idx, rules[n]] for n in names])
    group_ids = {g: i for i, g in enumerate(sorted({group_of(p) for p in pids}))}
    groups = np.array([group_ids[group_of(p)] for p in pids])
    slices = {"all": np.ones(len(pids), bool), "copy/edit": np.isin(tasks, COPY_TASKS)}
    slices["free text"] = ~slices["copy/edit"]
    report: dict[str, Any] = {"arms": arms, "prompts": len(pids), "slices": {}}
    for label, mask in slices.items():
        if not mask.any():
            continue
        g = np.unique(groups[mask], return_inverse=True)[1]
        point, low, high = throughput_ci(tok[:, mask], sec[:, mask], g, replicates, seed)
        fixed = [i for i, n in enumerate(names) if n.startswith("fixed:")]
        best = max(fixed, key=lambda i: point[i])
        router = names.index("router")
        entry: dict[str, Any] = {
            "prompts": int(mask.sum()),
            "tokens_per_s": {n: [float(point[i]), float(low[i]), float(high[i])] for i, n in enumerate(names)},
            "share": {a: float(np.mean(choice[mask] == j)) for j, a in enumerate(arms)},
            "router_vs_best_fixed": [
                names[best],
                *ratio_ci(tok[:, mask], sec[:, mask], router, best, g, replicates, seed),
            ],
            "router_vs_plain": list(ratio_ci(tok[:, mask], sec[:, mask], router, 0, g, replicates, seed)),
        }
        if "family rule" in names:
            rule = names.index("family rule")
            t, s = tok[:, mask], sec[:, mask]
            entry["family_rule_vs_best_fixed"] = list(ratio_ci(t, s, rule, best, g, replicates, seed))
            entry["router_vs_family_rule"] = list(ratio_ci(t, s, router, rule, g, replicates, seed))
        report["slices"][label] = entry
    speedups = {}
    for j, a in enumerate(arms[1:], 1):
        m, p = np.log(measured[:, j] / measured[:, 0]), np.log(predicted[:, j] / predicted[:, 0])
        speedups[a] = {
            "log_correlation": float(np.corrcoef(m, p)[0, 1]) if np.std(p) > 0 else None,
            "measured_slower": int((m < 0).sum()),
            "predicted_slower": int((p < 0).sum()),
            "both_slower": int(((m < 0) & (p < 0)).sum()),
            "median_measured": float(np.exp(np.median(m))),
            "median_predicted": float(np.exp(np.median(p))),
            "by_task": {
                t: {
                    "measured": float(np.exp(np.median(m[tasks == t]))),
                    "predicted": float(np.exp(np.median(p[tasks == t]))),
                }
                for t in sorted(set(tasks))
            },
        }
    report["speedup_vs_" + arms[0]] = speedups
    return report


CHART_LINK = "![measured vs predicted speed-up of speculation, per task family](strategy-choice.png)"


def markdown(report: dict[str, Any]) -> str:
    arms = report["arms"]
    out = [f"Prompts profiled on every strategy: {report['prompts']}", ""]
    out.append(
        "| slice | prompts | "
        + " | ".join(report["slices"]["all"]["tokens_per_s"])
        + " | router ÷ best fixed | router ÷ plain |"
    )
    out.append("|---" * (len(report["slices"]["all"]["tokens_per_s"]) + 4) + "|")
    for label, s in report["slices"].items():
        cells = [f"{v[0]:.1f} [{v[1]:.1f}, {v[2]:.1f}]" for v in s["tokens_per_s"].values()]
        b = s["router_vs_best_fixed"]
        p = s["router_vs_plain"]
        out.append(
            f"| {label} | {s['prompts']} | "
            + " | ".join(cells)
            + f" | {b[1]:.3f} [{b[2]:.3f}, {b[3]:.3f}] vs {b[0].removeprefix('fixed:')}"
            + f" | {p[0]:.3f} [{p[1]:.3f}, {p[2]:.3f}] |"
        )
    out.append("")
    for label, s in report["slices"].items():
        if "router_vs_family_rule" in s:
            r, f = s["router_vs_family_rule"], s["family_rule_vs_best_fixed"]
            out.append(
                f"- {label}: family rule ÷ best fixed {f[0]:.3f} [{f[1]:.3f}, {f[2]:.3f}]; "
                f"router ÷ family rule {r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]"
            )
    noise = report.get("noise_oracle")
    if noise:
        out.append(
            f"- Measurement noise alone: {noise['arms']} arms identical to `{noise['arm']}`, each measured once "
            f"(per-prompt noise from two runs of it, {noise['prompts']} prompts, log-speed sd between runs "
            f"{noise['log_sd_between_runs']:.3f}), give an oracle {noise['gain'][0]:.3f}x "
            f"[{noise['gain'][1]:.3f}, {noise['gain'][2]:.3f}] a fixed arm's throughput."
        )
    out.append("")
    for a, s in report["speedup_vs_" + arms[0]].items():
        out.append(
            f"{a} over {arms[0]}: median speed-up measured {s['median_measured']:.2f}x, predicted "
            f"{s['median_predicted']:.2f}x; log correlation {s['log_correlation']}; slower on "
            f"{s['measured_slower']} prompts measured, {s['predicted_slower']} predicted ({s['both_slower']} both)"
        )
        out.append("")
        out.append("| task | measured | predicted |")
        out.append("|---|---|---|")
        for t, v in s["by_task"].items():
            out.append(f"| {t} | {v['measured']:.2f}x | {v['predicted']:.2f}x |")
    return "\n".join(out) + "\n"


def chart(report: dict[str, Any], path: Path) -> bool:
    """Measured vs predicted median speed-up over plain, per task family, one panel per strategy arm."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    speedups = report["speedup_vs_" + report["arms"][0]]
    fig, axes = plt.subplots(1, len(speedups), figsize=(7 * len(speedups), 4.2), squeeze=False)
    for ax, (arm, s) in zip(axes[0], speedups.items(), strict=True):
        tasks = list(s["by_task"])
        x = np.arange(len(tasks))
        ax.bar(x - 0.2, [s["by_task"][t]["measured"] for t in tasks], 0.4, label="measured (median)")
        ax.bar(x + 0.2, [s["by_task"][t]["predicted"] for t in tasks], 0.4, label="predicted out of fold")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(x, tasks, rotation=20)
        ax.set_ylabel(f"decode speed-up over {report['arms'][0]}")
        ax.set_title(arm)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", required=True)
    ap.add_argument("--arms", required=True, help="one model's strategy arms, plain first")
    ap.add_argument("--out", required=True, help="directory for strategy-choice.{json,md}")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replicates", type=int, default=2000)
    ap.add_argument(
        "--repeat",
        nargs="+",
        help="a second, independent profile run of the first (plain) arm: estimates how much of the "
        "oracle's headroom is measurement noise",
    )
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    rows, texts = load(args.profiles, arms)
    all_rows = [r for p in rows.values() for r in p.values() if r.arm in arms]
    folds = prompt_folds(sorted({r.prompt_id for r in all_rows}), args.folds, args.seed)
    preds = predicted_speeds(rows, texts, arms, folds, args.seed, all_rows)
    report = analyse(rows, preds, arms, args.replicates, args.seed, folds)
    if args.repeat:
        report["noise_oracle"] = noise_oracle(rows, profiles.load(args.repeat).rows, arms[0], len(arms), args.seed)
    report["command"] = "python -m loadtests.strategy_choice " + " ".join(argv or sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "strategy-choice.json").write_text(json.dumps(report, indent=2) + "\n")
    drawn = chart(report, out / "strategy-choice.png")
    text = (CHART_LINK + "\n\n" if drawn else "") + markdown(report)  # the report shows its chart first
    (out / "strategy-choice.md").write_text(text)
    print(text)
    if drawn:
        print(f"chart: {out / 'strategy-choice.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
