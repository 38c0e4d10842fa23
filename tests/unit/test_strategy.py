"""The strategy registry: kinds by name, validated parameters, stable low-cardinality labels."""

from __future__ import annotations

from typing import Any

import pytest

from router import StrategyError, available_strategies, build_strategy
from router.strategy import PlainStrategy, SpeculativeStrategy, Strategy, register_strategy


@pytest.mark.parametrize(
    ("spec", "cls", "label", "params"),
    [
        ({"kind": "plain"}, PlainStrategy, "plain", {}),
        (
            {"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4},
            SpeculativeStrategy,
            "speculative-ngram-k4",
            {"method": "ngram", "num_speculative_tokens": 4},
        ),
        (
            {"kind": "speculative", "method": "draft", "num_speculative_tokens": 2},
            SpeculativeStrategy,
            "speculative-draft-k2",
            {"method": "draft", "num_speculative_tokens": 2},
        ),
        (
            {"kind": "speculative", "num_speculative_tokens": 16},
            SpeculativeStrategy,
            "speculative-ngram-k16",
            {"method": "ngram", "num_speculative_tokens": 16},
        ),
        ({"kind": "speculative", "num_speculative_tokens": 1}, SpeculativeStrategy, "speculative-ngram-k1", None),
    ],
)
def test_build_by_kind(spec: dict[str, Any], cls: type[Strategy], label: str, params: dict[str, Any] | None) -> None:
    strategy = build_strategy(spec)

    assert type(strategy) is cls
    assert strategy.kind == spec["kind"]
    assert strategy.label == label
    if params is not None:
        assert dict(strategy.params) == params


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "strategy needs a 'kind'; available: plain, speculative"),
        ({"kind": ""}, "strategy needs a 'kind'"),
        ({"kind": 3}, "strategy needs a 'kind'"),
        ({"kind": "medusa"}, "unknown strategy kind 'medusa'; available: plain, speculative"),
        (
            {"kind": "plain", "num_speculative_tokens": 4},
            "strategy 'plain' takes no parameters, got ['num_speculative_tokens']",
        ),
        ({"kind": "speculative"}, "num_speculative_tokens must be an integer in 1..16, got None"),
        (
            {"kind": "speculative", "num_speculative_tokens": 0},
            "num_speculative_tokens must be an integer in 1..16, got 0",
        ),
        ({"kind": "speculative", "num_speculative_tokens": 17}, "in 1..16, got 17"),
        ({"kind": "speculative", "num_speculative_tokens": 2.0}, "in 1..16, got 2.0"),
        ({"kind": "speculative", "num_speculative_tokens": False}, "in 1..16, got False"),
        (
            {"kind": "speculative", "method": "eagle", "num_speculative_tokens": 2},
            "method must be one of ['ngram', 'draft'], got 'eagle'",
        ),
        ({"kind": "speculative", "num_speculative_tokens": 2, "k": 2}, "unknown parameter(s) ['k']"),
    ],
)
def test_bad_spec_names_the_problem(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(StrategyError) as info:
        build_strategy(spec)
    assert message in str(info.value)


def test_the_spec_mapping_is_not_mutated() -> None:
    spec = {"kind": "speculative", "num_speculative_tokens": 3}
    build_strategy(spec)
    assert spec == {"kind": "speculative", "num_speculative_tokens": 3}


def test_registry_lists_kinds_and_refuses_a_duplicate() -> None:
    assert available_strategies() == ["plain", "speculative"]
    with pytest.raises(StrategyError, match="strategy kind 'plain' registered twice"):
        register_strategy("plain")(PlainStrategy)


def test_strategies_are_values() -> None:
    a = build_strategy({"kind": "speculative", "num_speculative_tokens": 4})
    b = build_strategy({"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4})
    assert a == b
    assert a != build_strategy({"kind": "plain"})
