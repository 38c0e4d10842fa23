"""Joining the decision log with feedback ratings into weighted training rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lab.traffic import MAX_WEIGHT, join, training_traffic
from router.features import FEATURE_NAMES
from router.prompt_ids import group_of

FEATURES = [0.5] * len(FEATURE_NAMES)


def logged(rid: str, arm: str = "a", **fields: Any) -> dict[str, Any]:
    line = {
        "request_id": rid,
        "prompt_sha256": "ab" * 32,
        "prompt_chars": 1500,
        "features": FEATURES,
        "arm": arm,
        "served_arm": arm,
        "reason": "prefer-balanced",
        "propensity": 1.0,
        "status": 200,
        "ttft_s": 0.2,
        "output_tokens": 40,
        "latency_s": 2.0,
        "tokens_per_s": 20.0,
    }
    return {**line, **fields}


def pid(rid: str) -> str:
    return f"log/{'ab' * 8}#{rid}"


def test_ratings_are_matched_by_request_or_response_id_and_the_rest_ignored() -> None:
    decisions = [logged(r) for r in ("r1", "r2", "r3", "r4", "r5")]
    feedback = [
        {"id": "chatcmpl-r1", "rating": 1.0, "matched": False},
        {"id": "cmpl-r2", "rating": 0.2},
        {"id": "anything", "rating": 0.9, "matched": True, "route": {"request_id": "r3"}},
        {"id": "chatcmpl-r4-2", "rating": 0.7},  # a pdr stage's response
        {"id": "r5", "rating": 0.0},
        {"id": "r5", "rating": 0.5},  # rated again: the last rating counts
        {"id": "chatcmpl-gone", "rating": 1.0},
        {"id": "r1", "rating": "good"},
    ]
    traffic = join(decisions, feedback)
    labels = {r.prompt_id: r.correct for r in traffic.rows}
    assert labels == {pid("r1"): True, pid("r2"): False, pid("r3"): True, pid("r4"): True, pid("r5"): True}
    assert traffic.report == {"logged_requests": 5, "answered_rows": 5, "rated_rows": 5, "unmatched_ratings": 2}


def test_weights_are_the_inverse_propensity_clipped() -> None:
    decisions = [
        logged("greedy", propensity=0.8),
        logged("explored", propensity=0.1),
        logged("rare", propensity=0.01),
        logged("failover", arm="a", served_arm="b", propensity=0.1),
        logged("old", propensity=None),
    ]
    weights = join(decisions, []).weights
    assert weights[(pid("greedy"), "a")] == pytest.approx(1.25)
    assert weights[(pid("explored"), "a")] == pytest.approx(10.0)
    assert weights[(pid("rare"), "a")] == MAX_WEIGHT == 20.0
    assert weights[(pid("failover"), "b")] == 1.0  # another arm answered: outside the policy's draw
    assert weights[(pid("old"), "a")] == 1.0


def test_unrated_and_unfinished_requests() -> None:
    decisions = [
        logged("unrated"),
        logged("body", ttft_s=None, tokens_per_s=None),  # not streamed: no TTFT measured
        logged("failed", status=502, served_arm=None, output_tokens=None),
        logged("gone", status=499),
    ]
    traffic = join(decisions, [{"id": "failed", "rating": 1.0}])
    rows = {r.prompt_id: r for r in traffic.rows}
    assert set(rows) == {pid("unrated"), pid("body")}
    unrated = rows[pid("unrated")]
    assert (unrated.correct, unrated.output_tokens, unrated.ttft_s, unrated.e2e_s, unrated.decode_tps) == (
        None,
        40,
        0.2,
        2.0,
        20.0,
    )
    assert math.isnan(rows[pid("body")].ttft_s) and rows[pid("body")].decode_tps is None
    assert traffic.kchars[pid("unrated")] == 1.5 and traffic.features[pid("unrated")] == FEATURES
    assert group_of(pid("unrated")) == group_of(pid("body"))  # one prompt: one cross-validation fold
    assert traffic.report["rated_rows"] == 0 and traffic.report["unmatched_ratings"] == 0


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_vectors_come_from_the_logged_features_or_the_logged_prompt(tmp_path: Path) -> None:
    log = write_jsonl(
        tmp_path / "log.jsonl",
        [logged("f"), logged("t", features=None, prompt="What is 2 + 2?"), logged("none", features=None)],
    )
    texts: dict[str, str] = {}
    traffic, given, meta = training_traffic(log, None, "none", texts)
    assert set(given) == {pid("f")} and list(given[pid("f")]) == FEATURES
    assert texts == {pid("t"): "What is 2 + 2?"}  # embedded again like a profiled prompt
    assert {r.prompt_id for r in traffic.rows} == {pid("f"), pid("t")}
    assert meta["dropped_without_vector"] == 1 and len(meta["sha256"]) == 64 and meta["feedback"] is None
    texts = {}
    traffic, given, _ = training_traffic(log, None, "minilm", texts)  # features cannot stand in for an embedding
    assert given == {} and {r.prompt_id for r in traffic.rows} == {pid("t")}


def test_unusable_logs_are_refused_with_the_reason(tmp_path: Path) -> None:
    old = write_jsonl(tmp_path / "old.jsonl", [logged("r", features=[1.0, 2.0])])
    with pytest.raises(ValueError, match="logged features have 2 entries"):
        training_traffic(old, None, "none", {})
    hashed = write_jsonl(tmp_path / "hashed.jsonl", [logged("r")])
    with pytest.raises(ValueError, match="store_prompts"):
        training_traffic(hashed, None, "minilm", {})
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1"):
        training_traffic(tmp_path / "bad.jsonl", None, "none", {})


def test_train_learns_from_profiles_and_the_log_together(tmp_path: Path) -> None:
    from gateway.cli import main
    from router.features import prompt_features

    profile, log_lines = [], []
    for i in range(30):
        text = f"What is {i} + {2 * i}?" if i % 2 else f"Tell me about bird number {i}."
        for arm, tps in (("a", 40.0), ("b", 10.0)):
            profile.append(
                {
                    "prompt_id": f"p/{i}",
                    "prompt": text,
                    "split": "train",
                    "arm": arm,
                    "correct": (i + len(arm)) % 3 == 0,
                }
                | {"output_tokens": 50 + i, "ttft_s": 0.1, "decode_tps": tps, "e2e_s": 0.1 + (50 + i) / tps}
            )
        features = [float(v) for v in prompt_features(text)]
        log_lines.append(logged(f"r{i}", arm="ab"[i % 2], features=features, propensity=0.25))
    write_jsonl(tmp_path / "profile.jsonl", profile)
    write_jsonl(tmp_path / "log.jsonl", log_lines)
    write_jsonl(tmp_path / "fb.jsonl", [{"id": f"chatcmpl-r{i}", "rating": 1.0} for i in range(0, 30, 3)])
    out = tmp_path / "art"
    args = ["train", "--profiles", str(tmp_path / "profile.jsonl"), "--encoder", "none", "--out", str(out)]
    assert main([*args, "--from-log", str(tmp_path / "log.jsonl"), "--feedback", str(tmp_path / "fb.jsonl")]) == 0
    meta = json.loads((out / "router.json").read_text())["metadata"]
    assert meta["train_rows"] == 60 + 30 and meta["train_prompts"] == 30 + 30
    assert meta["decision_log"]["rated_rows"] == 10 and meta["profiles_sha256"]
    assert main(args) == 0  # profiles alone, as before
    assert json.loads((out / "router.json").read_text())["metadata"]["decision_log"] is None
    assert main(["train", "--out", str(out)]) == 2
    assert main(["train", "--profiles", str(tmp_path / "profile.jsonl"), "--feedback", "x", "--out", str(out)]) == 2
