"""The offline evaluation (``llm-gateway evaluate``) on synthetic outcomes where the answer is known:
paired bootstrap, budget compliance and infeasible reporting, exact random mixing, the task rule,
kNN, reliability bins, pooling of folds, and the written report."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lab.evaluate import _write_evaluation
from router.baselines import Rule, choose, knn_forecasts, oracle_picks, outcomes, task_forecasts
from router.bootstrap import bootstrap_means, weighted_quantile
from router.decision import Arm, ArmState, Decision, RouteFlags, RouteRequest
from router.evaluation import SETTINGS, Setting, evaluate, pool
from router.learned import LearnedPolicy
from router.policy import Policy
from router.predictor import ArmModel, Calibration, Prediction, RouterModel
from router.reliability import reliability
from router.strategy import build_strategy
from router.training import Row

QUALITY = (Setting("router:quality", RouteFlags(prefer="quality")),)
BUDGET = (Setting("router:max_latency_ms=2000", RouteFlags(max_latency_ms=2000)),)


def row(pid: str, arm: str, correct: bool | None, e2e: float, task: str = "maths", split: str = "test") -> Row:
    return Row(pid, task, split, arm, correct, 10, 0.1, 20.0, e2e)


def features(pids: Sequence[str], dim: int = 2) -> dict[str, Any]:
    """What a learned policy's featurize returns: (standardised vector, kchars); the id rides along for stubs."""
    return {p: (np.full(dim, float(i)), 0.1, p) for i, p in enumerate(sorted(pids))}


class Stub(Policy):
    """Decides by a function of (prompt id, flags) -> (arm, reason); never forecasts."""

    def __init__(self, rule: Callable[[str, RouteFlags], tuple[str, str]]) -> None:
        self.rule = rule

    def decide(self, request: RouteRequest, candidates: Sequence[ArmState]) -> Decision:
        arm, reason = self.rule(request.features[2], request.flags)
        chosen = next(s.arm for s in candidates if s.arm.name == arm)
        return Decision(arm=chosen, reason=reason, ranked=(chosen,))


class Forecasting(Policy):
    """Forecasts from a table and decides through ``self.predict`` like the learned policy: the most
    likely correct arm (ties: less latency) among those whose bound fits the budget."""

    def __init__(self, table: dict[str, dict[str, tuple[float, float]]]) -> None:
        self.table = table

    def predict(self, request: RouteRequest, candidates: Sequence[ArmState]) -> dict[str, Prediction]:
        got = self.table[request.features[2]]
        return {s.arm.name: Prediction(got[s.arm.name][0], 10.0, 0.1, 20.0, got[s.arm.name][1]) for s in candidates}

    def decide(self, request: RouteRequest, candidates: Sequence[ArmState]) -> Decision:
        preds = self.predict(request, candidates)
        budget = request.flags.max_latency_ms / 1000 if request.flags.max_latency_ms else None

        def bound(name: str) -> float:
            p = preds[name]
            return p.latency_s if getattr(p, "latency_bound_s", None) is None else p.latency_bound_s  # type: ignore[return-value]

        fits = [s for s in candidates if budget is None or bound(s.arm.name) <= budget]
        pool_ = fits or list(candidates)
        best = min(pool_, key=lambda s: (-preds[s.arm.name].quality, preds[s.arm.name].latency_s))
        reason = "prefer-quality" if fits else "budget-unmeetable"
        return Decision(arm=best.arm, reason=reason, ranked=(best.arm,), predictions=preds)


def point(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(pt for pt in result["points"] if pt["name"] == name)


def diff(result: dict[str, Any], setting: str, baseline: str) -> dict[str, Any]:
    return next(d for d in result["differences"] if d["setting"] == setting and d["baseline"] == baseline)


def always_big() -> tuple[list[Row], list[Row]]:
    """'big' is always right (5 s), 'fast' always wrong (1 s)."""
    test = [r for i in range(40) for r in (row(f"t{i:02d}", "big", True, 5.0), row(f"t{i:02d}", "fast", False, 1.0))]
    train = [
        r
        for i in range(20)
        for r in (
            row(f"r{i:02d}", "big", True, 5.0, split="train"),
            row(f"r{i:02d}", "fast", False, 1.0, split="train"),
        )
    ]
    return test, train


def run(policy: Policy, test: list[Row], train: list[Row], settings: Sequence[Setting], **kw: Any) -> dict[str, Any]:
    arms = sorted({r.arm for r in test})
    return evaluate(
        policy,
        test,
        features({r.prompt_id for r in test}),
        arms,
        train_rows=train,
        train_features=features({r.prompt_id for r in train}),
        settings=settings,
        replicates=kw.pop("replicates", 400),
        **kw,
    )


# --- bootstrap ---------------------------------------------------------------------------------


def test_always_right_minus_always_wrong_is_one_and_identical_rules_differ_by_zero() -> None:
    test, train = always_big()
    result = run(Stub(lambda p, f: ("big", "prefer-quality")), test, train, QUALITY)
    vs_fast = diff(result, "router:quality", "fixed:fast")
    assert vs_fast["accuracy"] == 1.0 and vs_fast["accuracy_ci"] == [1.0, 1.0]
    assert vs_fast["latency_s"] == pytest.approx(4.0) and vs_fast["latency_ci"] == pytest.approx([4.0, 4.0])
    same = diff(result, "router:quality", "fixed:big")
    assert same["accuracy_ci"] == [0.0, 0.0] and same["latency_ci"] == [0.0, 0.0]
    assert point(result, "router:quality")["accuracy_ci"] == [1.0, 1.0]


def test_coin_flip_interval_covers_the_analytic_value_with_the_binomial_width() -> None:
    rng = np.random.default_rng(7)
    n = 400
    router = (rng.random(n) < 0.5).astype(float)
    values = np.stack([router, router - 0.0])  # minus an always-wrong baseline
    masks = np.ones_like(values, dtype=bool)
    point_, lo, hi = bootstrap_means(values, masks, replicates=2000, seed=0)
    assert lo[1] <= 0.5 <= hi[1]
    width = hi[1] - lo[1]
    analytic = 2 * 1.96 * np.sqrt(point_[1] * (1 - point_[1]) / n)
    assert width == pytest.approx(analytic, rel=0.15)


def test_bootstrap_is_deterministic_and_ignores_masked_values() -> None:
    values = np.array([[1.0, 0.0, np.nan, 1.0, 0.0, 1.0]])
    masks = ~np.isnan(values)
    a = bootstrap_means(values, masks, replicates=300, seed=3)
    b = bootstrap_means(values, masks, replicates=300, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0][0] == pytest.approx(0.6)
    assert 0.0 <= a[1][0] <= a[2][0] <= 1.0


def test_prompts_of_one_source_item_are_resampled_together() -> None:
    values = (np.random.default_rng(2).random((1, 60)) < 0.3).astype(float)
    once = bootstrap_means(values, np.ones_like(values, dtype=bool), replicates=500, seed=1)
    twice = np.repeat(values, 2, axis=1)  # every item asked twice, answered the same both times
    masks = np.ones_like(twice, dtype=bool)
    clustered = bootstrap_means(twice, masks, replicates=500, seed=1, groups=np.repeat(np.arange(60), 2))
    assert all(np.allclose(a, b) for a, b in zip(once, clustered, strict=True))
    naive = bootstrap_means(twice, masks, replicates=500, seed=1)
    assert naive[2][0] - naive[1][0] < 0.8 * (once[2][0] - once[1][0])  # too narrow: 120 "independent" prompts


def test_weighted_quantile_matches_numpy_with_equal_weights() -> None:
    x = np.random.default_rng(1).exponential(size=101)
    assert weighted_quantile(x, np.ones_like(x), 0.9) == np.percentile(x, 90, method="inverted_cdf")
    assert weighted_quantile(np.array([1.0, 10.0]), np.array([0.95, 0.05]), 0.9) == 1.0


# --- budgets -----------------------------------------------------------------------------------


def budget_fixture() -> tuple[list[Row], list[Row]]:
    """Prompts 0-9: fast 1.0 s, big 3.0 s (a 2 s budget is feasible); 10-19: fast 2.5 s, big 4.0 s (infeasible).
    Prompts 5-9 are chat (unlabelled)."""
    test = []
    for i in range(20):
        pid = f"p{i:02d}"
        fast, big = (1.0, 3.0) if i < 10 else (2.5, 4.0)
        task, label = ("chat", None) if 5 <= i < 10 else ("maths", True)
        test += [row(pid, "fast", None if label is None else i % 2 == 0, fast, task), row(pid, "big", label, big, task)]
    train = [
        r
        for i in range(10)
        for r in (row(f"r{i}", "fast", False, 1.0, split="train"), row(f"r{i}", "big", True, 3.0, split="train"))
    ]
    return test, train


def test_compliance_and_infeasible_reporting() -> None:
    test, train = budget_fixture()

    def rule(pid: str, flags: RouteFlags) -> tuple[str, str]:
        i = int(pid[1:])
        return "fast", "budget-unmeetable" if (10 <= i < 18 or i == 0) else "prefer-balanced"

    result = run(Stub(rule), test, train, BUDGET)
    assert result["prompts"] == 20 and result["labelled_prompts"] == 15 and result["bootstrap"]["clusters"] == 20
    [c] = result["compliance"]
    assert c["budget_s"] == 2.0 and c["infeasible_prompts"] == 10 and c["infeasible_share"] == 0.5
    assert c["infeasible_reported"] == pytest.approx(0.8)
    assert c["unmeetable_on_feasible"] == pytest.approx(0.1)
    by_rule = {r["rule"]: r for r in c["rules"]}
    router = by_rule["router:max_latency_ms=2000"]
    assert router["all"] == 0.5 and router["feasible"] == 1.0 and router["feasible_ci"] == [1.0, 1.0]
    assert by_rule["fixed:big"]["all"] == 0.0
    assert by_rule["oracle:max_latency_ms=2000"]["feasible"] == 1.0
    # accuracy over the 15 labelled prompts only: fast is right on even ids among 0-4 and 10-19
    assert point(result, "router:max_latency_ms=2000")["accuracy"] == pytest.approx(8 / 15)
    assert point(result, "router:max_latency_ms=2000")["latency_s"] == pytest.approx((10 * 1.0 + 10 * 2.5) / 20)
    assert result["baseline_decisions"] == "rule"  # the stub cannot be fed forecasts
    json.dumps(result, allow_nan=False)


def test_oracle_prefers_fitting_arms_then_correct_then_fast() -> None:
    test, _ = budget_fixture()
    got = outcomes(test, ["fast", "big"])
    picks = oracle_picks(got, budget_s=2.0)
    assert picks[:5] == [0] * 5  # big is right but 3 s: the fitting fast arm
    assert picks[10:12] == [0, 1]  # nothing fits: the fastest correct arm (fast is right on even ids only)
    assert oracle_picks(got)[1] == 1  # no budget: the fastest correct arm


# --- random mixing -----------------------------------------------------------------------------


def test_random_mixing_is_the_exact_expectation_at_the_routers_shares() -> None:
    a_right, b_right = {0, 1, 5, 6}, {0, 7}
    test = []
    for i in range(20):
        pid, labelled = f"p{i:02d}", i < 10
        task = "maths" if labelled else "chat"
        test.append(row(pid, "a", (i in a_right) if labelled else None, 2.0 + i, task))
        test.append(row(pid, "b", (i in b_right) if labelled else None, 1.0 + 0.5 * i, task))
    train = [r for r in test if r.prompt_id in {"p00", "p11"}]
    train = [Row(r.prompt_id + "t", r.task, "train", r.arm, r.correct, 10, 0.1, 20.0, r.e2e_s) for r in train]

    def rule(pid: str, flags: RouteFlags) -> tuple[str, str]:
        i = int(pid[1:])
        return ("a" if i < 3 or i >= 10 else "b"), "prefer-quality"

    result = run(Stub(rule), test, train, QUALITY)
    mix = point(result, "mix:quality")
    share_lab, share_all = {"a": 0.3, "b": 0.7}, {"a": 13 / 20, "b": 7 / 20}
    assert mix["share_labelled"] == pytest.approx(share_lab) and mix["share"] == pytest.approx(share_all)
    assert mix["accuracy"] == pytest.approx(0.3 * 0.4 + 0.7 * 0.2)
    mean_a = np.mean([2.0 + i for i in range(20)])
    mean_b = np.mean([1.0 + 0.5 * i for i in range(20)])
    assert mix["latency_s"] == pytest.approx(13 / 20 * mean_a + 7 / 20 * mean_b)
    router = point(result, "router:quality")
    d = diff(result, "router:quality", "mix:quality")
    assert d["accuracy"] == pytest.approx(router["accuracy"] - mix["accuracy"])
    assert d["accuracy_ci"][0] <= d["accuracy"] <= d["accuracy_ci"][1]


# --- task rule and kNN -------------------------------------------------------------------------


def task_training() -> list[Row]:
    rows = []
    for i in range(10):
        rows += [
            row(f"m{i}", "big", i < 8, 5.0 + i * 0.1, "maths", "train"),
            row(f"m{i}", "fast", i < 2, 1.0, "maths", "train"),
        ]
        rows += [row(f"c{i}", "big", None, 6.0, "chat", "train"), row(f"c{i}", "fast", None, 1.5, "chat", "train")]
        rows += [row(f"q{i}", "big", i < 5, 4.0, "mmlu", "train"), row(f"q{i}", "fast", i < 5, 2.0, "mmlu", "train")]
    return rows


def test_task_rule_best_training_accuracy_ties_and_unlabelled_to_the_fastest_and_budgets() -> None:
    train = outcomes(task_training(), ["big", "fast"])
    forecast = task_forecasts(train, ["maths", "chat", "mmlu", "unseen"])
    assert choose(forecast, Rule(prefer="quality")) == [0, 1, 1, 0]
    # a 3 s budget: big's training p90 on maths (5.8 s) does not fit; on unseen tasks neither does big's p90
    assert choose(forecast, Rule(prefer="quality", budget_s=3.0)) == [1, 1, 1, 1]
    assert choose(forecast, Rule(prefer="quality", budget_s=10.0)) == [0, 1, 1, 0]


def test_baselines_decide_through_the_policy_with_their_own_forecasts() -> None:
    train = task_training()
    test = []
    for i, task in enumerate(["maths", "chat", "mmlu", "maths"]):
        big_ok = None if task == "chat" else True
        fast_ok = None if task == "chat" else False
        test += [row(f"t{i}", "big", big_ok, 5.0, task), row(f"t{i}", "fast", fast_ok, 1.0, task)]
    table = {f"t{i}": {"big": (0.1, 5.0), "fast": (0.9, 1.0)} for i in range(4)}  # the router believes in fast
    result = run(Forecasting(table), test, train, (*QUALITY, Setting("router:q3", RouteFlags(max_latency_ms=3000))))
    assert result["baseline_decisions"] == "policy"
    picks = result["per_prompt"]["picks"]
    assert picks["router:quality"] == [1, 1, 1, 1]
    assert picks["task-rule:quality"] == [0, 1, 1, 0]  # maths -> big, chat/mmlu -> fast
    assert picks["task-rule:q3"] == [1, 1, 1, 1]  # big's training p90 (5.8 s) is over 3 s
    assert point(result, "task-rule:quality")["accuracy"] == pytest.approx(2 / 3)  # chat does not count
    assert diff(result, "router:quality", "task-rule:quality")["accuracy"] == pytest.approx(-2 / 3)
    assert point(result, "task-rule:q3")["reasons"] == {"prefer-quality": 1.0}


def test_knn_recovers_a_planted_rule() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    rows = []
    for i, v in enumerate(x):
        pid = f"k{i:03d}"
        rows += [row(pid, "a", bool(v[0] > 0), 3.0 if v[1] > 0 else 1.0, split="train")]
        rows += [row(pid, "b", bool(v[0] <= 0), 2.0, split="train")]
    train = outcomes(rows, ["a", "b"])
    test_x = np.array([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])
    forecast = knn_forecasts(train, x, test_x, k=10)
    assert forecast.quality[:, 0] == pytest.approx([1, 0, 1, 0])
    assert forecast.latency_s[:, 0] == pytest.approx([3, 3, 1, 1])
    assert choose(forecast, Rule(prefer="quality")) == [0, 1, 0, 1]
    assert choose(forecast, Rule(prefer="quality", budget_s=2.5)) == [1, 1, 0, 1]  # a's 3 s does not fit
    assert choose(forecast, Rule(prefer="speed")) == [1, 1, 0, 0]


# --- reliability -------------------------------------------------------------------------------


def test_reliability_bins_of_calibrated_and_overconfident_predictions() -> None:
    rng = np.random.default_rng(5)
    p = rng.random(20000)
    good = reliability(p, (rng.random(20000) < p).astype(float))
    assert [b["count"] for b in good["bins"]] == pytest.approx([2000] * 10, rel=0.1)
    assert all(b["within_tolerance"] for b in good["bins"])
    assert good["ece"] < 0.02
    bad = reliability(p, (rng.random(20000) < p / 2).astype(float))
    assert [b["within_tolerance"] for b in bad["bins"]][-3:] == [False, False, False]
    few = reliability(np.array([0.95] * 5), np.ones(5))
    assert few["bins"][9]["count"] == 5 and few["bins"][9]["within_tolerance"] is None


def test_reliability_and_latency_ratio_of_the_policys_forecasts() -> None:
    test, train = always_big()
    table = {r.prompt_id: {"big": (0.95, 2.5), "fast": (0.05, 1.0)} for r in test}
    result = run(Forecasting(table), test, train, QUALITY)
    rel = result["reliability"]
    assert rel["all_arms"]["prompts"] == 80
    assert rel["per_arm"]["big"]["bins"][9] == {
        "low": 0.9,
        "high": 1.0,
        "count": 40,
        "mean_predicted": pytest.approx(0.95),
        "realised": 1.0,
        "within_tolerance": True,
    }
    assert rel["chosen"]["router:quality"]["prompts"] == 40
    assert result["latency_ratio"]["big"]["p50"] == pytest.approx(2.0)
    assert result["latency_ratio"]["fast"]["p90"] == pytest.approx(1.0)


# --- pooling and the report --------------------------------------------------------------------


def test_pooled_folds_equal_one_evaluation_over_all_prompts() -> None:
    test, train = budget_fixture()
    policy = Stub(lambda p, f: ("fast" if int(p[1:]) % 3 else "big", "prefer-balanced"))
    settings = QUALITY + BUDGET
    whole = run(policy, test, train, settings)
    first = {f"p{i:02d}" for i in range(12)}
    halves = [[r for r in test if (r.prompt_id in first) == keep] for keep in (True, False)]
    pooled = pool([run(policy, half, train, settings) for half in halves])
    assert pooled["folds"] == 2 and pooled["prompts"] == 20
    for key in ("points", "differences", "compliance"):
        assert pooled[key] == whole[key]
    with pytest.raises(ValueError, match="disjoint"):
        pool([whole, whole])


def test_the_default_settings_and_the_written_report(tmp_path: Path) -> None:
    test, train = budget_fixture()
    table = {f"p{i:02d}": {"big": (0.7, 3.5), "fast": (0.4, 1.5 if i < 10 else 2.6)} for i in range(20)}
    result = run(Forecasting(table), test, train, SETTINGS, replicates=100)
    names = {s["name"] for s in result["settings"]}
    assert {"router:quality", "router:max_latency_ms=5000", "router:accuracy=high,max_latency_ms=3000"} <= names
    _write_evaluation(result, tmp_path, "evaluation", "test")
    doc = json.loads((tmp_path / "evaluation.json").read_text())
    assert doc["points"] == json.loads(json.dumps(result["points"]))
    md = (tmp_path / "evaluation.md").read_text()
    for heading in ("## Points", "## Router minus baseline", "## Latency budgets", "## Reliability"):
        assert heading in md
    assert (tmp_path / "evaluation.png").stat().st_size > 0
    assert (tmp_path / "evaluation-reliability.png").stat().st_size > 0
    charts = md.split("## Points")[0]  # the report shows its charts above the tables
    assert "](evaluation.png)" in charts and "](evaluation-reliability.png)" in charts


def test_the_learned_policy_is_scored_through_its_own_decide() -> None:
    def arm(quality_bias: float, tokens: float, tps: float) -> ArmModel:
        q = np.array([2.0, 0.0, np.log(quality_bias / (1 - quality_bias))])  # feature 0 raises quality
        length = np.array([0.0, 0.0, np.log1p(tokens)])
        return ArmModel(q, length, np.zeros(3), 0.1, 0.0, tps, 0.1)

    model = RouterModel(
        encoder="test",
        feature_names=("f0", "f1"),
        mean=np.zeros(2),
        std=np.ones(2),
        arms={"big": arm(0.6, 100, 20.0), "fast": arm(0.2, 100, 150.0)},
        calibration=Calibration(balanced_weight=0.02, accuracy_levels={"low": 0.3, "medium": 0.2, "high": 0.1}),
    )
    policy = LearnedPolicy(model=model)
    test, train = budget_fixture()
    xs = {r.prompt_id: (np.array([(int(r.prompt_id[1:]) - 10) / 5, 0.0]), 0.1) for r in test + train}
    settings = (*QUALITY, *BUDGET, Setting("router:balanced(w=0.5)", RouteFlags(prefer="balanced"), 0.5, False))
    arms = ["big", "fast"]
    result = evaluate(
        policy,
        test,
        {p: xs[p] for p in {r.prompt_id for r in test}},
        arms,
        train_rows=train,
        train_features={p: xs[p] for p in {r.prompt_id for r in train}},
        settings=settings,
        replicates=100,
    )
    assert policy.model is model and "predict" not in vars(policy)  # the sweep's override and the baselines' are undone
    assert result["baseline_decisions"] == "policy"
    ids = result["per_prompt"]["prompt_ids"]
    states = [ArmState(arm=Arm(name=a, model=a, strategy=build_strategy({"kind": "plain"}))) for a in arms]
    for name, flags in (("router:quality", QUALITY[0].flags), ("router:max_latency_ms=2000", BUDGET[0].flags)):
        direct = [arms.index(policy.decide(RouteRequest(flags=flags, features=xs[p]), states).arm.name) for p in ids]
        assert result["per_prompt"]["picks"][name] == direct
    assert result["reliability"] is not None and result["latency_ratio"]["big"]["prompts"] == 20


def test_folds_scored_without_draws_get_their_intervals_when_pooled() -> None:
    """evaluate --cv scores each fold with replicates=0 and draws once over the pooled prompts:
    the same intervals as pooling folds that each drew (the pooled bootstrap ignores the folds')."""
    test, train = budget_fixture()
    policy = Stub(lambda p, f: ("fast" if int(p[1:]) % 3 else "big", "prefer-balanced"))
    settings = QUALITY + BUDGET
    first = {f"p{i:02d}" for i in range(12)}
    halves = [[r for r in test if (r.prompt_id in first) == keep] for keep in (True, False)]
    drawn = pool([run(policy, half, train, settings, replicates=300) for half in halves])
    cheap = [run(policy, half, train, settings, replicates=0) for half in halves]
    assert all(
        pt["accuracy_ci"] is None or pt["accuracy_ci"][0] != pt["accuracy_ci"][0] for pt in pool(cheap)["points"]
    )
    assert pool(cheap, replicates=300)["points"] == drawn["points"]
