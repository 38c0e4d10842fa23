"""The two shipped router artifacts: the default routes on cheap prompt features alone, the other on
a MiniLM embedding too; each loads with the encoder it was trained with and makes the decisions the
product promises (maths + accuracy=high to the stronger model, chit-chat + prefer=speed to SmolLM2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from router import Arm, ArmState, RouteFlags, RouteRequest, build_strategy
from router.artifact import ArtifactError
from router.encoder import FeaturesOnly, PromptEncoder, load_encoder
from router.features import FEATURE_NAMES
from router.learned import DEFAULT_ARTIFACT, LearnedPolicy

ARTIFACTS = Path(__file__).resolve().parents[2] / "router" / "artifacts"
MATHS = (
    "A baker sells 14 boxes of 12 muffins each day for 6 days and throws away 37 muffins. "
    "How many muffins does she sell? Solve step by step and finish with 'The answer is N.'"
)
CHAT = "hi there! how are you today?"
SMOL = {"smollm2-plain", "smollm2-spec-ngram4"}


def states(policy: LearnedPolicy) -> list[ArmState]:
    return [
        ArmState(arm=Arm(name=n, model=n.split("-")[0], strategy=build_strategy({"kind": "plain"})), healthy=True)
        for n in sorted(policy.model.arms)
    ]


def decide(policy: LearnedPolicy, prompt: str, **flags: object) -> str:
    req = RouteRequest(prompt=prompt, flags=RouteFlags(**flags), max_tokens=None)  # type: ignore[arg-type]
    return policy.decide(req, states(policy)).arm.name


def test_the_default_artifact_routes_on_cheap_features_alone() -> None:
    assert DEFAULT_ARTIFACT == ARTIFACTS / "local"
    policy = LearnedPolicy()
    assert isinstance(policy.encoder, FeaturesOnly) and policy.cheap_features
    assert policy.model.encoder == "none" and policy.model.feature_names == tuple(FEATURE_NAMES)
    x, kchars = policy.featurize(MATHS)
    assert x.shape == (len(FEATURE_NAMES),) and np.isfinite(x).all() and kchars == pytest.approx(len(MATHS) / 1000)


@pytest.mark.parametrize("artifact", ["local", "local-minilm"])
def test_flags_change_decisions_with_either_artifact(artifact: str) -> None:
    policy = LearnedPolicy(str(ARTIFACTS / artifact))
    assert decide(policy, MATHS, accuracy="high") == "qwen-coder-0.5b-plain"
    assert decide(policy, CHAT, prefer="speed") in SMOL


def test_the_minilm_artifact_loads_the_embedding_and_featurizes_off_the_loop() -> None:
    policy = LearnedPolicy(str(ARTIFACTS / "local-minilm"))
    assert isinstance(policy.encoder, PromptEncoder) and not policy.cheap_features
    x, _ = policy.featurize(CHAT)
    assert x.shape == (PromptEncoder.dim + len(FEATURE_NAMES),)


def test_an_encoder_that_differs_from_the_artifacts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="trained with encoder 'none', but this gateway uses 'all-MiniLM"):
        LearnedPolicy(str(ARTIFACTS / "local"), encoder=PromptEncoder.load())
    copy = tmp_path / "a"
    shutil.copytree(ARTIFACTS / "local-minilm", copy)
    with pytest.raises(ArtifactError, match="but this gateway uses 'none'"):
        LearnedPolicy(str(copy), encoder=FeaturesOnly())
    doc = json.loads((copy / "router.json").read_text())
    assert doc["encoder"].startswith("all-MiniLM-L6-v2-q8dyn-onnx:")


def test_features_only_encoder_has_no_dimensions() -> None:
    enc = load_encoder("none")
    assert enc.encode(["a", "b"]).shape == (2, 0)
    with pytest.raises(TypeError):
        enc.encode("a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown encoder 'bert'; choose one of minilm, none"):
        load_encoder("bert")


def test_a_shipped_artifact_is_named_by_its_bare_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from router.learned import artifact_path

    assert artifact_path(None) == DEFAULT_ARTIFACT
    assert artifact_path("local-minilm") == ARTIFACTS / "local-minilm"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local-minilm").mkdir()
    assert artifact_path("local-minilm") == Path("local-minilm"), "a directory that exists wins"
    assert artifact_path("~/x") == Path.home() / "x"
    assert artifact_path("no-such") == Path("no-such")
