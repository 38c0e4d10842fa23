"""RouteLog (LRU of decisions by request id) and FeedbackLog (JSONL of ratings)."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.feedback import FeedbackLog, RouteLog


def _remember(log: RouteLog, rid: str, prompt: str = "What is 2+2?") -> None:
    log.remember(
        rid,
        endpoint="chat",
        arm="smollm2-plain",
        model="smollm2-135m",
        strategy="plain",
        backend="smol-a",
        reason="prefer-balanced",
        prompt=prompt,
    )


def test_finds_by_request_id_and_by_vllm_response_ids() -> None:
    log = RouteLog(10)
    _remember(log, "abc123")
    assert log.find("abc123") is not None
    assert log.find("chatcmpl-abc123") is not None and log.find("cmpl-abc123") is not None
    assert log.find("chatcmpl-other") is None and log.find("xyz") is None


def test_lru_evicts_the_oldest_and_refreshes_on_rewrite() -> None:
    log = RouteLog(2)
    _remember(log, "a")
    _remember(log, "b")
    _remember(log, "a")  # a is now the newest
    _remember(log, "c")
    assert log.find("b") is None and log.find("a") is not None and log.find("c") is not None
    assert len(log) == 2
    empty = RouteLog(0)
    _remember(empty, "a")
    assert empty.find("a") is None


def test_prompt_kept_only_when_asked() -> None:
    plain, keeping = RouteLog(4), RouteLog(4, store_prompts=True)
    _remember(plain, "a", "secret prompt")
    _remember(keeping, "a", "secret prompt")
    assert plain.find("a").prompt is None  # type: ignore[union-attr]
    assert plain.find("a").prompt_sha256 == hashlib.sha256(b"secret prompt").hexdigest()  # type: ignore[union-attr]
    assert keeping.find("a").prompt == "secret prompt"  # type: ignore[union-attr]


def test_feedback_lines_are_joined_json(tmp_path: Path) -> None:
    routes = RouteLog(4)
    _remember(routes, "r1", "secret prompt")
    out = FeedbackLog(tmp_path / "sub" / "feedback.jsonl")
    out.record("chatcmpl-r1", 1.0, routes.find("chatcmpl-r1"), comment="great", labels={"task": "maths"})
    out.record("gone", 0.0, routes.find("gone"))
    lines = [json.loads(x) for x in (tmp_path / "sub" / "feedback.jsonl").read_text().splitlines()]
    assert [x["matched"] for x in lines] == [True, False]
    assert lines[0]["route"]["arm"] == "smollm2-plain" and lines[0]["labels"] == {"task": "maths"}
    assert "prompt" not in lines[0]["route"] and "secret prompt" not in json.dumps(lines)
    assert "route" not in lines[1] and lines[1]["rating"] == 0.0


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    out = FeedbackLog(tmp_path / "f.jsonl")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: out.record(f"id{i}", 0.5, None, comment="x" * 5000), range(200)))
    lines = (tmp_path / "f.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == sorted(f"id{i}" for i in range(200))
