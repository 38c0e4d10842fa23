"""``llm-gateway train`` and ``llm-gateway evaluate``: the offline side of the learned router.

These commands run on a workstation or in CI, never in the serving path. They read profile
JSONL written by ``llm-gateway profile``, embed the prompts with the same encoder the gateway
uses, and write an artifact (``train``) or a report with a Pareto chart (``evaluate``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
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

    if not args.profiles and not args.from_log:
        print("llm-gateway: train needs --profiles, --from-log or both", file=sys.stderr)
        return 2
    if args.feedback and not args.from_log:
        print("llm-gateway: --feedback is joined to a decision log: give --from-log too", file=sys.stderr)
        return 2
    rows, texts, data_hash = _read_profiles(args.profiles) if args.profiles else ([], {}, None)
    train_rows = [r for r in rows if r.split == "train"]
    kchars = {r.prompt_id: len(texts[r.prompt_id]) / 1000 for r in train_rows}
    given: dict[str, np.ndarray] = {}
    weights = log_meta = None
    if args.from_log:
        from gateway.traffic import training_traffic

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
    vectors, encoder, names = _vectors([i for i in ids if i not in given], texts, args.encoder)
    vectors.update(given)
    model, report = train(
        train_rows, vectors, kchars, encoder, names, seed=args.seed, folds=args.folds, weights=weights
    )
    meta = {
        "arms": sorted(model.arms),
        "encoder": encoder,
        "profiles": [str(p) for p in args.profiles or ()],
        "profiles_sha256": data_hash,
        "decision_log": log_meta,
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
        auc += "" if r.get("quality_head", "logistic") == "logistic" else f" ({r['quality_head']})"
        acc = f"{r['accuracy']:.2f}" if r["accuracy"] is not None else "-"
        print(
            f"{arm:28} {r['rows']:>5} {acc:>6} {ll:>16} {auc:>5} "
            f"{r['length_mae_log']:.2f} ({r['length_base_mae_log']:.2f}){'':>7} {r['median_tokens_per_s']:>6.1f}"
        )
    cal = report["calibration"]
    print(f"balanced weight {cal.get('balanced_weight')}, accuracy levels {cal.get('accuracy_levels')}")
    return 0


def _dumps(value: Any, indent: int = 0) -> str:
    """JSON with two-space indentation, but lists of scalars (per-prompt data) on one line each."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(f"{inner}{_dumps(v, indent + 2)}" for v in value) + f"\n{pad}]"
    return json.dumps(value, allow_nan=False)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _share(x: float) -> str:
    return "<1%" if x < 0.005 else f"{x * 100:.0f}%"


def _pct_ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]"


def _pts_ci(x: float | None, ci: list[float] | None) -> str:
    """A difference in percentage points with its interval."""
    if x is None:
        return "-"
    return f"{x * 100:+.1f}" + ("" if ci is None else f" [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]")


def _s_ci(x: float | None, ci: list[float] | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    f = "+.2f" if signed else ".2f"
    return f"{x:{f}}" + ("" if ci is None else f" [{ci[0]:{f}}, {ci[1]:{f}}]")


def _markdown(result: dict[str, Any], title: str) -> str:
    """The report's tables: points, differences to the baselines, budget compliance, reliability, slices."""
    boot = result["bootstrap"]
    by_name = {pt["name"]: pt for pt in result["points"]}
    lines = [
        f"# {title}",
        "",
        f"{result['prompts']} prompts ({result['labelled_prompts']} labelled: accuracy counts those only; "
        f"latency and compliance count all). Intervals: {boot['level'] * 100:.0f} % paired bootstrap over the "
        f"{boot.get('clusters', result['prompts'])} source items (prompts made from one item are drawn together), "
        f"B = {boot['replicates']}, seed {boot['seed']}."
        + (f" {result['folds']}-fold cross-validation, folds pooled per prompt." if "folds" in result else ""),
        "",
        "## Points",
        "",
        "| rule | accuracy [95 % CI] | mean latency s [95 % CI] | p90 latency s | gap recovered | arm share |",
        "|---|---|---|---|---|---|",
    ]
    for pt in result["points"]:
        if pt["kind"] not in ("fixed", "random", "oracle", "router") or (pt["kind"] == "oracle" and pt["setting"]):
            continue
        gap = "" if pt["gap_recovered"] is None else f"{pt['gap_recovered'] * 100:.0f}%"
        share = ", ".join(f"{a} {_share(v)}" for a, v in pt["share"].items())
        p90 = "-" if pt["latency_p90_s"] is None else f"{pt['latency_p90_s']:.2f}"
        lines.append(
            f"| {pt['name']} | {_pct(pt['accuracy'])}{_pct_ci(pt['accuracy_ci'])} | "
            f"{_s_ci(pt['latency_s'], pt['latency_ci'])} | {p90} | {gap} | {share} |"
        )
    lines += [
        "",
        "## Router minus baseline",
        "",
        "Paired per prompt; positive accuracy = the router is more accurate, positive latency = the router is slower. "
        "`mix`: random mixing at the router's arm shares (exact expectation); `task-rule` and `knn`: fitted on the "
        "training prompts, deciding with the setting's rule.",
        "",
        "| setting | baseline | baseline accuracy | Δ accuracy, points [95 % CI] | baseline latency s "
        "| Δ latency s [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for d in result["differences"]:
        base = by_name[d["baseline"]]
        lines.append(
            f"| {d['setting']} | {d['baseline']} | {_pct(base['accuracy'])} "
            f"| {_pts_ci(d['accuracy'], d['accuracy_ci'])} "
            f"| {_s_ci(base['latency_s'], None)} | {_s_ci(d['latency_s'], d['latency_ci'], signed=True)} |"
        )
    if result["compliance"]:
        lines += [
            "",
            "## Latency budgets",
            "",
            "Compliance: share of requests whose actual end-to-end latency is within the budget, over all prompts "
            "and over the feasible ones (some arm actually fits). Infeasible: no arm fits. Reported: share of the "
            "infeasible prompts the rule called `budget-unmeetable`; false alarms: share of the feasible ones it did "
            "(rules that decide through the policy only).",
            "",
            "| setting | budget s | infeasible | rule | compliance, all [95 % CI] | compliance, feasible [95 % CI] "
            "| reported | false alarms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in result["compliance"]:
            for i, r in enumerate(c["rules"]):
                head = (
                    f"| {c['setting']} | {c['budget_s']:g} | {_pct(c['infeasible_share'])} ({c['infeasible_prompts']}) "
                    if i == 0
                    else "| | | "
                )
                lines.append(
                    f"{head}| {r['rule']} | {_pct(r['all'])}{_pct_ci(r['all_ci'])} "
                    f"| {_pct(r['feasible'])}{_pct_ci(r['feasible_ci'])} "
                    f"| {_pct(r.get('infeasible_reported'))} | {_pct(r.get('unmeetable_on_feasible'))} |"
                )
    rel = result.get("reliability")
    if rel:
        lines += [
            "",
            "## Reliability of the predicted quality",
            "",
            "Every arm's predicted P(correct) on every labelled prompt, in 10 bins; calibrated: |realised - predicted| "
            "≤ 5 points, judged for bins with ≥ 30 predictions.",
            "",
            "| bin | predictions | mean predicted | realised | calibrated |",
            "|---|---|---|---|---|",
        ]
        for b in rel["all_arms"]["bins"]:
            ok = {True: "yes", False: "no", None: "-"}[b["within_tolerance"]]
            lines.append(
                f"| {b['low']:.1f}-{b['high']:.1f} | {b['count']} | {_pct(b['mean_predicted'])} "
                f"| {_pct(b['realised'])} | {ok} |"
            )
        lines += ["", "| predictions of | n | mean predicted | realised | ECE | Brier |", "|---|---|---|---|---|---|"]
        groups = {
            "all arms": rel["all_arms"],
            **rel["per_arm"],
            **{f"chosen, {k}": v for k, v in rel["chosen"].items()},
        }
        for name, g in groups.items():
            ece = "-" if g["ece"] is None else f"{g['ece'] * 100:.1f} pts"
            brier = "-" if g["brier"] is None else f"{g['brier']:.3f}"
            lines.append(
                f"| {name} | {g['prompts']} | {_pct(g['mean_predicted'])} | {_pct(g['realised'])} | {ece} | {brier} |"
            )
    ratio = result.get("latency_ratio")
    if ratio:
        lines += [
            "",
            "## Actual / predicted latency",
            "",
            "Quantiles of actual / predicted end-to-end seconds per prompt; bound coverage: share of prompts whose "
            "actual latency stayed within the bound the policy checks budgets against.",
            "",
            "| arm | n | p10 | p50 | p90 | bound coverage |",
            "|---|---|---|---|---|---|",
        ]
        for arm, q in ratio.items():
            if q["prompts"]:
                lines.append(
                    f"| {arm} | {q['prompts']} | {q['p10']:.2f} | {q['p50']:.2f} | {q['p90']:.2f} "
                    f"| {_pct(q.get('bound_coverage'))} |"
                )
    if result["slices"]:
        names = list(next(iter(result["slices"].values()))["rules"])
        lines += ["", "## Per task (accuracy, mean latency s)", "", "| task | n | " + " | ".join(names) + " |"]
        lines.append("|---|---|" + "---|" * len(names))
        for task, sl in result["slices"].items():
            cells = [f"{_pct(v['accuracy'])}, {v['latency_s']:.2f}" for v in sl["rules"].values()]
            lines.append(f"| {task} | {sl['prompts']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


CHART_BASELINES = ("router:quality", "router:default", "router:speed")


def _short(name: str) -> str:
    """A chart label: ``router:quality,max_latency_ms=2000`` -> ``quality,<=2s``, ``fixed:arm`` -> ``arm``."""
    label = name.split(":", 1)[1] if ":" in name else name
    return re.sub(r"max_latency_ms=(\d+)", lambda m: f"<={int(m.group(1)) / 1000:g}s", label)


def _chart(result: dict[str, Any], path: Path, title: str) -> bool:
    """Pareto chart: accuracy vs mean latency with 95 % interval bars, router settings and baselines."""
    plt = _plt()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(9, 6))
    styles = {
        "fixed": ("s", "tab:blue", "fixed arm"),
        "random": ("x", "tab:gray", "uniform random"),
        "oracle": ("*", "tab:green", "oracle"),
        "router": ("o", "tab:red", "router"),
        "task-rule": ("^", "tab:purple", "task rule"),
        "knn": ("D", "tab:orange", "kNN (k=10)"),
    }
    labelled: set[str] = set()
    notes: dict[tuple[float, float, str], list[str]] = {}  # one label per spot: identical points share it
    compare = {s["name"] for s in result["settings"] if s["compare"]}
    for pt in result["points"]:
        kind, name = pt["kind"], pt["name"]
        if pt["accuracy"] is None or kind not in styles:
            continue
        if kind == "oracle" and pt["setting"]:
            continue
        if kind in ("task-rule", "knn") and pt["setting"] not in CHART_BASELINES:
            continue
        if kind == "router" and name not in compare:
            continue
        marker, color, legend = styles[kind]
        x, y = pt["latency_s"], pt["accuracy"] * 100
        lat_ci, acc_ci = pt["latency_ci"], pt["accuracy_ci"]
        xerr = None if lat_ci is None else [[x - lat_ci[0]], [lat_ci[1] - x]]
        yerr = None if acc_ci is None else [[y - acc_ci[0] * 100], [acc_ci[1] * 100 - y]]
        ax.errorbar(
            x,
            y,
            xerr=xerr,
            yerr=yerr,
            fmt=marker,
            color=color,
            ms=7 if kind != "oracle" else 11,
            elinewidth=0.7,
            capsize=2,
            alpha=0.85,
            label=None if legend in labelled else legend,
        )
        labelled.add(legend)
        notes.setdefault((round(x, 2), round(y, 1), color), []).append(_short(name))
    for (x, y, color), texts in notes.items():
        ax.annotate(" = ".join(texts), (x, y), fontsize=6.5, xytext=(4, 3), textcoords="offset points", color=color)
    sweep = sorted(
        (
            p
            for p in result["points"]
            if p["kind"] == "router" and p["name"] not in compare and p["accuracy"] is not None
        ),
        key=lambda p: p["latency_s"],
    )
    if sweep:
        ax.plot(
            [p["latency_s"] for p in sweep],
            [p["accuracy"] * 100 for p in sweep],
            color="tab:red",
            alpha=0.4,
            label="router, balanced weight sweep",
        )
    ax.set_xlabel("mean end-to-end latency (s), all prompts")
    ax.set_ylabel("accuracy (%), labelled prompts")
    ax.set_title(f"{title}: router vs baselines (95 % paired bootstrap CIs)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _reliability_chart(result: dict[str, Any], path: Path, title: str) -> bool:
    """Reliability diagram of the predicted quality (every arm) and actual / predicted latency per arm."""
    rel, ratio = result.get("reliability"), result.get("latency_ratio")
    plt = _plt()
    if plt is None or not rel or not ratio:
        return False
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    ax.plot([0, 100], [0, 100], color="black", lw=0.8, label="perfect")
    ax.fill_between([0, 100], [-5, 95], [5, 105], color="gray", alpha=0.15, label="± 5 points")
    for name, g in [("all arms", rel["all_arms"]), *rel["per_arm"].items()]:
        bins = [b for b in g["bins"] if b["count"]]
        xs = [b["mean_predicted"] * 100 for b in bins]
        ys = [b["realised"] * 100 for b in bins]
        if name == "all arms":
            sizes = [max(10.0, 200 * b["count"] / max(g["prompts"], 1)) for b in bins]
            ax.scatter(xs, ys, s=sizes, color="black", zorder=3, label="all arms (size: count)")
            for b, x, y in zip(bins, xs, ys, strict=True):
                ax.annotate(str(b["count"]), (x, y), fontsize=7, xytext=(4, -9), textcoords="offset points")
        else:
            ax.plot(xs, ys, marker=".", alpha=0.7, label=name)
    top = max([5.0] + [b["mean_predicted"] * 100 + 5 for b in rel["all_arms"]["bins"] if b["count"]])
    top = max(top, *[b["realised"] * 100 + 5 for b in rel["all_arms"]["bins"] if b["count"]])
    ax.set_xlim(0, min(100, top))
    ax.set_ylim(0, min(100, top))
    ax.set_xlabel("predicted P(correct) (%)")
    ax.set_ylabel("realised accuracy (%)")
    ax.set_title("predicted quality, 10 bins", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    arms = [a for a, q in ratio.items() if q["prompts"]]
    for i, arm in enumerate(arms):
        q = ratio[arm]
        bx.plot([q["p10"], q["p90"]], [i, i], color="tab:blue", lw=3, alpha=0.6)
        bx.plot([q["p50"]], [i], "o", color="tab:blue")
    bx.axvline(1.0, color="black", lw=0.8)
    bx.set_yticks(range(len(arms)), arms, fontsize=8)
    bx.set_xlim(0, max(2.0, *[ratio[a]["p90"] * 1.1 for a in arms]))
    bx.set_xlabel("actual / predicted latency (p10, p50, p90)")
    bx.set_title("latency forecast", fontsize=10)
    bx.grid(alpha=0.3, axis="x")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _arm_specs(paths: list[str]) -> dict[str, Any]:
    """Each profiled arm's public model and strategy, from the rows' ``model`` and ``strategy`` fields
    (the last row of an arm wins; an arm whose label no strategy writes is left out)."""
    from router.decision import Arm
    from router.strategy import StrategyError, strategy_from_label

    seen: dict[str, tuple[str, str]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("model") and r.get("strategy"):
                    seen[r["arm"]] = (r["model"], r["strategy"])
    out = {}
    for arm, (model, label) in seen.items():
        try:
            out[arm] = Arm(name=arm, model=model, strategy=strategy_from_label(label))
        except StrategyError:
            continue
    return out


def _cross_validated(
    rows: list[Any], texts: dict[str, str], k: int, seed: int, kind: str, specs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Evaluate on every profiled prompt: K folds grouped by prompt, each scored by a router trained
    (with :func:`router.training.train`, as ``llm-gateway train`` does, with encoder ``kind``) on the
    others; the task rule and kNN baselines are fitted on the same training folds. The folds'
    per-prompt outcomes are pooled before the bootstrap (:func:`router.evaluation.pool`)."""
    from router.evaluation import REPLICATES, evaluate, pool
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

        def features(pids: set[str], model: Any = model) -> dict[str, Any]:
            return {p: (model.standardise(vectors[p]), len(texts[p]) / 1000) for p in pids}

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
    """``{stem}.json`` (everything, per-prompt data included), ``{stem}.md`` (the tables), ``{stem}.png``
    (Pareto chart) and ``{stem}-reliability.png``."""
    (out / f"{stem}.json").write_text(_dumps(result) + "\n")
    report = _markdown(result, title)
    (out / f"{stem}.md").write_text(report)
    points = report.split("## Router minus baseline")[0]
    print(points.rstrip())
    print(f"report: {out / (stem + '.md')}")
    if _chart(result, out / f"{stem}.png", title):
        print(f"chart: {out / (stem + '.png')}")
        if _reliability_chart(result, out / f"{stem}-reliability.png", title):
            print(f"reliability diagram: {out / (stem + '-reliability.png')}")
    else:
        print("matplotlib not installed: no charts (pip install matplotlib)")


def evaluate_command(args: argparse.Namespace) -> int:
    from router.encoder import encoder_kind
    from router.evaluation import evaluate
    from router.learned import LearnedPolicy

    rows, texts, _ = _read_profiles(args.profiles)
    policy = LearnedPolicy(artifact=args.artifact)
    arms = sorted(policy.model.arms)
    test_rows = [r for r in rows if r.split == "test" and r.arm in arms]
    train_rows = [r for r in rows if r.split == "train" and r.arm in arms]
    ids = sorted({r.prompt_id for r in test_rows})
    train_ids = sorted({r.prompt_id for r in train_rows})
    features: dict[str, Any] = {}
    timings: list[float] = []
    started = time.monotonic()
    for n, pid in enumerate(ids, 1):
        t0 = time.perf_counter()
        features[pid] = policy.featurize(texts[pid])
        timings.append(time.perf_counter() - t0)
        _progress(n, len(ids), "embedding", started)
    train_features: dict[str, Any] = {}
    started = time.monotonic()
    for n, pid in enumerate(train_ids, 1):
        train_features[pid] = policy.featurize(texts[pid])
        _progress(n, len(train_ids), "embedding (train split, for the baselines)", started)
    specs = _arm_specs(args.profiles)
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
        cv = _cross_validated([r for r in rows if r.arm in arms], texts, args.cv, args.seed, kind, specs)
        _write_evaluation(cv, out, "evaluation-cv", f"{args.cv}-fold cross-validation (n={cv['prompts']})")
    return 0
