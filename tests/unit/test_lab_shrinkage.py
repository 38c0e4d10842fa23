"""lab.shrinkage: neighbourhood rates, the blend, and that alpha = 0 is the shipped router."""

from __future__ import annotations

import numpy as np
import pytest

from lab.shrinkage import ShrinkageFit, UtilityL2Fit, blend, family_gap, inner_rates, neighbour_rates
from router.training import L2_GRID, prompt_folds, train
from tests.unit.test_training import synthetic


def test_neighbour_rates_average_the_nearest_labels_smoothed_toward_the_base_rate() -> None:
    train_x = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    train_y = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    got = neighbour_rates(train_x, train_y, np.array([[0.05], [10.05]]), k=3, prior=2.0)
    # (3 successes + 2 pseudo-prompts at the base rate 0.5) / 5, and (0 + 1) / 5
    assert got == pytest.approx([0.8, 0.2])
    assert neighbour_rates(train_x, train_y, np.array([[0.0]]), k=3, prior=0.0) == pytest.approx([1.0])


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="k must be"):
        neighbour_rates(np.zeros((2, 1)), np.zeros(2), np.zeros((1, 1)), k=0)
    with pytest.raises(ValueError, match="alpha must be"):
        blend(np.zeros(1), np.zeros(1), 1.5)
    assert blend(np.array([0.2]), np.array([0.6]), 0.25) == pytest.approx([0.3])


def test_inner_rates_never_use_a_prompt_of_the_same_inner_fold() -> None:
    ids = [f"t/{i:04d}" for i in range(40)]
    fold = prompt_folds(ids, 5, 0)
    # each prompt sits at its fold's number and is right iff that number is even: its nearest prompts
    # in the *other* folds are one away, with the opposite label (a leak would give its own)
    x_of = {p: np.array([float(fold[p])]) for p in ids}
    labels = {"a": np.array([1.0 if fold[p] % 2 == 0 else 0.0 for p in ids])}
    rates = inner_rates(x_of, labels, ids, k=1, seed=0, folds=5)
    for p in ids:
        assert (rates[p]["a"] < 0.5) == (fold[p] % 2 == 0)


def test_alpha_zero_routes_exactly_as_the_shipped_training() -> None:
    rows, vectors, kchars = synthetic(80)
    names = ["a", "b", "c", "d"]
    shipped, _ = train(rows, vectors, kchars, "enc", names, seed=0)
    fit = ShrinkageFit(alphas=(0.0,), ks=(10,))
    shrunk, _ = fit(rows, vectors, kchars, "enc", names, seed=0)
    assert fit.chosen[0]["alpha"] == 0.0
    assert shrunk.calibration == shipped.calibration
    arms = [("maths", 1.0, 1.0, 1.0), ("chat", 1.0, 1.0, 1.0)]
    for pid in list(vectors)[:10]:
        x = shipped.standardise(vectors[pid])
        a, b = shipped.predict(x, 0.2, None, arms), shrunk.predict(x, 0.2, None, arms)
        assert {k: v.quality for k, v in a.items()} == pytest.approx({k: v.quality for k, v in b.items()})


def test_utility_l2_returns_a_router_that_still_learns_the_signal() -> None:
    rows, vectors, kchars = synthetic(80)
    fit = UtilityL2Fit()
    model, _ = fit(rows, vectors, kchars, "enc", ["a", "b", "c", "d"], seed=0)
    assert fit.chosen[0]["l2"] in {None, *L2_GRID}
    arms = [("maths", 1.0, 1.0, 1.0), ("chat", 1.0, 1.0, 1.0)]
    right = [p for p in vectors if vectors[p][0] > 1]
    wrong = [p for p in vectors if vectors[p][0] < -1]
    q = {p: model.predict(model.standardise(vectors[p]), 0.2, None, arms)["maths"].quality for p in right + wrong}
    assert min(q[p] for p in right) > max(q[p] for p in wrong)


def test_family_shares_add_up_to_the_whole_difference() -> None:
    result = {
        "arms": ["fast", "good"],
        "per_prompt": {
            "prompt_ids": ["a/1", "a/2", "b/1", "c/1"],
            "tasks": ["a", "a", "b", "c"],
            "correct": [[0.0, 1.0], [0.0, 1.0], [0.0, 0.0], [None, None]],
            "e2e_s": [[1.0, 5.0], [1.0, 5.0], [2.0, 4.0], [1.0, 9.0]],
            "picks": {"router:default": [0, 1, 1, 1], "task-rule:default": [1, 1, 0, 0]},
        },
    }
    gap = family_gap(result, "router:default", "task-rule:default")
    assert gap["a"]["accuracy"] == pytest.approx(-1 / 3)  # one of three labelled prompts lost
    assert gap["a"]["latency_s"] == pytest.approx(-4 / 4)
    assert sum(g["latency_s"] for g in gap.values()) == pytest.approx((-4 + 0 + 2 + 8) / 4)
    assert gap["c"]["router_arms"] == {"good": 1} and gap["c"]["baseline_arms"] == {"fast": 1}
