"""The report code of loadtests/resume_bench.py: shares, resume-time percentiles, the seam's time read
from the ``x-route-resumed`` comment, the Markdown table, and reading a stream."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from loadtests.resume_bench import (
    Run,
    Stream,
    diverge_at,
    load_runs,
    markdown,
    read_stream,
    resume_time,
    seam,
    summarize,
    wilson,
)


def test_summarize_counts_shares_and_resume_percentiles() -> None:
    runs = [Run(0, "a", 5, completed=True, identical=True, resumed=True, resume_s=0.2 + i / 100) for i in range(8)]
    runs.append(Run(1, "b", 9, completed=True, identical=False, resumed=True, resume_s=1.5))
    runs.append(Run(2, "a", 3, error="upstream_stream"))
    s = summarize(runs)
    assert (s["answers"], s["completed_share"], s["identical_share"], s["resumed_share"]) == (10, 0.9, 0.8, 0.9)
    assert s["resume_ms_p50"] == pytest.approx(240.0) and s["resume_ms_p99"] == 1500.0 == s["resume_ms_max"]
    assert s["errors"] == ["upstream_stream"]
    md = markdown(s, {"gateway": "http://gw", "model": "m", "max_tokens": 64, "kill_range": "3,120"})
    assert s["completed_ci95"] == wilson(9, 10) and s["identical_ci95"] == wilson(8, 10)
    assert "| 90.0 % (59.6 to 98.2) | 80.0 % (49.0 to 94.3) | 90.0 % | 240 ms | 1500 ms | 1500 ms |" in md
    assert "`upstream_stream`" in md


def test_summarize_without_answers_or_resumes() -> None:
    s = summarize([])
    assert s["answers"] == 0 and s["completed_share"] is None and s["resume_ms_p50"] is None
    assert s["completed_ci95"] is None
    assert "| n/a | n/a | n/a | n/a | n/a | n/a |" in markdown(s, {})


@pytest.mark.parametrize(
    ("k", "n", "interval"),
    [(10, 10, (0.7225, 1.0)), (0, 10, (0.0, 0.2775)), (50, 100, (0.4038, 0.5962)), (100, 100, (0.963, 1.0))],
)
def test_wilson_interval_matches_the_textbook_values(k: int, n: int, interval: tuple[float, float]) -> None:
    assert wilson(k, n) == pytest.approx(interval, abs=1e-4)
    assert wilson(0, 0) is None


def test_a_restarted_run_reads_the_answers_already_done_and_skips_a_torn_line(tmp_path: Path) -> None:
    log = tmp_path / "bench.jsonl"
    assert load_runs(log) == {}
    done = [Run(i % 5, "a", 7, completed=True, index=i, text="x") for i in (0, 1, 3)]
    lines = [json.dumps({**r.__dict__, "field_of_a_later_version": 1}) for r in done]
    log.write_text("\n".join(lines) + '\n{"prompt": 4, "backe')  # killed while writing answer 4
    runs = load_runs(log)
    assert sorted(runs) == [0, 1, 3] and runs[3] == done[2]


def test_diverge_at_is_the_first_differing_character() -> None:
    assert diverge_at("abc", "abc") is None
    assert diverge_at("abXd", "abcd") == 2
    assert diverge_at("ab", "abc") == 2 and diverge_at("abc", "ab") == 2


def test_resume_time_is_from_the_kill_to_the_first_chunk_after_the_seam() -> None:
    stream = Stream(
        chunk_times=[1.0, 1.1, 1.2, 3.0, 3.1], comments=[": x-route-resumed backend=b at_tokens=3 resume_ms=9"]
    )
    assert resume_time(stream, killed_at=1.15) == pytest.approx(1.85)
    assert resume_time(Stream(chunk_times=[1.0]), 0.5) is None
    assert seam(stream) == 3 and seam(Stream(comments=[": other at_tokens=2"])) is None


def test_read_stream_collects_text_comments_and_errors() -> None:
    body = (
        'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
        'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
        'data: {"choices":[{"delta":{"content":" there"}}]}\n\n'
        ": x-route-resumed backend=b at_tokens=1 resume_ms=5\n\n"
        "data: [DONE]\n\n"
    )
    seen: list[int] = []
    r = httpx.Response(200, headers={"x-route-backend": "a"}, content=body.encode())
    s = read_stream(r, seen.append)
    assert (s.backend, s.text, s.done, s.error, seen) == ("a", "Hi there", True, None, [1, 2])
    assert s.comments == [": x-route-resumed backend=b at_tokens=1 resume_ms=5"]
    err = httpx.Response(200, content=b'data: {"error":{"code":"upstream_stream"}}\n\ndata: [DONE]\n\n')
    assert read_stream(err).error == "upstream_stream"


def test_how_far_past_the_seam_answers_part_and_identical_by_prompt() -> None:
    runs = [
        Run(0, "a", 5, completed=True, identical=True, seam_at=40),
        Run(0, "a", 9, completed=True, seam_at=40, diverge_at=100),
        Run(1, "a", 3, completed=True, seam_at=30, diverge_at=50),
        Run(1, "a", 3, completed=True, seam_at=30, diverge_at=30),  # parted at the seam: a seam fault
        Run(2, "a", 3, error="upstream_stream", seam_at=10, diverge_at=11),  # not completed: not counted
    ]
    s = summarize(runs)
    assert (s["parted_chars_after_seam_min"], s["parted_chars_after_seam_p50"], s["parted_at_or_before_seam"]) == (
        0,
        20.0,
        1,
    )
    assert s["identical_by_prompt"] == {"0": "1/2", "1": "0/2", "2": "0/1"}
    assert "20 characters after the seam at the median (at least 0; 1 at or before it)" in markdown(s, {})
