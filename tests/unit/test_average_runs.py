"""loadtests.average_runs: runs put on one scale, then each (prompt, arm) averaged over the runs."""

from __future__ import annotations

import math
from typing import Any

import pytest

from loadtests.average_runs import average, run_scale


def _row(pid: str, arm: str, tps: float, tokens: int = 101) -> dict[str, Any]:
    return {
        "prompt_id": pid,
        "arm": arm,
        "task": "t",
        "output_tokens": tokens,
        "decode_tps": tps,
        "ttft_s": 0.2,
        "e2e_s": tokens / tps,
        "error": None,
    }


def test_a_run_under_twice_the_load_is_scaled_back_then_averaged_geometrically() -> None:
    ref = [_row(f"p{i}", "plain", 30.0) for i in range(12)] + [_row(f"p{i}", "spec", 40.0) for i in range(12)]
    slow = [_row(f"p{i}", "plain", 15.0) for i in range(12)] + [_row(f"p{i}", "spec", 25.0) for i in range(12)]
    assert run_scale(
        {(r["prompt_id"], r["arm"]): r for r in ref}, {(r["prompt_id"], r["arm"]): r for r in slow}, "plain"
    ) == pytest.approx(2.0)
    rows = {(r["prompt_id"], r["arm"]): r for r in average([ref, slow], "plain")}
    assert rows[("p0", "plain")]["decode_tps"] == pytest.approx(30.0)
    assert rows[("p0", "spec")]["decode_tps"] == pytest.approx(math.sqrt(40.0 * 50.0))
    assert rows[("p0", "spec")]["runs"] == 2
    assert rows[("p0", "spec")]["e2e_s"] == pytest.approx(101 / math.sqrt(40.0 * 50.0))


def test_a_pair_measured_in_one_run_only_is_kept_on_the_reference_scale() -> None:
    ref = [_row(f"p{i}", "plain", 30.0) for i in range(12)]
    other = [_row(f"p{i}", "plain", 10.0) for i in range(12)] + [_row("p0", "k6", 20.0)]
    rows = {(r["prompt_id"], r["arm"]): r for r in average([ref, other], "plain")}
    assert rows[("p0", "k6")]["decode_tps"] == pytest.approx(60.0)
    assert rows[("p0", "k6")]["runs"] == 1


def test_runs_without_enough_common_baseline_prompts_are_refused() -> None:
    ref = [_row(f"p{i}", "plain", 30.0) for i in range(5)]
    with pytest.raises(ValueError, match="--baseline plain"):
        average([ref, ref], "plain")
