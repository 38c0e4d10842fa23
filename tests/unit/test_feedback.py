"""RouteLog (LRU of decisions by request id) and FeedbackLog (JSONL of ratings)."""

from __future__ import annotations

import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.feedback import FeedbackLog, RouteLog

FIELDS = {
    "endpoint": "chat",
    "arm": "smollm2-plain",
    "model": "smollm2-135m",
    "strategy": "plain",
    "backend": "smol-a",
    "reason": "prefer-balanced",
    "prompt": "What is 2+2?",
}


def _remember(log: RouteLog, rid: str, prompt: str = "What is 2+2?") -> None:
    log.remember(rid, **{**FIELDS, "prompt": prompt})


def test_finds_by_request_id_and_by_vllm_response_ids() -> None:
    log = RouteLog(10)
    _remember(log, "abc123")
    assert log.find("abc123", key=None) is not None
    assert log.find("chatcmpl-abc123", key=None) is not None and log.find("cmpl-abc123", key=None) is not None
    assert log.find("chatcmpl-other", key=None) is None and log.find("xyz", key=None) is None


def test_lru_evicts_the_oldest_and_refreshes_on_rewrite() -> None:
    log = RouteLog(2)
    _remember(log, "a")
    _remember(log, "b")
    _remember(log, "a")  # a is now the newest
    _remember(log, "c")
    assert log.find("b", key=None) is None
    assert log.find("a", key=None) is not None and log.find("c", key=None) is not None
    assert len(log) == 2
    empty = RouteLog(0)
    _remember(empty, "a")
    assert empty.find("a", key=None) is None


def test_prompt_kept_only_when_asked() -> None:
    plain, keeping = RouteLog(4), RouteLog(4, store_prompts=True)
    _remember(plain, "a", "secret prompt")
    _remember(keeping, "a", "secret prompt")
    assert plain.find("a", key=None).prompt is None  # type: ignore[union-attr]
    assert plain.find("a", key=None).prompt_sha256 == hashlib.sha256(b"secret prompt").hexdigest()  # type: ignore[union-attr]
    assert keeping.find("a", key=None).prompt == "secret prompt"  # type: ignore[union-attr]


def test_feedback_lines_are_joined_json(tmp_path: Path) -> None:
    routes = RouteLog(4)
    _remember(routes, "r1", "secret prompt")
    out = FeedbackLog(tmp_path / "sub" / "feedback.jsonl")
    route = routes.find("chatcmpl-r1", key=None)
    assert route is not None
    out.record("chatcmpl-r1", 1.0, route, comment="great", labels={"task": "maths"})
    (line,) = [json.loads(x) for x in (tmp_path / "sub" / "feedback.jsonl").read_text().splitlines()]
    assert line["matched"] is True and line["key"] is None
    assert line["route"]["arm"] == "smollm2-plain" and line["labels"] == {"task": "maths"}
    assert "prompt" not in line["route"] and "secret prompt" not in json.dumps(line)


def test_a_decision_is_found_only_for_the_key_it_was_made_for() -> None:
    log = RouteLog(4)
    log.remember("r1", **{**FIELDS, "key": "team-a"})
    log.remember("r2", **FIELDS)
    assert log.find("chatcmpl-r1", key="team-a") is not None
    assert log.find("chatcmpl-r1", key="team-b") is None and log.find("r1", key=None) is None
    assert log.find("r2", key=None) is not None and log.find("r2", key="team-a") is None


def test_kept_prompts_are_bounded_in_bytes_the_oldest_losing_their_text_first() -> None:
    one = sys.getsizeof("a" * 1000)
    log = RouteLog(100, store_prompts=True, prompt_memory_bytes=3 * one)
    for i in range(5):
        _remember(log, f"r{i}", chr(ord("a") + i) * 1000)
    assert log.prompt_bytes == 3 * one
    kept = [log.find(f"r{i}", key=None).prompt for i in range(5)]  # type: ignore[union-attr]
    assert kept[:2] == [None, None] and kept[2:] == ["c" * 1000, "d" * 1000, "e" * 1000]
    assert log.find("r0", key=None).prompt_sha256 == hashlib.sha256(b"a" * 1000).hexdigest()  # type: ignore[union-attr]
    _remember(log, "huge", "z" * 10_000)  # larger than the whole budget: not kept, nothing evicted for it
    assert log.find("huge", key=None).prompt is None and log.prompt_bytes == 3 * one  # type: ignore[union-attr]
    _remember(log, "r4", "short")  # a rewrite gives its old prompt's bytes back
    assert log.prompt_bytes == 2 * one + sys.getsizeof("short")
    small = RouteLog(2, store_prompts=True)
    for i in range(5):
        _remember(small, f"r{i}", "p" * 100)
    assert small.prompt_bytes == 2 * sys.getsizeof("p" * 100)  # evicted records give their bytes back


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    out = FeedbackLog(tmp_path / "f.jsonl")
    routes = RouteLog(1)
    _remember(routes, "r")
    route = routes.find("r", key=None)
    assert route is not None
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: out.record(f"id{i}", 0.5, route, comment="x" * 5000), range(200)))
    lines = (tmp_path / "f.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == sorted(f"id{i}" for i in range(200))
