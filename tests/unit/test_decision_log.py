"""The decision log's lines, its failure mode (counted, never raised) and its cost."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.decision_log import DecisionLog
from router import Arm, Decision, RouteFlags, RouteRequest, build_strategy
from router.features import prompt_features
from router.learned import LearnedPolicy
from router.predictor import Prediction

ARMS = [Arm(name=n, model="m", strategy=build_strategy({"kind": "plain"})) for n in ("fast", "good")]
PREDICTIONS = {
    "fast": Prediction(0.4, 80.0, 0.05, 40.0, 2.05, latency_bound_s=2.5, ttft_bound_s=0.08),
    "good": Prediction(0.8, 120.0, 0.2, 10.0, 12.2, latency_bound_s=15.0, ttft_bound_s=0.3),
}
DECISION = Decision(arm=ARMS[1], reason="explore", ranked=(ARMS[1], ARMS[0]), predictions=PREDICTIONS, propensity=0.25)
REQUEST = RouteRequest(prompt="What is 12 * 7?", flags=RouteFlags(max_latency_ms=20000, prefer="quality"))


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_line_holds_the_decision_and_the_outcome(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "decisions.jsonl"  # the directory is created
    log = DecisionLog(path)
    record = log.open("abc123", "chat", REQUEST, DECISION, [1.0, 2.5])
    record.finish(
        200, served_arm="good", backend="b2", ttft_s=0.21, output_tokens=118, latency_s=11.9, tokens_per_s=9.9
    )
    record.finish(500)  # a second outcome is ignored: one line per request
    (line,) = lines(path)
    assert line == {
        "request_id": "abc123",
        "at": line["at"],
        "endpoint": "chat",
        "prompt_sha256": hashlib.sha256(REQUEST.prompt.encode()).hexdigest(),
        "prompt_chars": len(REQUEST.prompt),
        "features": [1.0, 2.5],
        "flags": {
            "accuracy": None,
            "max_latency_ms": 20000,
            "max_ttft_ms": None,
            "prefer": "quality",
            "arm": None,
            "strict": False,
            "priority": None,
        },
        "predictions": {name: p.as_dict() for name, p in PREDICTIONS.items()},
        "arm": "good",
        "reason": "explore",
        "family": None,
        "propensity": 0.25,
        "served_arm": "good",
        "backend": "b2",
        "status": 200,
        "ttft_s": 0.21,
        "output_tokens": 118,
        "latency_s": 11.9,
        "tokens_per_s": 9.9,
    }
    assert abs(line["at"] - time.time()) < 60


def test_the_prompt_is_written_only_when_asked(tmp_path: Path) -> None:
    DecisionLog(tmp_path / "a.jsonl").open("r1", "chat", REQUEST, DECISION).finish(502)
    DecisionLog(tmp_path / "b.jsonl", store_prompts=True).open("r1", "chat", REQUEST, DECISION).finish(502)
    (without,) = lines(tmp_path / "a.jsonl")
    (with_prompt,) = lines(tmp_path / "b.jsonl")
    assert "prompt" not in without and without["features"] is None and without["served_arm"] is None
    assert with_prompt["prompt"] == REQUEST.prompt and with_prompt["status"] == 502


def test_a_failed_write_is_counted_and_never_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    lost: list[int] = []
    log = DecisionLog(blocker / "decisions.jsonl", on_error=lambda: lost.append(1))
    for _ in range(3):
        log.open("r", "chat", REQUEST, DECISION).finish(200, latency_s=1.0)  # must not raise
    assert log.errors == 3 and len(lost) == 3
    assert not log.write({"bad": object()})  # not serialisable: also just counted
    assert log.errors == 4


def test_a_line_costs_well_under_a_tenth_of_a_millisecond(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl")
    features = [float(i) for i in range(30)]
    timings = []
    for i in range(2000):
        started = time.perf_counter()
        log.open(f"r{i}", "chat", REQUEST, DECISION, features).finish(
            200, served_arm="good", backend="b2", ttft_s=0.2, output_tokens=100, latency_s=10.0, tokens_per_s=10.0
        )
        timings.append(time.perf_counter() - started)
    assert len(lines(tmp_path / "d.jsonl")) == 2000
    assert statistics.median(timings) < 1e-4, f"median {statistics.median(timings) * 1e6:.0f} us"


def test_the_learned_policy_logs_its_raw_cheap_features() -> None:
    policy = LearnedPolicy()  # the shipped default artifact routes on the cheap features alone
    prompt = "Rename the variable `x` to `count` in: x = x + 1"
    logged = policy.logged_features(policy.featurize(prompt))
    assert logged is not None
    assert np.allclose(logged, prompt_features(prompt), rtol=1e-9, atol=1e-9)
    assert policy.logged_features(None) is None


def test_no_features_are_logged_for_an_embedding_artifact() -> None:
    from dataclasses import replace

    policy = LearnedPolicy()
    embedded = LearnedPolicy(model=replace(policy.model, feature_names=("emb0", *policy.model.feature_names)))
    assert embedded.logged_features(policy.featurize("hi")) is None


@pytest.mark.parametrize("path", ["", "."])
def test_the_setting_refuses_an_empty_path_or_a_directory(path: str) -> None:
    from gateway.settings import SettingsError, load_settings

    env = {
        "GATEWAY_BACKENDS": "[{name: b, url: 'http://b:1', served_model: m}]",
        "GATEWAY_ARMS": "[{name: a, model: m, backends: [b]}]",
        "GATEWAY_ROUTING__DECISION_LOG": path,
    }
    with pytest.raises(SettingsError, match=r"routing\.decision_log"):
        load_settings(None, env)
