"""The rule-based ``least-loaded`` policy as a decision table, and the policy registry."""

from __future__ import annotations

from typing import Any

import pytest

from router import (
    Arm,
    ArmState,
    Decision,
    NoArmAvailable,
    RouteFlags,
    RouteRequest,
    available_policies,
    build_policy,
    build_strategy,
)

NAMES = ("a", "b", "c")
ARMS = {n: Arm(name=n, model="m", strategy=build_strategy({"kind": "plain"})) for n in NAMES}


def state(
    name: str, load: float = 0.0, healthy: bool = True, ttft: float | None = None, tps: float | None = None
) -> ArmState:
    return ArmState(arm=ARMS[name], healthy=healthy, load=load, ttft_s=ttft, tokens_per_s=tps)


def decide(states: list[ArmState], **request: Any) -> Decision:
    flags = RouteFlags(**request.pop("flags", {}))
    return build_policy("least-loaded").decide(RouteRequest(flags=flags, **request), states)


@pytest.mark.parametrize(
    ("states", "request_", "arm", "reason", "ranked"),
    [
        # least loaded wins; ranked by load
        ([state("a", 2), state("b", 0), state("c", 1)], {}, "b", "least-loaded", "bca"),
        # fractional load (KV-cache use) breaks ties between equal request counts
        ([state("a", 1.4), state("b", 1.2)], {}, "b", "least-loaded", "ba"),
        # ties go to configuration order
        ([state("a", 1), state("b", 1), state("c", 1)], {}, "a", "least-loaded", "abc"),
        ([state("c", 0), state("a", 0)], {}, "c", "least-loaded", "ca"),
        # unhealthy arms are skipped, however idle, and left out of the ranking
        ([state("a", 0, healthy=False), state("b", 5), state("c", 3)], {}, "c", "least-loaded", "cb"),
        # a pinned arm wins over load, and is the only one ranked
        ([state("a", 0), state("b", 9)], {"flags": {"arm": "b"}}, "b", "pinned", "b"),
        ([state("a", 0)], {"flags": {"arm": "a"}}, "a", "pinned", "a"),
        # prefer=speed with measurements: expected latency ttft + max_tokens / tokens_per_s
        (
            [state("a", ttft=0.05, tps=10), state("b", ttft=2.0, tps=200)],
            {"flags": {"prefer": "speed"}, "max_tokens": 1},
            "a",  # 0.15 s against 2.005 s
            "fastest-measured",
            "ab",
        ),
        (
            [state("a", ttft=0.05, tps=10), state("b", ttft=2.0, tps=200)],
            {"flags": {"prefer": "speed"}, "max_tokens": 1000},
            "b",  # 100.05 s against 7 s
            "fastest-measured",
            "ba",
        ),
        (
            [state("a", ttft=0.1, tps=50), state("b", ttft=0.1, tps=100)],
            {"flags": {"prefer": "speed"}},  # no max_tokens: 256 assumed
            "b",
            "fastest-measured",
            "ba",
        ),
        (  # load scales the expected latency: the fast arm is busy
            [state("a", load=0, ttft=0.1, tps=50), state("b", load=3, ttft=0.1, tps=100)],
            {"flags": {"prefer": "speed"}},
            "a",
            "fastest-measured",
            "ab",
        ),
        (  # an unhealthy arm's measurements do not count
            [state("a", ttft=0.1, tps=50), state("b", healthy=False, ttft=0.01, tps=1000)],
            {"flags": {"prefer": "speed"}},
            "a",
            "fastest-measured",
            "a",
        ),
        # prefer=speed without a measurement for every healthy arm: least-loaded
        (
            [state("a", 1, ttft=0.1, tps=50), state("b", 0)],
            {"flags": {"prefer": "speed"}},
            "b",
            "least-loaded",
            "ba",
        ),
        # other preferences know nothing of quality here: least-loaded
        ([state("a", 1), state("b", 0)], {"flags": {"prefer": "quality"}}, "b", "least-loaded", "ba"),
        # a single arm is chosen without ranking
        ([state("c", 7)], {}, "c", "single-arm", "c"),
    ],
)
def test_decision_table(states: list[ArmState], request_: dict[str, Any], arm: str, reason: str, ranked: str) -> None:
    d = decide(states, **request_)

    assert (d.arm.name, d.reason) == (arm, reason)
    assert "".join(a.name for a in d.ranked) == ranked
    assert d.ranked[0] is d.arm


@pytest.mark.parametrize(
    ("states", "flags", "message"),
    [
        ([state("a", healthy=False), state("b", healthy=False)], {}, "no candidate arm has a healthy backend"),
        ([state("a", healthy=False)], {}, "no candidate arm has a healthy backend"),
        ([], {}, "no candidate arm"),
        ([state("a"), state("b", healthy=False)], {"arm": "b"}, "pinned arm 'b' has no healthy backend"),
        ([state("a"), state("b")], {"arm": "c"}, "pinned arm 'c' is not among the candidates"),
    ],
)
def test_no_arm_available(states: list[ArmState], flags: dict[str, Any], message: str) -> None:
    with pytest.raises(NoArmAvailable, match=message):
        decide(states, flags=flags)


def test_same_inputs_same_decision() -> None:
    states = [state("a", 1, ttft=0.2, tps=40), state("b", 1, ttft=0.2, tps=40), state("c", 1)]
    for flags in ({}, {"prefer": "speed"}):
        decisions = {
            (d.arm.name, d.reason, tuple(a.name for a in d.ranked))
            for d in (decide(list(states), flags=flags) for _ in range(50))
        }
        assert decisions == {("a", "least-loaded", ("a", "b", "c"))}


def test_registry() -> None:
    assert {"least-loaded", "learned"} <= set(available_policies())
    assert build_policy("least-loaded").name == "least-loaded"
    with pytest.raises(ValueError, match="unknown routing policy 'random'; available: learned, least-loaded"):
        build_policy("random")
    with pytest.raises(ValueError, match="routing policy 'least-loaded': bad parameters"):
        build_policy("least-loaded", {"threshold": 0.5})
    assert build_policy("least-loaded", {"assumed_output_tokens": 64}).assumed_output_tokens == 64  # type: ignore[attr-defined]
