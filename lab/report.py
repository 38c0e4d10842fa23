"""The evaluation report: ``evaluation.json`` (everything) and the Markdown tables of ``evaluation.md``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def dumps(value: Any, indent: int = 0) -> str:
    """JSON with two-space indentation, but lists of scalars (per-prompt data) on one line each."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(f"{inner}{dumps(v, indent + 2)}" for v in value) + f"\n{pad}]"
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


def _points(result: dict[str, Any], title: str) -> list[str]:
    """The title, the bootstrap's description and every rule's point."""
    boot = result["bootstrap"]
    lines: list[str] = []
    lines += [
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
    return lines


def _differences(result: dict[str, Any]) -> list[str]:
    """Router minus each baseline, paired per prompt."""
    by_name = {pt["name"]: pt for pt in result["points"]}
    lines: list[str] = []
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
    return lines


def _compliance(result: dict[str, Any]) -> list[str]:
    """Latency-budget compliance per setting and rule."""
    lines: list[str] = []
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
    return lines


def _reliability(result: dict[str, Any]) -> list[str]:
    """Binned reliability of the predicted quality, and per-arm calibration errors."""
    lines: list[str] = []
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
    return lines


def _latency_ratio(result: dict[str, Any]) -> list[str]:
    """Actual / predicted latency quantiles and bound coverage per arm."""
    lines: list[str] = []
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
    return lines


def _slices(result: dict[str, Any]) -> list[str]:
    """Accuracy and latency per task."""
    lines: list[str] = []
    if result["slices"]:
        names = list(next(iter(result["slices"].values()))["rules"])
        lines += ["", "## Per task (accuracy, mean latency s)", "", "| task | n | " + " | ".join(names) + " |"]
        lines.append("|---|---|" + "---|" * len(names))
        for task, sl in result["slices"].items():
            cells = [f"{_pct(v['accuracy'])}, {v['latency_s']:.2f}" for v in sl["rules"].values()]
            lines.append(f"| {task} | {sl['prompts']} | " + " | ".join(cells) + " |")
    return lines


CHART_ALT = {
    "": "accuracy against mean latency of every rule, with 95 % intervals (Pareto chart)",
    "-reliability": "reliability diagram: predicted against realised quality, and actual / predicted latency",
}


def chart_links(stem: str, charts: Sequence[str]) -> list[str]:
    """Markdown image lines for the chart files ``charts`` drawn beside ``{stem}.md``."""
    lines: list[str] = []
    for name in charts:
        alt = CHART_ALT.get(name.removeprefix(stem).removesuffix(".png"), "chart")
        lines += [f"![{alt}]({name})", ""]
    return lines


def markdown(result: dict[str, Any], title: str, charts: Sequence[str] = (), stem: str = "evaluation") -> str:
    """The report's tables: points, differences to the baselines, budget compliance, reliability, slices;
    ``charts``: the PNG files drawn beside it (``{stem}.png``, ``{stem}-reliability.png``), shown before the tables."""
    sections = (_differences, _compliance, _reliability, _latency_ratio, _slices)
    lines = _points(result, title)
    at = lines.index("## Points")
    lines[at:at] = chart_links(stem, charts)
    lines += [line for section in sections for line in section(result)]
    return "\n".join(lines) + "\n"
