"""The evaluation chart's point labels never overlap one another, a marker or the legend (they once piled up
on top of each other where router settings land on the same spot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from lab import charts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _extents(ax: Any, blocks: list[Any]) -> list[Any]:
    renderer = ax.figure.canvas.get_renderer()
    return [charts.text_extent(b, renderer) for b in blocks]


def _assert_apart(ax: Any, blocks: list[Any], points: list[tuple[float, float]], legend: Any = None) -> None:
    boxes = _extents(ax, blocks)
    for i, a in enumerate(boxes):
        for b in boxes[:i]:
            assert not a.overlaps(b), (a, b)
    half = charts.MARKER_PT * ax.figure.dpi / 72.0
    for x, y in points:
        marker = charts._box(ax.transData.transform((x, y)), half)
        assert not any(box.overlaps(marker) for box in boxes), (x, y)
    if legend is not None:
        frame = legend.get_window_extent(ax.figure.canvas.get_renderer())
        assert not any(box.overlaps(frame) for box in boxes)


def test_crowded_points_get_labels_that_do_not_overlap() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    points = [(3.6 + 0.005 * i, 1.3 + 0.01 * (i % 3)) for i in range(10)]  # one crowded spot
    points += [(6.2, 10.4), (6.25, 10.14), (6.35, 11.07), (6.55, 10.42), (6.87, 10.7), (11.5, 11.2), (4.2, 11.4)]
    ax.plot(*zip(*points, strict=True), "o")
    ax.set_xlim(3, 12.5)
    ax.set_ylim(0, 14)
    fig.tight_layout()
    labels = [(x, y, "tab:red", f"setting number {i}") for i, (x, y) in enumerate(points)]
    blocks = charts.place_labels(ax, labels)
    assert len(blocks) < len(labels), "the crowded spot shares one block"
    _assert_apart(ax, blocks, points)
    plt.close(fig)


def test_the_shipped_cross_validation_chart_labels_do_not_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/router/evaluation-cv.png, drawn again from its committed JSON."""
    drawn: dict[str, Any] = {}
    place = charts.place_labels

    def spy(ax: Any, labels: list[tuple[float, float, str, str]], avoid: list[Any] = ()) -> list[Any]:  # type: ignore[assignment]
        blocks = place(ax, labels, avoid)
        # checked here: pareto_chart closes the figure once it is saved
        _assert_apart(ax, blocks, [(x, y) for x, y, _, _ in labels], avoid[0])
        drawn.update(labels=labels, blocks=blocks)
        return blocks

    monkeypatch.setattr(charts, "place_labels", spy)
    result = json.loads((ROOT / "docs/router/evaluation-cv.json").read_text())
    assert charts.pareto_chart(result, tmp_path / "chart.png", "5-fold cross-validation")
    assert (tmp_path / "chart.png").stat().st_size > 0
    assert {t for _, _, _, t in drawn["labels"]} >= {"oracle", "random", "accuracy=low", "qwen-coder-0.5b-plain"}
    assert len(drawn["blocks"]) < len(drawn["labels"]), "the settings that land on one spot share a block"
