"""The task-family classifier (router/families.py): fitted on profiles, stored in artifacts, named by
decisions, counted by the gateway."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gateway.metrics import GatewayMetrics
from router import Arm, ArmState, RouteFlags, RouteRequest, build_strategy
from router.artifact import ArtifactError, load_artifact, save_artifact
from router.families import FamilyClassifier, fit_families, held_out_accuracy
from router.learned import LearnedPolicy
from router.predictor import ArmModel, Calibration, RouterModel

FAMILIES = ("chat", "code", "maths")


def _data(n: int = 90, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Three families, each around its own corner of a 3-d feature space."""
    rng = np.random.default_rng(seed)
    x_of, family_of = {}, {}
    for i in range(n):
        fam = FAMILIES[i % 3]
        centre = np.eye(3)[i % 3] * 3.0
        x_of[f"p{i:03d}"] = centre + rng.normal(size=3)
        family_of[f"p{i:03d}"] = fam
    return x_of, family_of


def test_a_classifier_learns_separable_families_and_names_them() -> None:
    x_of, family_of = _data()
    clf = fit_families(x_of, family_of, sorted(x_of))
    assert clf is not None and clf.names == FAMILIES
    assert clf.weights.shape == (4, 3)
    assert clf.predict(np.array([0.0, 0.0, 3.0])) == "maths"
    folds = {i: k % 5 for k, i in enumerate(sorted(x_of))}
    acc = held_out_accuracy(x_of, family_of, folds, 5)
    assert acc is not None and acc > 0.9


def test_too_few_prompts_of_a_family_are_not_a_family() -> None:
    x_of, family_of = _data(30)
    family_of["p000"] = "rare"  # one prompt: not learned
    clf = fit_families(x_of, family_of, sorted(x_of))
    assert clf is not None and "rare" not in clf.names
    only_one = {i: "chat" for i in x_of}
    assert fit_families(x_of, only_one, sorted(x_of)) is None


def _model(families: FamilyClassifier | None) -> RouterModel:
    arm = ArmModel(
        quality_w=np.zeros(4),
        length_w=np.zeros(4),
        speed_w=np.zeros(4),
        ttft_intercept_s=0.1,
        ttft_per_kchar_s=0.0,
        median_tokens_per_s=10.0,
        median_ttft_s=0.1,
    )
    return RouterModel(
        encoder="none",
        feature_names=("a", "b", "c"),
        mean=np.zeros(3),
        std=np.ones(3),
        arms={"plain": arm, "spec": arm},
        calibration=Calibration(balanced_weight=0.01, accuracy_levels={"high": 0.0, "medium": 0.1, "low": 0.2}),
        families=families,
    )


def test_an_artifact_keeps_its_families_and_an_older_one_loads_without(tmp_path: Path) -> None:
    x_of, family_of = _data()
    clf = fit_families(x_of, family_of, sorted(x_of))
    save_artifact(_model(clf), tmp_path / "with", {})
    loaded = load_artifact(tmp_path / "with")
    assert loaded.families is not None and loaded.families.names == FAMILIES
    np.testing.assert_array_equal(loaded.families.weights, clf.weights)  # type: ignore[union-attr]
    save_artifact(_model(None), tmp_path / "without", {})
    assert load_artifact(tmp_path / "without").families is None
    doc = json.loads((tmp_path / "with" / "router.json").read_text())
    doc["families"] = ["chat", "code"]  # names and weights disagree
    (tmp_path / "with" / "router.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="task-family classifier"):
        load_artifact(tmp_path / "with")


def test_every_decision_names_the_prompts_family_pinned_or_routed() -> None:
    x_of, family_of = _data()
    policy = LearnedPolicy(model=_model(fit_families(x_of, family_of, sorted(x_of))))
    plain = build_strategy({"kind": "plain"})
    states = [ArmState(arm=Arm(name=n, model="m", strategy=plain)) for n in ("plain", "spec")]
    maths = RouteRequest(features=(np.array([0.0, 0.0, 3.0]), 0.1))
    assert policy.decide(maths, states).family == "maths"
    pinned = replace(maths, flags=RouteFlags(arm="spec"))
    assert policy.decide(pinned, states).family == "maths"
    assert policy.task_families == FAMILIES
    assert LearnedPolicy(model=_model(None)).decide(maths, states).family is None


def test_the_gateway_counts_decisions_per_family_from_zero() -> None:
    m = GatewayMetrics()
    m.known_families(FAMILIES, [("m", "plain")])
    text = m.exposition().decode()
    assert 'gateway_routing_family_decisions_total{family="code",model="m",strategy="plain"} 0.0' in text
    m.decision("m", "plain", "prefer-balanced", 0.001, family="code")
    m.decision("m", "plain", "pinned", 0.001)  # no family (a policy without a classifier): not counted
    text = m.exposition().decode()
    assert 'gateway_routing_family_decisions_total{family="code",model="m",strategy="plain"} 1.0' in text
