"""Draw a preview picture of each Grafana dashboard from a live Prometheus, with matplotlib.

No Grafana server can run where the project is built and tested, so this is not a Grafana screenshot:
it lays the panels of ``dashboards/*.json`` out on their 24-column grid (``gridPos``) and fills each one
with what its PromQL returns from a real Prometheus over a time range.

- ``timeseries`` panels: every target is a range query; each returned series is a line, named by the
  target's ``legendFormat`` (``{{label}}`` substituted).
- ``stat`` panels: the last non-null value of each series (Grafana's ``lastNotNull``), as big text.
- ``row`` panels: a section heading.
- Panels repeated over a variable (``repeat: strategy``) are drawn once per value of the variable that
  Prometheus knows, side by side, as Grafana does with ``repeatDirection: h``.

Grafana's variables become what the e2e test uses: ``$__rate_interval`` → ``1m``, every dashboard
variable → ``.*`` (All), except the repeat variable of a repeated panel, which takes each value in turn.

    python deploy/grafana/preview.py --prometheus http://127.0.0.1:9090 --minutes 15 --out /tmp/preview

``tests/e2e/test_dashboards.py`` calls :func:`render_all` after its traffic; with
``DASHBOARD_PREVIEW_DIR=docs`` it writes ``docs/grafana-<name>.png``. Needs matplotlib (the ``lab``
extra) and httpx.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
DASHBOARDS = sorted((HERE / "dashboards").glob("*.json"))
SUBSTITUTES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#f2495c", "#8ab8ff", "#fade2a"]


@dataclass
class Series:
    """One line of a panel: its legend and its (unix time, value) points (NaN where Prometheus had none)."""

    legend: str
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def last(self) -> float | None:
        return next((v for v in reversed(self.values) if not math.isnan(v)), None)


def substitute(expr: str, fixed: dict[str, str] | None = None) -> str:
    """PromQL with Grafana's variables replaced: interval macros, ``fixed`` variables, the rest ``.*``."""
    for var, value in {**SUBSTITUTES, **{f"${k}": v for k, v in (fixed or {}).items()}}.items():
        expr = expr.replace(var, value).replace("${" + var[1:] + "}", value)
    return re.sub(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)\}?", ".*", expr)


def regex_literal(value: str) -> str:
    """``value`` as a regex matching only itself, written for a double-quoted PromQL string."""
    return "".join("\\\\" + c if c in ".*+?^$()[]{}|\\" else c for c in value)


def legend_of(fmt: str | None, labels: dict[str, str]) -> str:
    labels = {k: v for k, v in labels.items() if k != "__name__"}
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """The ``result`` of a Prometheus range query; raises on an HTTP or PromQL error."""
    resp = httpx.get(
        prometheus.rstrip("/") + "/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    )
    body = resp.json()
    if resp.status_code != 200 or body.get("status") != "success":
        raise RuntimeError(f"{expr}: {resp.status_code} {body}")
    return body["data"]["result"]  # type: ignore[no-any-return]


def label_values(prometheus: str, dashboard: dict[str, Any], name: str) -> list[str]:
    """Values of a dashboard variable, from its ``label_values(selector, label)`` query."""
    var = next(v for v in dashboard["templating"]["list"] if v["name"] == name)
    query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]+)\)", query)
    if not m:
        return []
    resp = httpx.get(
        prometheus.rstrip("/") + f"/api/v1/label/{m.group(2)}/values",
        params={"match[]": substitute(m.group(1))},
        timeout=30,
    )
    return sorted(resp.json().get("data", []))


def panel_series(prometheus: str, panel: dict[str, Any], start: float, end: float, step: float) -> list[Series]:
    fixed = panel.get("_fixed", {})
    out = []
    for target in panel.get("targets", []):
        for result in query_range(prometheus, substitute(target["expr"], fixed), start, end, step):
            s = Series(legend_of(target.get("legendFormat"), result["metric"]))
            for t, v in result["values"]:
                s.times.append(float(t))
                s.values.append(float(v))
            out.append(s)
    return out


def expand(prometheus: str, dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's panels with repeated panels copied once per variable value (laid out side by side)."""
    panels: list[dict[str, Any]] = []
    pushed: list[tuple[int, int]] = []  # (y of a repeated panel, rows its extra copies add below it)
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        pos = {**panel["gridPos"]}
        pos["y"] += sum(extra for y, extra in pushed if y < panel["gridPos"]["y"])
        var = panel.get("repeat")
        if not var:
            panels.append({**panel, "gridPos": pos})
            continue
        values = label_values(prometheus, dashboard, var) or [".*"]
        per_row = min(len(values), int(panel.get("maxPerRow", 4)))
        width = max(1, pos["w"] // per_row)
        for i, value in enumerate(values):
            copy = json.loads(json.dumps(panel))
            copy["_fixed"] = {var: regex_literal(value)}
            copy["title"] = panel["title"].replace(f"${var}", value).replace("${" + var + "}", value)
            copy["gridPos"] = {**pos, "x": pos["x"] + (i % per_row) * width, "w": width}
            copy["gridPos"]["y"] = pos["y"] + (i // per_row) * pos["h"]
            panels.append(copy)
        pushed.append((panel["gridPos"]["y"], (math.ceil(len(values) / per_row) - 1) * pos["h"]))
    return panels


def fmt_value(value: float, unit: str | None) -> str:
    if unit == "percentunit":
        return f"{value * 100:.3g} %"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
    if unit == "reqps":
        return f"{value:.3g} req/s"
    return f"{value:.3g}"


def _scale(unit: str | None) -> tuple[float, str]:
    return {"percentunit": (100.0, "%"), "s": (1.0, "s"), "reqps": (1.0, "req/s")}.get(unit or "", (1.0, ""))


def _draw_stat(ax: Any, series: list[Any], unit: str | None) -> None:
    """A stat panel: the last value of each series, in large type."""
    ax.set_xticks([])
    ax.set_yticks([])
    shown = [s for s in series if s.last() is not None]
    for i, s in enumerate(shown):
        y = (len(shown) - i - 0.5) / len(shown)
        label = "" if len(shown) == 1 else f"{s.legend[:40]}  "
        ax.text(
            0.5,
            y,
            label + fmt_value(s.last() or 0.0, unit),
            color=COLORS[i % len(COLORS)],
            fontsize=20 if len(shown) == 1 else 14,
            ha="center",
            va="center",
            weight="bold",
            transform=ax.transAxes,
        )


def draw(prometheus: str, dashboard: dict[str, Any], start: float, end: float, step: float, out: Path) -> list[str]:
    """Write the picture of one dashboard to ``out``; returns the titles of panels that got no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    panels = expand(prometheus, dashboard)
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.42
    fig = plt.figure(figsize=(22, height * unit_h + 1.2), facecolor=BACKGROUND)
    grid = fig.add_gridspec(height, 24, left=0.03, right=0.99, top=1 - 1.0 / (height * unit_h + 1.2), bottom=0.01)
    grid.update(wspace=1.6, hspace=1.2)
    span = dt.datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M:%S")
    fig.suptitle(
        f"{dashboard['title']} — drawn by deploy/grafana/preview.py from live Prometheus data "
        f"({span}, {int(end - start)} s; not a Grafana screenshot)",
        color=TEXT,
        fontsize=14,
        x=0.01,
        ha="left",
    )
    empty = []
    for panel in panels:
        g = panel["gridPos"]
        ax = fig.add_subplot(grid[g["y"] : g["y"] + g["h"], g["x"] : g["x"] + g["w"]])
        if panel["type"] == "row":
            ax.axis("off")
            ax.text(0, 0.5, panel["title"], color=TEXT, fontsize=13, weight="bold", va="center")
            continue
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.set_title(panel["title"], color=TEXT, fontsize=10, loc="left")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        series = panel_series(prometheus, panel, start, end, step)
        if not any(s.last() is not None for s in series):
            empty.append(panel["title"])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
            continue
        if panel["type"] == "stat":
            _draw_stat(ax, series, unit)
            continue
        factor, label = _scale(unit)
        for i, s in enumerate(series):
            times = [dt.datetime.fromtimestamp(t) for t in s.times]
            ax.plot(
                times, [v * factor for v in s.values], color=COLORS[i % len(COLORS)], lw=1.4, label=s.legend or "value"
            )
        ax.set_xlim(mdates.date2num(dt.datetime.fromtimestamp(start)), mdates.date2num(dt.datetime.fromtimestamp(end)))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=7))
        ax.tick_params(colors=TEXT, labelsize=7)
        ax.grid(color=GRID, lw=0.5)
        if label:
            ax.set_ylabel(label, color=TEXT, fontsize=8)
        ax.legend(fontsize=6.5, loc="upper left", facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, framealpha=0.8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=BACKGROUND)
    plt.close(fig)
    return empty


def render_all(prometheus: str, start: float, end: float, out_dir: Path, step: float = 2.0) -> dict[Path, list[str]]:
    """``grafana-<dashboard file stem>.png`` for every dashboard; maps each picture to its empty panels."""
    result = {}
    for path in DASHBOARDS:
        out = out_dir / f"grafana-{path.stem}.png"
        result[out] = draw(prometheus, json.loads(path.read_text()), start, end, step, out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15.0, help="time range: the last N minutes")
    parser.add_argument("--step", type=float, default=2.0, help="range-query step in seconds")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for grafana-<name>.png")
    args = parser.parse_args()
    end = time.time()
    for out, empty in render_all(args.prometheus, end - args.minutes * 60, end, args.out, args.step).items():
        print(out, f"(no data: {', '.join(empty)})" if empty else "")


if __name__ == "__main__":
    main()
