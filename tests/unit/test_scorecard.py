"""The report's numbers from a hand-made per-prompt record (:func:`router.scorecard.summarise`), no policy run."""

from __future__ import annotations

from typing import Any

import pytest

from router.scorecard import UNMEETABLE, decode_reasons, encode_reasons, summarise

ARMS = ("fast", "slow")
# four prompts of two tasks; "fast" is right on p1 only, "slow" on p1-p3; p4 is unlabelled chat
CORRECT = [[1, 1], [0, 1], [0, 1], [None, None]]
E2E = [[1.0, 3.0], [1.0, 3.0], [1.0, 3.0], [2.5, 4.0]]
BUDGET = {"name": "router:max_latency_ms=2000", "budget_s": 2.0, "compare": True}


def record(picks: dict[str, list[int]], reasons: dict[str, list[str]]) -> dict[str, Any]:
    labels, codes = encode_reasons(reasons)
    return {
        "prompt_ids": ["gsm8k-1", "gsm8k-2", "mmlu-3", "chat-4"],
        "tasks": ["maths", "maths", "mmlu", "chat"],
        "correct": CORRECT,
        "e2e_s": E2E,
        "ttft_s": [[0.1, 0.2]] * 4,
        "picks": picks,
        "reason_labels": labels,
        "reasons": codes,
    }


@pytest.mark.parametrize(
    "reasons",
    [{}, {"a": ["x", "y", "x"]}, {"a": ["y"], "b": ["x", "z"]}],
)
def test_reasons_survive_their_encoding(reasons: dict[str, list[str]]) -> None:
    labels, codes = encode_reasons(reasons)
    assert labels == sorted(labels)
    assert decode_reasons({"reason_labels": labels, "reasons": codes}) == reasons


def test_points_differences_and_compliance_are_exact() -> None:
    picks = {
        BUDGET["name"]: [0, 0, 1, 0],
        "task-rule:max_latency_ms=2000": [1, 1, 1, 1],
        "knn:max_latency_ms=2000": [0] * 4,
    }
    reasons = {BUDGET["name"]: ["fits", "fits", "fits", UNMEETABLE]}
    got = summarise(record(picks, reasons), ARMS, [BUDGET], replicates=50, seed=0)
    points = {p["name"]: p for p in got["points"]}

    assert (got["prompts"], got["labelled_prompts"]) == (4, 3)
    assert got["tasks"] == {"chat": 1, "maths": 2, "mmlu": 1}
    assert points["fixed:fast"]["accuracy"] == pytest.approx(1 / 3)
    assert points["fixed:slow"]["accuracy"] == pytest.approx(1.0)
    assert got["best_fixed"] == "fixed:slow"
    router = points[BUDGET["name"]]
    assert router["accuracy"] == pytest.approx(2 / 3)
    assert router["latency_s"] == pytest.approx((1.0 + 1.0 + 3.0 + 2.5) / 4)
    assert router["gap_recovered"] is None  # the oracle is no better than the best fixed arm: no gap
    assert router["reasons"] == {"fits": 0.75, UNMEETABLE: 0.25}
    # random mixing at the router's shares: labelled prompts' shares for accuracy, all prompts' for latency
    assert points["mix:max_latency_ms=2000"]["share"] == {"fast": 0.75, "slow": 0.25}
    assert points["mix:max_latency_ms=2000"]["accuracy"] == pytest.approx(2 / 3 * (1 / 3) + 1 / 3 * 1.0)

    diff = next(d for d in got["differences"] if d["baseline"] == "fixed:slow")
    assert diff["accuracy"] == pytest.approx(2 / 3 - 1.0)

    (budget,) = got["compliance"]
    assert (budget["infeasible_prompts"], budget["infeasible_reported"], budget["unmeetable_on_feasible"]) == (
        1,
        1.0,
        0.0,
    )
    rules = {r["rule"]: r for r in budget["rules"]}
    assert rules[BUDGET["name"]]["all"] == pytest.approx(0.5)  # p1, p2 in time; p3 on slow, p4 fits nowhere
    assert rules[BUDGET["name"]]["feasible"] == pytest.approx(2 / 3)
    assert rules["fixed:fast"]["feasible"] == pytest.approx(1.0)
    assert rules["fixed:fast"]["infeasible_reported"] is None  # a fixed arm gives no reasons
    assert got["slices"]["maths"]["rules"]["fixed:slow"] == {"accuracy": 1.0, "latency_s": 3.0}
    assert got["slices"]["chat"]["rules"]["fixed:fast"]["accuracy"] is None
