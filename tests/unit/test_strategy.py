"""The strategy registry: kinds by name, validated parameters, stable low-cardinality labels."""

from __future__ import annotations

from typing import Any

import pytest

from router import StrategyError, available_strategies, build_strategy
from router.strategy import (
    LayerSkipStrategy,
    PDRStrategy,
    PlainStrategy,
    SpeculativeStrategy,
    Strategy,
    register_strategy,
)


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
        ({"kind": "layer-skip", "dropped": 4}, LayerSkipStrategy, "layer-skip-d4", {"dropped": 4}),
        (
            {"kind": "layer-skip", "dropped": 8, "source": "smollm2-135m"},
            LayerSkipStrategy,
            "layer-skip-d8",
            {"dropped": 8, "source": "smollm2-135m"},
        ),
        ({"kind": "layer-skip", "keep_ratio": 0.75}, LayerSkipStrategy, "layer-skip-k75", {"keep_ratio": 0.75}),
        ({"kind": "layer-skip", "keep_ratio": 0.9}, LayerSkipStrategy, "layer-skip-k90", None),
        (
            {"kind": "pdr"},
            PDRStrategy,
            "pdr-n4-r1",
            {
                "drafts": 4,
                "rounds": 1,
                "workspace_tokens": 512,
                "draft_max_tokens": 1024,
                "draft_temperature": 0.8,
            },
        ),
        (
            {
                "kind": "pdr",
                "drafts": 1,
                "rounds": 4,
                "workspace_tokens": 64,
                "draft_max_tokens": 16,
                "draft_temperature": 0,
                "draft_arm": "smol-plain",
                "refine_arm": "qwen-plain",
            },
            PDRStrategy,
            "pdr-n1-r4",
            {
                "drafts": 1,
                "rounds": 4,
                "workspace_tokens": 64,
                "draft_max_tokens": 16,
                "draft_temperature": 0.0,
                "draft_arm": "smol-plain",
                "refine_arm": "qwen-plain",
            },
        ),
        ({"kind": "pdr", "drafts": 16, "rounds": 2, "workspace_tokens": 4096}, PDRStrategy, "pdr-n16-r2", None),
        ({"kind": "pdr", "draft_temperature": 2}, PDRStrategy, "pdr-n4-r1", None),
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
        ({}, "strategy needs a 'kind'; available: layer-skip, pdr, plain, speculative"),
        ({"kind": ""}, "strategy needs a 'kind'"),
        ({"kind": 3}, "strategy needs a 'kind'"),
        ({"kind": "medusa"}, "unknown strategy kind 'medusa'; available: layer-skip, pdr, plain, speculative"),
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
        ({"kind": "layer-skip"}, "give exactly one of 'dropped' and 'keep_ratio'"),
        ({"kind": "layer-skip", "dropped": 4, "keep_ratio": 0.8}, "give exactly one of 'dropped' and 'keep_ratio'"),
        ({"kind": "layer-skip", "dropped": 0}, "dropped must be an integer in 1..256, got 0"),
        ({"kind": "layer-skip", "dropped": 257}, "in 1..256, got 257"),
        ({"kind": "layer-skip", "dropped": 4.0}, "in 1..256, got 4.0"),
        ({"kind": "layer-skip", "dropped": True}, "in 1..256, got True"),
        ({"kind": "layer-skip", "dropped": "4"}, "in 1..256, got '4'"),
        ({"kind": "layer-skip", "keep_ratio": 1.0}, "keep_ratio must be a number in (0, 1), got 1.0"),
        ({"kind": "layer-skip", "keep_ratio": 0}, "keep_ratio must be a number in (0, 1), got 0"),
        ({"kind": "layer-skip", "keep_ratio": "0.5"}, "keep_ratio must be a number in (0, 1), got '0.5'"),
        ({"kind": "layer-skip", "dropped": 4, "source": ""}, "source must be a non-empty string"),
        ({"kind": "layer-skip", "dropped": 4, "layers": [3]}, "strategy 'layer-skip': unknown parameter(s) ['layers']"),
        ({"kind": "pdr", "n": 4}, "strategy 'pdr': unknown parameter(s) ['n']"),
        ({"kind": "pdr", "drafts": 0}, "strategy 'pdr': drafts must be an integer in 1..16, got 0"),
        ({"kind": "pdr", "drafts": 17}, "drafts must be an integer in 1..16, got 17"),
        ({"kind": "pdr", "drafts": 4.0}, "drafts must be an integer in 1..16, got 4.0"),
        ({"kind": "pdr", "drafts": True}, "drafts must be an integer in 1..16, got True"),
        ({"kind": "pdr", "drafts": None}, "drafts must be an integer in 1..16, got None"),
        ({"kind": "pdr", "rounds": 0}, "rounds must be an integer in 1..4, got 0"),
        ({"kind": "pdr", "rounds": 5}, "rounds must be an integer in 1..4, got 5"),
        ({"kind": "pdr", "workspace_tokens": 63}, "workspace_tokens must be an integer in 64..4096, got 63"),
        ({"kind": "pdr", "workspace_tokens": 4097}, "workspace_tokens must be an integer in 64..4096, got 4097"),
        ({"kind": "pdr", "draft_max_tokens": 15}, "draft_max_tokens must be an integer in 16..32768, got 15"),
        ({"kind": "pdr", "draft_max_tokens": "512"}, "draft_max_tokens must be an integer in 16..32768, got '512'"),
        ({"kind": "pdr", "draft_temperature": -0.1}, "draft_temperature must be a number in [0, 2], got -0.1"),
        ({"kind": "pdr", "draft_temperature": 2.5}, "draft_temperature must be a number in [0, 2], got 2.5"),
        ({"kind": "pdr", "draft_temperature": "hot"}, "draft_temperature must be a number in [0, 2], got 'hot'"),
        ({"kind": "pdr", "draft_temperature": False}, "draft_temperature must be a number in [0, 2], got False"),
        ({"kind": "pdr", "draft_arm": ""}, "draft_arm must be a non-empty arm name, got ''"),
        ({"kind": "pdr", "refine_arm": 3}, "refine_arm must be a non-empty arm name, got 3"),
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
    assert available_strategies() == ["layer-skip", "pdr", "plain", "speculative"]
    with pytest.raises(StrategyError, match="strategy kind 'plain' registered twice"):
        register_strategy("plain")(PlainStrategy)


def test_strategies_are_values() -> None:
    a = build_strategy({"kind": "speculative", "num_speculative_tokens": 4})
    b = build_strategy({"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4})
    assert a == b
    assert a != build_strategy({"kind": "plain"})


def test_pdr_exposes_typed_parameters() -> None:
    s = build_strategy({"kind": "pdr", "drafts": 3, "rounds": 2, "draft_temperature": 1, "refine_arm": "big"})
    assert isinstance(s, PDRStrategy)
    assert (s.drafts, s.rounds, s.workspace_tokens, s.draft_max_tokens) == (3, 2, 512, 1024)
    assert s.draft_temperature == 1.0 and isinstance(s.draft_temperature, float)
    assert (s.draft_arm, s.refine_arm) == (None, "big")


@pytest.mark.parametrize(
    "params",
    [
        {"kind": "plain"},
        {"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4},
        {"kind": "speculative", "method": "draft", "num_speculative_tokens": 2},
        {"kind": "layer-skip", "dropped": 6},
        {"kind": "layer-skip", "keep_ratio": 0.75},
        {"kind": "pdr", "drafts": 4, "rounds": 2},
    ],
)
def test_a_label_names_its_strategy_back(params: dict[str, object]) -> None:
    from router.strategy import strategy_from_label

    s = build_strategy(params)
    back = strategy_from_label(s.label)
    assert (back.kind, back.label) == (s.kind, s.label)


def test_an_unknown_label_is_refused() -> None:
    from router.strategy import strategy_from_label

    with pytest.raises(StrategyError, match="no strategy writes"):
        strategy_from_label("beam-search-4")
