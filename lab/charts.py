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
    legend = ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    place_labels(ax, [(x, y, color, " = ".join(texts)) for (x, y, color), texts in notes.items()], avoid=[legend])
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def place_labels(ax: Any, labels: list[tuple[float, float, str, str]], avoid: list[Any] = ()) -> list[Any]:  # type: ignore[assignment]
    """Label points ``(x, y, color, text)`` without overlaps: points closer than :data:`GROUP_PX` share one
    block (a line per label, in its colour), and each block goes to the first nearby spot where it overlaps
    no other block, no marker and nothing in ``avoid`` (the legend), with a leader line when it had to move
    away from its points. Call it last, after the layout is final. Returns the placed blocks."""
    from matplotlib.offsetbox import AnnotationBbox, TextArea, VPacker

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    half = MARKER_PT * fig.dpi / 72.0
    markers = [_box(to_px((x, y)), half) for x, y, _, _ in labels]
    blocked = [a.get_window_extent(renderer) for a in avoid]
    inside = ax.get_window_extent(renderer)
    placed: list[Any] = []
    # the biggest blocks first, while there is room near their points; single labels fit in smaller gaps
    for group in sorted(_groups(labels, to_px), key=len, reverse=True):
        lines = sorted(group, key=lambda g: (-g[1], g[0]))
        anchor = (sum(g[0] for g in group) / len(group), sum(g[1] for g in group) / len(group))
        others = markers + blocked + [text_extent(p, renderer) for p in placed]

        def block(offset: tuple[float, float], leader: bool, lines: list[Any] = lines, anchor: Any = anchor) -> Any:
            texts: list[Any] = [TextArea(_wrap(t), textprops={"color": c, "fontsize": 6.5}) for _, _, c, t in lines]
            return AnnotationBbox(
                VPacker(children=texts, align="left", pad=0, sep=1),
                anchor,
                xybox=offset,
                xycoords="data",
                boxcoords="offset points",
                box_alignment=(0.0 if offset[0] >= 0 else 1.0, 0.0 if offset[1] >= 0 else 1.0),
                frameon=False,
                pad=0.1,
                arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.5} if leader else None,
            )

        best: tuple[float, tuple[float, float], bool] | None = None
        for offset, leader in _candidates():
            candidate = ax.add_artist(block(offset, False))
            extent = text_extent(candidate, renderer)
            candidate.remove()
            clash = sum(_overlap(extent, o.padded(1.0)) for o in others)
            if not (inside.contains(extent.x0, extent.y0) and inside.contains(extent.x1, extent.y1)):
                clash += extent.width * extent.height  # off the axes: worse than any overlap with one label
            if best is None or clash < best[0]:
                best = (clash, offset, leader)
            if clash == 0:
                break
        assert best is not None
        placed.append(ax.add_artist(block(best[1], best[2])))  # no free spot at all: the least overlap
    return placed


GROUP_PX = 14.0  # points this close (pixels) share a label block
MARKER_PT = 5.5  # half-size (points) of the box a marker keeps free of labels


def _wrap(text: str, width: int = 34) -> str:
    """``a = b = c`` (identical points) over several lines when it is long, breaking after an ``=``."""
    lines = [""]
    for part in text.split(" = "):
        if lines[-1] and len(lines[-1]) + 3 + len(part) > width:
            lines[-1] += " ="
            lines.append(part)
        else:
            lines[-1] = f"{lines[-1]} = {part}" if lines[-1] else part
    return "\n".join(lines)


def text_extent(block: Any, renderer: Any) -> Any:
    """The box (pixels) of a label block's text, its leader line left out (leaders may cross labels)."""
    block.get_window_extent(renderer)  # positions the text for this renderer
    return block.offsetbox.get_window_extent(renderer)


def _overlap(a: Any, b: Any) -> float:
    """Area (pixels²) two boxes share."""
    return float(max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0)))


def _box(center: Any, half: float) -> Any:
    """The square of half-side ``half`` around ``center`` (pixels)."""
    from matplotlib.transforms import Bbox

    x, y = center
    return Bbox.from_extents(x - half, y - half, x + half, y + half)


def _groups(labels: list[tuple[float, float, str, str]], to_px: Any) -> list[list[tuple[float, float, str, str]]]:
    """Single-linkage clusters of the labels whose points lie within GROUP_PX of each other on the chart."""
    pixels = [to_px((x, y)) for x, y, _, _ in labels]
    parent = list(range(len(labels)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, (xi, yi) in enumerate(pixels):
        for j in range(i):
            xj, yj = pixels[j]
            if (xi - xj) ** 2 + (yi - yj) ** 2 <= GROUP_PX**2:
                parent[root(i)] = root(j)
    groups: dict[int, list[tuple[float, float, str, str]]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(root(i), []).append(label)
    return list(groups.values())


def _candidates() -> Any:
    """Offsets (points) to try for a label block, nearest first: beside the point, then further out in eight
    directions (those with a leader line)."""
    for dx, dy in ((8.0, 1.0), (8.0, -1.0), (-8.0, 1.0), (-8.0, -1.0), (0.0, 8.0), (0.0, -8.0)):
        yield (dx, dy), False
    for r in (18.0, 30.0, 45.0, 60.0, 80.0, 105.0, 135.0, 170.0, 210.0):
        for dx, dy in ((1, 1), (1, 0), (1, -1), (0, 1), (0, -1), (-1, 1), (-1, 0), (-1, -1)):
            yield (dx * r, dy * r * 0.7), True


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
