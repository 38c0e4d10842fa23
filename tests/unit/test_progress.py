"""One progress-bar library (tqdm, through lab/progress.py and its twin variants/progress.py: the layers
keep lab and variants apart) for every long offline job: a bar on a terminal, whole lines at a bounded
rate in a log, nothing when turned off."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest

from lab.profiling import Progress
from lab.progress import LogLines, progress

ROOT = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_not_carriage_returns() -> None:
    out = io.StringIO()
    with progress(100, "embedding", "prompt", stream=out, log_interval_s=3600) as bar:
        for _ in range(100):
            bar.update(1)
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # the first line, then nothing for an hour, then the final state (once by the last update, once on close)
    assert 2 <= len(lines) <= 3, lines
    assert lines[0].startswith("embedding:   0%") and re.match(r"embedding: 100%\|#+\| 100/100 ", lines[-1])
    assert all(len(line) <= 100 for line in lines)


def test_a_terminal_gets_the_bar_redrawn_in_place() -> None:
    out = Terminal()
    with progress(3, "teacher answers", "answer", stream=out) as bar:
        bar.update(3)
    assert "\r" in out.getvalue() and "3/3" in out.getvalue()


def test_log_lines_split_redraws_and_drop_blank_ones() -> None:
    out = io.StringIO()
    lines = LogLines(out)
    lines.write("\rbar 1   ")
    lines.write("\r     \rbar 2\n")
    lines.write("")
    assert out.getvalue() == "bar 1\nbar 2\n"


def test_bars_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Terminal()
    with progress(3, "x", stream=out, disable=True) as bar:
        bar.update(3)
    monkeypatch.setenv("LLM_GATEWAY_PROGRESS", "0")
    with progress(3, "y", stream=out) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_profiling_shows_errors_and_accuracy_per_arm() -> None:
    out = io.StringIO()
    tracker = Progress(3, out)
    tracker.update({"arm": "a", "error": None, "correct": True})
    tracker.update({"arm": "b", "error": None, "correct": False})
    tracker.update({"arm": "a", "error": "timeout"})
    tracker.close()
    last = out.getvalue().splitlines()[-1]
    assert "profiling: 100%" in last and "3/3" in last and "errors 1, correct: a 1/1 b 0/1" in last


def test_no_hand_rolled_progress_lines_are_left() -> None:
    """Carriage-return redraws belong to tqdm: the lab and the variants draw none of their own."""
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("lab", "variants")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "progress.py" and re.search(r"""["']\\r""", path.read_text())
    ]
    assert not offenders, offenders


def test_the_lab_and_the_variants_draw_their_bars_with_the_same_code() -> None:
    """Two copies (lab never imports variants): everything but the module docstring must stay identical."""

    def code(path: Path) -> str:
        tree = ast.parse(path.read_text())
        del tree.body[0]  # the docstring, which says where each copy is used
        return ast.dump(tree)

    assert code(ROOT / "lab/progress.py") == code(ROOT / "variants/progress.py")
