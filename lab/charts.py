"""The evaluation charts (matplotlib, extra ``[lab]``): the accuracy/latency Pareto front and the
reliability diagram. Without matplotlib no chart is drawn and the functions return ``False``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


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


def pareto_chart(result: dict[str, Any], path: Path, title: str) -> bool:
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


def reliability_chart(result: dict[str, Any], path: Path, title: str) -> bool:
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
