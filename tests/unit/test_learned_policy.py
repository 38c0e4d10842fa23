"""Table-driven tests of the learned policy's decision rules on a hand-built model."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

from router import Arm, ArmState, NoArmAvailable, RouteFlags, RouteRequest, build_strategy
from router.learned import LearnedPolicy
from router.predictor import ArmModel, Calibration, RouterModel

DIM = 2


def arm_model(quality_bias: float, length_tokens: float, tps: float, ttft: float = 0.1) -> ArmModel:
    q = np.zeros(DIM + 1)
    q[-1] = np.log(quality_bias / (1 - quality_bias))
    q[0] = 2.0  # feature 0 ("hard maths") raises quality
    length = np.zeros(DIM + 1)
    length[-1] = np.log1p(length_tokens)
    return ArmModel(
        quality_w=q,
        length_w=length,
        speed_w=np.zeros(DIM + 1),
        ttft_intercept_s=ttft,
        ttft_per_kchar_s=0.0,
        median_tokens_per_s=tps,
        median_ttft_s=ttft,
    )


MODEL = RouterModel(
    encoder="test",
    feature_names=("f0", "f1"),
    mean=np.zeros(DIM),
    std=np.ones(DIM),
    arms={
        "small": arm_model(0.2, 100, 100.0),  # latency ~1.1 s
        "spec": arm_model(0.2, 100, 150.0),  # latency ~0.77 s
        "big": arm_model(0.6, 100, 20.0, ttft=0.5),  # latency ~5.5 s
    },
    # named levels: how far below the prompt's best arm an arm may be and still qualify
    calibration=Calibration(balanced_weight=0.02, accuracy_levels={"high": 0.0, "medium": 0.1, "low": 0.45}),
)
ARMS = {
    name: Arm(name=name, model=name, strategy=build_strategy({"kind": "plain"})) for name in ("small", "spec", "big")
}


def states(unhealthy: tuple[str, ...] = ()) -> list[ArmState]:
    return [ArmState(arm=ARMS[n], healthy=n not in unhealthy) for n in ("small", "spec", "big")]


def decide(flags: RouteFlags, unhealthy: tuple[str, ...] = (), x: float = 0.0, max_tokens: int | None = None):
    policy = LearnedPolicy(model=MODEL)
    features = (np.array([x, 0.0]), 0.1)
    return policy.decide(RouteRequest(flags=flags, features=features, max_tokens=max_tokens), states(unhealthy))


@pytest.mark.parametrize(
    ("flags", "unhealthy", "x", "arm", "reason"),
    [
        (RouteFlags(prefer="speed"), (), 0.0, "spec", "prefer-speed"),
        (RouteFlags(prefer="quality"), (), 0.0, "big", "prefer-quality"),
        # balanced: 0.6 - 0.02*5.5 = 0.49 beats 0.2 - 0.02*0.77
        (RouteFlags(), (), 0.0, "big", "prefer-balanced"),
        (RouteFlags(accuracy="high", prefer="speed"), (), 0.0, "big", "prefer-speed"),
        # an accuracy flag without a preference picks the fastest arm that meets it
        (RouteFlags(accuracy="low"), (), 0.0, "spec", "prefer-speed"),
        (RouteFlags(accuracy=0.15, prefer="speed"), (), 0.0, "spec", "prefer-speed"),
        # levels are relative to the prompt's best arm: on a hard prompt (x=1) 'high' still means big
        (RouteFlags(accuracy="high", prefer="speed"), (), 1.0, "big", "prefer-speed"),
        (RouteFlags(accuracy="low", prefer="speed"), (), 1.0, "spec", "prefer-speed"),
        # equal quality: the faster arm wins the tie
        (RouteFlags(max_latency_ms=2000, prefer="quality"), (), 0.0, "spec", "prefer-quality"),
        (RouteFlags(max_latency_ms=2000, prefer="quality"), ("spec",), 0.0, "small", "prefer-quality"),
        # nothing reaches 0.99: the highest quality, and the reason says so
        (RouteFlags(accuracy=0.99), (), 0.0, "big", "accuracy-unmet"),
        # the accurate arm is over budget: by default the budget wins
        (RouteFlags(accuracy="high", max_latency_ms=1000), (), 0.0, "spec", "accuracy-unmet"),
        (RouteFlags(accuracy="high", max_latency_ms=1000, priority="latency"), (), 0.0, "spec", "accuracy-unmet"),
        # ... unless accuracy has priority: the accurate arm, reported as over budget
        (RouteFlags(accuracy="high", max_latency_ms=1000, priority="accuracy"), (), 0.0, "big", "budget-unmeetable"),
        # no arm fits 500 ms: never silently dropped; the arm likeliest to fit
        (RouteFlags(max_latency_ms=500, prefer="quality"), (), 0.0, "spec", "budget-unmeetable"),
        (RouteFlags(max_ttft_ms=50), (), 0.0, "spec", "budget-unmeetable"),
        (RouteFlags(max_ttft_ms=200, prefer="quality"), (), 0.0, "spec", "prefer-quality"),
        (RouteFlags(prefer="speed"), ("spec",), 0.0, "small", "prefer-speed"),
        (RouteFlags(prefer="quality"), ("big",), 0.0, "spec", "prefer-quality"),
        (RouteFlags(arm="big", prefer="speed"), (), 0.0, "big", "pinned"),
    ],
)
def test_decision_table(flags, unhealthy, x, arm, reason) -> None:
    d = decide(flags, unhealthy, x)
    assert (d.arm.name, d.reason) == (arm, reason)
    assert len(d.ranked) == (1 if reason == "pinned" else 3 - len(unhealthy))
    assert d.ranked[0] == d.arm


def test_exact_ties_go_to_configuration_order() -> None:
    twin = RouterModel(
        encoder="test",
        feature_names=("f0", "f1"),
        mean=np.zeros(DIM),
        std=np.ones(DIM),
        arms={"small": MODEL.arms["small"], "spec": MODEL.arms["small"], "big": MODEL.arms["small"]},
        calibration=MODEL.calibration,
    )
    policy = LearnedPolicy(model=twin)
    for prefer in ("speed", "quality", "balanced"):
        d = policy.decide(RouteRequest(flags=RouteFlags(prefer=prefer), features=(np.zeros(DIM), 0.1)), states())
        assert [a.name for a in d.ranked] == ["small", "spec", "big"]


def test_all_unhealthy_raises() -> None:
    with pytest.raises(NoArmAvailable):
        decide(RouteFlags(), unhealthy=("small", "spec", "big"))


def test_a_pinned_arm_comes_with_its_forecast() -> None:
    d = decide(RouteFlags(arm="big"))
    assert d.reason == "pinned" and set(d.predictions) == {"big"} and d.predictions["big"].latency_s > 0


def test_pinned_unhealthy_raises() -> None:
    with pytest.raises(NoArmAvailable):
        decide(RouteFlags(arm="big"), unhealthy=("big",))


def test_predictions_and_max_tokens_cap() -> None:
    d = decide(RouteFlags(), max_tokens=10)
    assert set(d.predictions) == {"small", "spec", "big"}
    assert d.predictions["big"].output_tokens == pytest.approx(10)
    assert d.predictions["spec"].latency_s == pytest.approx(0.1 + 10 / 150)


def test_live_speed_ratio_corrects_the_forecast() -> None:
    policy = LearnedPolicy(model=MODEL)
    slow_spec = [ArmState(arm=ARMS["small"]), ArmState(arm=ARMS["spec"], speed_ratio=0.5), ArmState(arm=ARMS["big"])]
    d = policy.decide(RouteRequest(flags=RouteFlags(prefer="speed"), features=(np.zeros(DIM), 0.1)), slow_spec)
    assert d.arm.name == "small"  # the speculative arm is measured slow right now: routed around


def test_deterministic() -> None:
    picks = {decide(RouteFlags(), x=0.3).arm.name for _ in range(20)}
    assert len(picks) == 1


def test_bind_refuses_unknown_arm() -> None:
    policy = LearnedPolicy(model=MODEL)
    extra = Arm(name="new-arm", model="m", strategy=build_strategy({"kind": "plain"}))
    with pytest.raises(ValueError, match="new-arm"):
        policy.bind([ARMS["small"], extra])


def test_a_loaded_arm_is_routed_around_and_load_share_scales_it() -> None:
    features = (np.zeros(DIM), 0.1)
    # spec idle: 0.1 + 100/150 = 0.77 s; with two in flight at load_share 1 (x3): 2.3 s, slower than small (1.1 s)
    busy_spec = [ArmState(arm=ARMS["small"]), ArmState(arm=ARMS["spec"], load=2.0), ArmState(arm=ARMS["big"])]
    request = RouteRequest(flags=RouteFlags(prefer="speed"), features=features)
    d = LearnedPolicy(model=MODEL, load_share=1.0).decide(request, busy_spec)
    assert d.arm.name == "small"
    assert d.predictions["spec"].latency_s == pytest.approx(3 * (0.1 + 100 / 150))
    # the measured default (0.05): two streams in flight cost 10 %, spec stays the fastest
    assert LearnedPolicy(model=MODEL).decide(request, busy_spec).arm.name == "spec"
    # a GPU-like backend that batches for free: the load does not matter
    assert LearnedPolicy(model=MODEL, load_share=0.0).decide(request, busy_spec).arm.name == "spec"
    # a little batching gain: 1 + 0.1 * 2 = 1.2 x 0.77 s is still faster than small
    assert LearnedPolicy(model=MODEL, load_share=0.1).decide(request, busy_spec).arm.name == "spec"


@pytest.mark.parametrize("bad", [-0.5, 11, "1", True])
def test_load_share_is_validated(bad: object) -> None:
    with pytest.raises(ValueError, match="load_share"):
        LearnedPolicy(model=MODEL, load_share=bad)  # type: ignore[arg-type]


def test_all_arms_at_once_equal_each_arm_alone() -> None:
    """RouterModel.predict stacks the heads into one product; it must match ArmModel.predict per arm."""
    rng = np.random.default_rng(7)
    dim = 9

    def random_arm() -> ArmModel:
        return ArmModel(
            quality_w=rng.normal(0, 3, dim + 1),
            length_w=rng.normal(0, 2, dim + 1),
            speed_w=rng.normal(0, 2, dim + 1),  # large enough to hit the +-2 clip
            ttft_intercept_s=float(rng.uniform(0.05, 0.5)),
            ttft_per_kchar_s=float(rng.uniform(0, 0.1)),
            median_tokens_per_s=float(rng.uniform(5, 50)),
            median_ttft_s=float(rng.uniform(0.05, 0.5)),
        )

    arms = {f"a{i}": random_arm() for i in range(5)}
    names = tuple(f"f{i}" for i in range(dim))
    model = RouterModel("test", names, np.zeros(dim), np.ones(dim), arms, MODEL.calibration)
    for trial in range(50):
        x = rng.normal(0, 1 + trial / 5, dim)  # up to extreme inputs: logits past +-30, lengths past max_tokens
        live = [(n, 1.0 if i % 2 else 1.3, 1.0 if i % 3 else 0.7, 1.0 + 0.05 * i) for i, n in enumerate(arms)]
        together = model.predict(x, 1.7, 200 if trial % 2 else None, live)
        for name, ttft, tps, slow in live:
            alone = arms[name].predict(x, 1.7, 200 if trial % 2 else None, ttft, tps, slow)
            assert astuple(together[name])[:5] == pytest.approx(astuple(alone)[:5], rel=1e-12), (trial, name)


def with_margins(p90: dict[str, float]) -> RouterModel:
    """MODEL with conformal margins: each arm's p90 multiplier as given, 1 at every other quantile."""
    from dataclasses import replace as dc_replace

    from router.calibration import QUANTILES, LatencyMargins

    rows = {a: tuple(m if q == 0.9 else 1.0 for q in QUANTILES) for a, m in p90.items()}
    margins = LatencyMargins(overall=rows, buckets={}, ttft=rows)
    return dc_replace(MODEL, calibration=dc_replace(MODEL.calibration, margins=margins))


def test_budgets_are_checked_against_the_calibrated_upper_bound() -> None:
    """spec's point forecast (0.77 s) fits 1 s, but its p90 (x1.5 = 1.15 s) does not; small's does (1.1 s)."""
    policy = LearnedPolicy(model=with_margins({"small": 1.0, "spec": 1.5, "big": 1.0}))
    req = RouteRequest(flags=RouteFlags(max_latency_ms=1150, prefer="speed"), features=(np.zeros(2), 0.1))
    d = policy.decide(req, states())
    assert (d.arm.name, d.reason) == ("small", "prefer-speed")
    assert d.predictions["spec"].latency_bound_s == pytest.approx(1.5 * d.predictions["spec"].latency_s)
    median = LearnedPolicy(model=with_margins({"small": 1.0, "spec": 1.5, "big": 1.0}), latency_quantile=0.5)
    assert median.decide(req, states()).arm.name == "spec"  # at the median the point forecast is the bound


def test_strict_refuses_what_cannot_be_met_and_names_the_flag() -> None:
    from router import RouteUnmeetable

    with pytest.raises(RouteUnmeetable) as exc:
        decide(RouteFlags(max_latency_ms=100, strict=True))
    assert exc.value.param == "route.max_latency_ms" and "100 ms" in exc.value.message
    with pytest.raises(RouteUnmeetable) as exc:
        decide(RouteFlags(accuracy=0.99, strict=True))
    assert exc.value.param == "route.accuracy"
    with pytest.raises(RouteUnmeetable) as exc:
        decide(RouteFlags(accuracy="high", max_latency_ms=1000, strict=True))
    assert exc.value.param == "route.accuracy" and "both" in exc.value.message
    assert decide(RouteFlags(max_latency_ms=2000, strict=True)).reason == "prefer-balanced"  # met: no error


def test_live_measurements_move_a_forecast_a_bounded_amount() -> None:
    """Streams measured 20x slower than forecast may only slow an arm's forecast by live_bound."""
    policy = LearnedPolicy(model=MODEL, live_bound=1.5)
    slow = [ArmState(arm=ARMS[n], speed_ratio=0.05 if n == "big" else None) for n in ("small", "spec", "big")]
    p = policy.predict(RouteRequest(features=(np.zeros(2), 0.1)), slow)["big"]
    assert p.tokens_per_s == pytest.approx(20.0 / 1.5)
    with pytest.raises(ValueError, match="live_bound"):
        LearnedPolicy(model=MODEL, live_bound=0.5)


def test_live_ratios_scale_the_forecast_and_are_reported() -> None:
    policy = LearnedPolicy(model=MODEL, load_share=0.05)
    request = RouteRequest(features=(np.zeros(2), 0.1))
    idle = policy.predict(request, [ArmState(arm=ARMS["big"])])["big"]
    slow = policy.predict(request, [ArmState(arm=ARMS["big"], ttft_ratio=1.2, speed_ratio=0.8)])["big"]
    assert slow.ttft_s == pytest.approx(idle.ttft_s * 1.2)
    assert slow.tokens_per_s == pytest.approx(idle.tokens_per_s * 0.8)
    assert (slow.live_ttft_ratio, slow.live_speed_ratio) == (1.2, 0.8)
    assert slow.as_dict()["live_speed_ratio"] == 0.8 and "live_speed_ratio" not in idle.as_dict()
    # load multiplies on top: the ratios were measured against forecasts that included their load
    busy = policy.predict(request, [ArmState(arm=ARMS["big"], load=4, ttft_ratio=1.2, speed_ratio=0.8)])["big"]
    assert busy.tokens_per_s == pytest.approx(slow.tokens_per_s / 1.2)


def test_observed_residuals_widen_the_bound_online() -> None:
    policy = LearnedPolicy(model=with_margins({"small": 1.0, "spec": 1.0, "big": 1.0}))
    req = RouteRequest(flags=RouteFlags(max_latency_ms=1000, prefer="speed"), features=(np.zeros(2), 0.1))
    assert policy.decide(req, states()).arm.name == "spec"
    for _ in range(50):
        policy.observe("spec", 0.77, 1.6)  # spec now runs twice as slow as predicted
    d = policy.decide(req, states())
    assert d.arm.name != "spec" or d.reason == "budget-unmeetable"
    assert d.predictions["spec"].latency_bound_s > 1.0


def explore_decisions(flags: RouteFlags, n: int, explore: float = 0.3, seed: int | None = 7) -> list:
    policy = LearnedPolicy(model=MODEL, explore=explore, seed=seed)
    req = RouteRequest(flags=flags, features=(np.zeros(DIM), 0.1))
    return [policy.decide(req, states()) for _ in range(n)]


def test_exploration_is_off_by_default() -> None:
    policy = LearnedPolicy(model=MODEL)
    assert policy.explore == 0.0
    decisions = [decide(RouteFlags()) for _ in range(50)]
    assert {(d.arm.name, d.reason, d.propensity) for d in decisions} == {("big", "prefer-balanced", 1.0)}


def test_exploration_is_deterministic_with_a_seed() -> None:
    first = [(d.arm.name, d.reason, d.propensity) for d in explore_decisions(RouteFlags(), 200)]
    again = [(d.arm.name, d.reason, d.propensity) for d in explore_decisions(RouteFlags(), 200)]
    assert first == again
    assert {name for name, _, _ in first} == {"small", "spec", "big"}


@pytest.mark.parametrize(
    ("flags", "feasible"),
    [
        (RouteFlags(), {"small", "spec", "big"}),
        (RouteFlags(max_latency_ms=2000), {"small", "spec"}),  # big (5.5 s) breaks the budget
        (RouteFlags(accuracy=0.5), {"big"}),  # only big reaches the floor
        (RouteFlags(accuracy="low", max_latency_ms=2000, prefer="quality"), {"small", "spec"}),
    ],
)
def test_exploration_stays_inside_the_flags_and_propensities_sum_to_one(flags: RouteFlags, feasible: set[str]) -> None:
    decisions = explore_decisions(flags, 3000)
    chosen = {d.arm.name for d in decisions}
    assert chosen == feasible
    propensity = {d.arm.name: d.propensity for d in decisions}  # a fixed number per arm and request
    assert all(propensity[d.arm.name] == d.propensity for d in decisions)
    assert sum(propensity.values()) == pytest.approx(1.0)
    greedy = decide(flags).arm.name
    assert propensity[greedy] == pytest.approx(0.7 + 0.3 / len(feasible))
    for name, p in propensity.items():  # the draws follow the propensities
        share = sum(d.arm.name == name for d in decisions) / len(decisions)
        assert share == pytest.approx(p, abs=0.04)
        assert all(
            d.reason == ("explore" if name != greedy else decide(flags).reason) for d in decisions if d.arm.name == name
        )
    if len(feasible) > 1:
        explored = next(d for d in decisions if d.reason == "explore")
        assert explored.ranked[0] == explored.arm and len(explored.ranked) == 3


@pytest.mark.parametrize("flags", [RouteFlags(max_latency_ms=500), RouteFlags(accuracy=0.99), RouteFlags(arm="small")])
def test_no_exploration_when_nothing_meets_the_flags_or_the_arm_is_pinned(flags: RouteFlags) -> None:
    decisions = explore_decisions(flags, 200, explore=0.5)
    assert len({d.arm.name for d in decisions}) == 1
    assert all(d.propensity == 1.0 and d.reason != "explore" for d in decisions)


def test_strict_without_a_feasible_arm_still_refuses() -> None:
    from router import RouteUnmeetable

    policy = LearnedPolicy(model=MODEL, explore=0.5, seed=1)
    with pytest.raises(RouteUnmeetable):
        policy.decide(
            RouteRequest(flags=RouteFlags(max_latency_ms=100, strict=True), features=(np.zeros(2), 0.1)), states()
        )


def test_the_explored_set_is_the_set_choose_calls_feasible() -> None:
    """feasible_arms and router.choice agree: an arm is feasible exactly when choose, offered that arm
    alone, reports a preference (not budget-unmeetable / accuracy-unmet)."""
    from router.choice import choose
    from router.learned import feasible_arms

    policy = LearnedPolicy(model=with_margins({"small": 1.2, "spec": 1.5, "big": 1.0}))
    rng = np.random.default_rng(0)
    for _ in range(300):
        flags = RouteFlags(
            accuracy=rng.choice([None, 0.2, 0.5, "low", "medium", "high"]),  # type: ignore[arg-type]
            max_latency_ms=rng.choice([None, 800, 1000, 1200, 1500, 6000]),  # type: ignore[arg-type]
            max_ttft_ms=rng.choice([None, 90, 120, 600]),  # type: ignore[arg-type]
        )
        req = RouteRequest(flags=flags, features=(np.array([rng.normal(), 0.0]), 0.1))
        preds = policy.predict(req, states())
        floor = policy.accuracy_floor(flags.accuracy, preds)
        alone = {s.arm.name for s in states() if choose(flags, [s], preds, floor, 0.0).reason.startswith("prefer-")}
        assert {a.name for a in feasible_arms(flags, states(), preds, floor)} == alone, flags


@pytest.mark.parametrize(("param", "bad"), [("explore", 0.6), ("explore", -0.1), ("explore", True), ("seed", "x")])
def test_exploration_parameters_are_validated(param: str, bad: object) -> None:
    with pytest.raises(ValueError, match=param):
        LearnedPolicy(model=MODEL, **{param: bad})  # type: ignore[arg-type]


def test_strategy_arms_show_their_predicted_speedup_over_the_plain_arm() -> None:
    spec = Arm(
        name="spec",
        model="small",
        strategy=build_strategy({"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4}),
    )
    small = Arm(name="small", model="small", strategy=build_strategy({"kind": "plain"}))
    policy = LearnedPolicy(model=MODEL)
    preds = policy.predict(RouteRequest(features=(np.zeros(2), 0.1)), [ArmState(arm=small), ArmState(arm=spec)])
    assert preds["spec"].speedup == pytest.approx(150.0 / 100.0)
    assert preds["small"].speedup is None and "speedup" not in preds["small"].as_dict()
    alone = policy.predict(RouteRequest(features=(np.zeros(2), 0.1)), [ArmState(arm=spec)])
    assert alone["spec"].speedup is None  # no plain arm of that model among the candidates


def test_quality_differences_under_one_point_are_ties_broken_by_latency() -> None:
    from router.choice import QUALITY_RESOLUTION, choose
    from router.predictor import Prediction

    def pred(q: float, lat: float) -> Prediction:
        return Prediction(quality=q, output_tokens=100, ttft_s=0.1, tokens_per_s=100 / lat, latency_s=lat)

    preds = {"small": pred(0.001, 6.0), "spec": pred(0.0, 3.0), "big": pred(0.001 + QUALITY_RESOLUTION / 2, 20.0)}
    d = choose(RouteFlags(prefer="quality"), states(), preds, None, 0.0)
    assert d.arm.name == "spec", "no arm is meaningfully better: the fastest wins"
    preds["big"] = pred(0.05, 20.0)
    d = choose(RouteFlags(prefer="quality"), states(), preds, None, 0.0)
    assert [a.name for a in d.ranked] == ["big", "small", "spec"]  # outside the tie: by quality


def test_a_floor_never_switches_a_budget_off_that_no_arm_fits() -> None:
    """Nothing fits 500 ms and only big reaches 'high': by default the budget still decides (the arm
    likeliest to fit), not the floor; with priority accuracy, the accurate arm."""
    d = decide(RouteFlags(accuracy="high", max_latency_ms=500))
    assert (d.arm.name, d.reason) == ("spec", "budget-unmeetable")
    d = decide(RouteFlags(accuracy="high", max_latency_ms=500, priority="accuracy"))
    assert (d.arm.name, d.reason) == ("big", "budget-unmeetable")


def test_a_speculative_arm_has_its_plain_siblings_quality() -> None:
    """Speculative decoding is lossless: the same answer, so the same quality, whatever its own head says."""
    spec = Arm(
        name="spec",
        model="small",
        strategy=build_strategy({"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4}),
    )
    small = Arm(name="small", model="small", strategy=build_strategy({"kind": "plain"}))
    odd = RouterModel(
        encoder="test",
        feature_names=("f0", "f1"),
        mean=np.zeros(DIM),
        std=np.ones(DIM),
        arms={"small": MODEL.arms["small"], "spec": arm_model(0.9, 100, 150.0), "big": MODEL.arms["big"]},
        calibration=MODEL.calibration,
    )
    policy = LearnedPolicy(model=odd)
    req = RouteRequest(features=(np.zeros(2), 0.1))
    preds = policy.predict(req, [ArmState(arm=small), ArmState(arm=spec)])
    assert preds["spec"].quality == preds["small"].quality == pytest.approx(0.2)
    alone = policy.predict(req, [ArmState(arm=spec)])
    assert alone["spec"].quality == pytest.approx(0.9)  # no sibling among the candidates: its own head


def test_prediction_replaced_is_dataclasses_replace() -> None:
    """The per-request fast copy gives what ``dataclasses.replace`` gives, and refuses unknown names."""
    import dataclasses

    from router.predictor import Prediction

    p = Prediction(0.5, 100.0, 0.1, 30.0, 3.0, latency_bound_s=4.0, live_speed_ratio=1.2)
    for changes in ({}, {"quality": 0.7}, {"latency_bound_s": None, "speedup": 1.5, "ttft_bound_s": 0.3}):
        q = p.replaced(**changes)
        assert q == dataclasses.replace(p, **changes) and q is not p
        assert type(q) is Prediction and hash(q) == hash(dataclasses.replace(p, **changes))
    assert p.quality == 0.5, "the original is unchanged"
    with pytest.raises(TypeError, match="qualty"):
        p.replaced(qualty=0.1)
