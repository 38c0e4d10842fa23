"""Profile files (lab.profiles): the rows ``profile`` writes are the rows ``train`` and ``evaluate`` read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lab import profiles
from lab.datasets import Prompt


def _row(pid: str, arm: str, **kw: Any) -> dict[str, Any]:
    row = profiles.new_row(
        Prompt(pid, pid.split("/")[0], [{"role": "user", "content": f"text of {pid}"}], None, "train"), arm
    )
    row.update(output_tokens=3, ttft_s=0.1, e2e_s=1.0, correct=True, model="m", strategy="plain")
    row.update(kw)
    return row


def _write(path: Path, rows: list[dict[str, Any]], tail: str = "") -> Path:
    with profiles.open_for_append(path) as fh:
        for r in rows:
            profiles.append(fh, r)
    if tail:
        with path.open("a") as fh:
            fh.write(tail)
    return path


def test_a_written_row_has_every_key_and_reads_back(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [_row("gsm8k/00001", "a")])
    (got,) = profiles.read_rows(path)
    assert tuple(got) == profiles.ROW_KEYS and got["prompt"] == "text of gsm8k/00001"


def test_rows_with_errors_or_without_timings_do_not_train() -> None:
    lines = [
        json.dumps({"prompt_id": "a", "arm": "x", "correct": True, "output_tokens": 3, "ttft_s": 0.1, "e2e_s": 1.0}),
        json.dumps({"prompt_id": "b", "arm": "x", "error": "boom", "ttft_s": None, "e2e_s": None}),
        "",
        '{"prompt_id": "c", "arm": "x", "ttft_s": 0.1, "e2',  # cut short by a crash
    ]
    assert [r.prompt_id for r in profiles.training_rows(profiles.parse_lines(lines))] == ["a"]


def test_appending_after_a_crash_starts_a_new_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [_row("gsm8k/00001", "a")], tail='{"prompt_id": "half')
    _write(path, [_row("gsm8k/00002", "a")])
    assert [r["prompt_id"] for r in profiles.read_rows(path)] == ["gsm8k/00001", "gsm8k/00002"]


def test_load_keeps_the_last_measurement_texts_and_arm_labels(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.jsonl", [_row("gsm8k/00001", "a", e2e_s=9.0), _row("gsm8k/00001", "b")])
    second = _write(
        tmp_path / "b.jsonl",
        [
            _row("gsm8k/00001", "a", e2e_s=2.0, strategy="speculative:ngram:k=4"),
            _row("gsm8k/00002", "a", error="x", strategy=None),
        ],
    )
    data = profiles.load([first, second])
    assert {(r.prompt_id, r.arm): r.e2e_s for r in data.rows} == {("gsm8k/00001", "a"): 2.0, ("gsm8k/00001", "b"): 1.0}
    assert data.texts["gsm8k/00001"] == "text of gsm8k/00001"
    assert data.arm_labels == {"a": ("m", "speculative:ngram:k=4"), "b": ("m", "plain")}
    assert len(data.sha256) == 64 and profiles.load([second, first]).sha256 != data.sha256


def test_load_refuses_rows_without_prompt_text(tmp_path: Path) -> None:
    path = _write(tmp_path / "old.jsonl", [_row("gsm8k/00001", "a", prompt=None)])
    with pytest.raises(profiles.ProfileError, match="re-run `llm-gateway profile`"):
        profiles.load([path])


def test_circular_items_are_right_only_under_every_order(tmp_path: Path) -> None:
    rows = [
        _row("mmlu-circular/00001#0", "a", task="mmlu-circular", correct=True),
        _row("mmlu-circular/00001#1", "a", task="mmlu-circular", correct=False),
        _row("mmlu-circular/00002#0", "a", task="mmlu-circular", correct=True),
    ]
    data = profiles.load([_write(tmp_path / "c.jsonl", rows)])
    assert {r.prompt_id: r.correct for r in data.rows} == {
        "mmlu-circular/00001#0": False,
        "mmlu-circular/00001#1": False,
        "mmlu-circular/00002#0": None,  # the other order not yet asked
    }


def test_the_meta_sidecar_sums_acceptance_over_runs(tmp_path: Path) -> None:
    meta = profiles.meta_path(tmp_path / "p.jsonl")
    run = {"spec_decode": {"arms": {"spec": {"draft_tokens": 10, "accepted_tokens": 4}}}}
    profiles.write_meta(meta, run)
    profiles.write_meta(meta, run)
    got = json.loads(meta.read_text())
    assert len(got["runs"]) == 2 and got["spec_decode_acceptance"]["spec"]["acceptance_rate"] == pytest.approx(0.4)
