"""deploy/grafana/preview.py without Prometheus: variable substitution, legends, the panel grid, drawing.

The e2e tier (tests/e2e/test_dashboards.py) draws the real pictures from a live Prometheus; here the
range queries are answered by a table so that the layout and the PromQL the script sends are checked fast.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_dashboard_preview", ROOT / "deploy/grafana/preview.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


preview = _load()


@pytest.mark.parametrize(
    ("expr", "fixed", "expected"),
    [
        ('rate(x{model=~"$model"}[$__rate_interval])', {}, 'rate(x{model=~".*"}[1m])'),
        ('x{strategy=~"${strategy}", b=~"$backend"}', {"strategy": "plain"}, 'x{strategy=~"plain", b=~".*"}'),
        ('x{s=~"$strategy"}', {"strategy": preview.regex_literal("a.b-c")}, 'x{s=~"a\\\\.b-c"}'),
    ],
)
def test_substitute(expr: str, fixed: dict[str, str], expected: str) -> None:
    assert preview.substitute(expr, fixed) == expected


@pytest.mark.parametrize(
    ("fmt", "labels", "expected"),
    [
        ("p95 {{model}} {{strategy}}", {"model": "m", "strategy": "plain", "le": "1"}, "p95 m plain"),
        ("__auto", {"__name__": "x", "status": "200", "endpoint": "chat"}, "endpoint=chat, status=200"),
        ("__auto", {}, "value"),
        (None, {"backend": "b"}, "backend=b"),
    ],
)
def test_legend(fmt: str | None, labels: dict[str, str], expected: str) -> None:
    assert preview.legend_of(fmt, labels) == expected


def test_repeated_panels_are_laid_side_by_side_and_push_rows_down(monkeypatch: pytest.MonkeyPatch) -> None:
    values = ["plain", "spec-a", "spec-b", "spec-c", "spec-d"]  # 5 values, maxPerRow 4: two rows
    monkeypatch.setattr(preview, "label_values", lambda *_: values)
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/strategies.json").read_text())
    panels = preview.expand("http://unused", dashboard)
    first = [p for p in panels if p["title"].endswith(": decode speed p50")]
    assert [p["title"] for p in first] == [f"{v}: decode speed p50" for v in values]
    assert [(p["gridPos"]["x"], p["gridPos"]["w"]) for p in first[:4]] == [(0, 6), (6, 6), (12, 6), (18, 6)]
    assert first[4]["gridPos"]["y"] == first[0]["gridPos"]["y"] + first[0]["gridPos"]["h"]
    # nothing overlaps on the 24-column grid
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        own = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not own & cells, p["title"]
        cells |= own


def test_draws_every_dashboard_from_query_results(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sent: list[str] = []

    def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        sent.append(expr)
        if "rejected" in expr:
            return []
        points = [[start + i * step, str(float(i))] for i in range(int((end - start) / step))]
        return [{"metric": {"strategy": "plain", "backend": "smol-plain", "model": "m"}, "values": points}]

    monkeypatch.setattr(preview, "query_range", query_range)
    monkeypatch.setattr(preview, "label_values", lambda *_: ["plain", "speculative-ngram-k4"])
    drawn = preview.render_all("http://unused", 1000.0, 1060.0, tmp_path)
    assert {p.name for p in drawn} == {"grafana-overview.png", "grafana-strategies.png"}
    assert all(p.stat().st_size > 10_000 for p in drawn)
    assert drawn[tmp_path / "grafana-overview.png"] == ["Rejected requests/s by reason"]
    assert not any("$" in expr for expr in sent)
    assert any('strategy=~"speculative-ngram-k4"' in expr for expr in sent)
