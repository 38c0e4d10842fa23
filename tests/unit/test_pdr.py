"""PDR orchestration (gateway/strategies/pdr_runner.py) against fake upstream callables: fan-out, seeds,
budgets, partial failure, rounds, usage, the stages before a stream, and cancellation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.errors import InvalidRequest, UpstreamError
from gateway.metrics import GatewayMetrics
from gateway.strategies.pdr_runner import PDRRunner
from router import build_strategy
from router.strategy import PDRStrategy

DRAFT_USAGE = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
DISTILL_USAGE = {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}
REFINE_USAGE = {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47}
BODY: dict[str, Any] = {
    "model": "smol",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6*7?"}],
    "max_tokens": 50,
    "temperature": 0.1,
}


def pdr(**params: Any) -> PDRStrategy:
    s = build_strategy({"kind": "pdr", **params})
    assert isinstance(s, PDRStrategy)
    return s


def last_user(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        return "".join(p["text"] for p in content if p.get("type") == "text")
    assert isinstance(content, str)
    return content


def stage_of(body: dict[str, Any]) -> str:
    if last_user(body).startswith("Below is a conversation"):
        return "distill"
    if "--- notes ---" in last_user(body):
        return "refine"
    return "draft"


class Fake:
    """Upstream fake: records every call with its stage and timing; answers by stage."""

    def __init__(self, delay: float = 0.0, fail_seeds: frozenset[int] = frozenset()) -> None:
        self.delay = delay
        self.fail_seeds = fail_seeds
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.spans: list[tuple[float, float]] = []
        self.refines = 0

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        stage = stage_of(body)
        self.calls.append((stage, body))
        start = time.perf_counter()
        await asyncio.sleep(self.delay)
        self.spans.append((start, time.perf_counter()))
        if stage == "draft":
            if body["seed"] in self.fail_seeds:
                raise UpstreamError(f"draft seed {body['seed']} failed", kind="http_5xx")
            return self._reply(f"draft seed={body['seed']}", DRAFT_USAGE)
        if stage == "distill":
            return self._reply("WORKSPACE: all say 42", DISTILL_USAGE)
        self.refines += 1
        return self._reply(f"answer-{self.refines}", REFINE_USAGE)

    @staticmethod
    def _reply(text: str, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "served",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": dict(usage),
        }

    def stages(self) -> list[str]:
        return [stage for stage, _ in self.calls]

    def of(self, stage: str) -> list[dict[str, Any]]:
        return [body for s, body in self.calls if s == stage]


async def test_drafts_run_in_parallel() -> None:
    fake = Fake(delay=0.2)
    stages: dict[str, float] = {}
    runner = PDRRunner(pdr(drafts=4), fake.complete, on_stage=stages.__setitem__)

    await runner.complete(dict(BODY))

    drafts = fake.spans[:4]
    assert max(s for s, _ in drafts) < min(e for _, e in drafts), "drafts must overlap in time"
    assert stages["draft"] < 0.2 * 3, f"4 drafts of 0.2 s took {stages['draft']:.2f}s: they ran one after another"


async def test_draft_bodies_have_distinct_seeds_and_the_draft_settings() -> None:
    fake = Fake()
    body = {**BODY, "max_completion_tokens": 99, "stream_options": {"include_usage": True}, "top_p": 0.9}
    await PDRRunner(pdr(drafts=5, draft_temperature=1.1, draft_max_tokens=256), fake.complete).complete(body)

    drafts = fake.of("draft")
    assert len(drafts) == 5
    assert len({d["seed"] for d in drafts}) == 5
    for d in drafts:
        assert d["temperature"] == 1.1
        assert d["max_tokens"] == 256
        assert d["n"] == 1 and d["stream"] is False
        assert "max_completion_tokens" not in d and "stream_options" not in d
        assert d["top_p"] == 0.9, "other client fields pass through to the drafts"
        assert d["messages"] == BODY["messages"]


async def test_the_clients_seed_is_the_base_seed() -> None:
    fake = Fake()
    await PDRRunner(pdr(drafts=3), fake.complete).complete({**BODY, "seed": 100})
    assert sorted(d["seed"] for d in fake.of("draft")) == [100, 101, 102]


async def test_one_failed_draft_is_tolerated() -> None:
    fake = Fake(fail_seeds=frozenset({11}))
    runner = PDRRunner(pdr(drafts=3), fake.complete, seed=10)

    out = await runner.complete(dict(BODY))

    assert out["choices"][0]["message"]["content"] == "answer-1"
    assert len(runner.failed_drafts) == 1 and "seed 11" in str(runner.failed_drafts[0])
    (distill,) = fake.of("distill")
    assert "draft seed=10" in last_user(distill) and "draft seed=12" in last_user(distill)
    assert "draft seed=11" not in last_user(distill)
    assert "2 candidate answer(s)" in last_user(distill)
    assert out["usage"]["completion_tokens"] == 2 * 20 + 5 + 7, "the failed draft used no tokens"


async def test_all_drafts_failing_raises_the_first_error() -> None:
    fake = Fake(fail_seeds=frozenset({10, 11, 12}))
    runner = PDRRunner(pdr(drafts=3), fake.complete, seed=10)

    with pytest.raises(UpstreamError, match="draft seed 10 failed"):
        await runner.complete(dict(BODY))
    assert fake.stages() == ["draft"] * 3, "no distill or refine after every draft failed"


async def test_a_draft_without_text_counts_as_failed() -> None:
    async def empty(body: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"message": {"role": "assistant", "content": ""}}], "usage": DRAFT_USAGE}

    fake = Fake()
    with pytest.raises(UpstreamError, match="draft stage: upstream answer has no text"):
        await PDRRunner(pdr(drafts=2), fake.complete, draft_complete=empty).complete(dict(BODY))


async def test_usage_sums_every_stage_and_choices_are_the_refines() -> None:
    fake = Fake()
    out = await PDRRunner(pdr(drafts=3), fake.complete).complete(dict(BODY))

    assert out["usage"] == {
        "prompt_tokens": 3 * 10 + 30 + 40,
        "completion_tokens": 3 * 20 + 5 + 7,
        "total_tokens": 3 * 30 + 35 + 47,
    }
    assert out["choices"][0]["message"]["content"] == "answer-1"
    assert out["object"] == "chat.completion"


async def test_one_draft_is_sequential_refinement() -> None:
    fake = Fake()
    out = await PDRRunner(pdr(drafts=1, rounds=3), fake.complete).complete(dict(BODY))

    assert fake.stages() == ["draft", "distill", "refine"] * 3
    assert out["choices"][0]["message"]["content"] == "answer-3"
    assert out["usage"]["prompt_tokens"] == 3 * (10 + 30 + 40)


async def test_a_second_round_feeds_the_previous_answer_back() -> None:
    fake = Fake()
    runner = PDRRunner(pdr(drafts=2, rounds=2), fake.complete, seed=0)
    out = await runner.complete(dict(BODY))

    assert fake.stages() == ["draft", "draft", "distill", "refine"] * 2
    first, second = fake.of("draft")[:2], fake.of("draft")[2:]
    assert all("answer-1" not in last_user(d) for d in first)
    assert all("--- previous answer ---\nanswer-1" in last_user(d) for d in second)
    assert all(last_user(d).startswith("What is 6*7?") for d in second), "the original request stays first"
    assert "=== previous answer ===\nanswer-1" in last_user(fake.of("distill")[1])
    assert sorted(d["seed"] for d in fake.of("draft")) == [0, 1, 2, 3], "seeds differ across rounds too"
    assert out["choices"][0]["message"]["content"] == "answer-2"


async def test_distill_is_bounded_by_the_workspace_and_refine_sees_it() -> None:
    fake = Fake()
    await PDRRunner(pdr(drafts=2, workspace_tokens=128), fake.complete).complete(dict(BODY))

    (distill,) = fake.of("distill")
    assert distill["max_tokens"] == 128
    assert "at most about 128 tokens" in last_user(distill)
    assert "[user]\nWhat is 6*7?" in last_user(distill) and "[system]\nBe brief." in last_user(distill)
    assert "stream_options" not in distill and distill["stream"] is False
    (refine,) = fake.of("refine")
    assert "WORKSPACE: all say 42" in last_user(refine)
    assert last_user(refine).startswith("What is 6*7?")
    assert refine["messages"][0] == BODY["messages"][0]
    assert refine["max_tokens"] == 50 and refine["temperature"] == 0.1, "refine keeps the client's settings"
    assert BODY["messages"][-1]["content"] == "What is 6*7?", "the client's body is not mutated"


async def test_multimodal_last_turn_gets_a_text_part() -> None:
    fake = Fake()
    parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "data:x"}}]
    body = {"model": "smol", "messages": [{"role": "user", "content": parts}]}
    await PDRRunner(pdr(drafts=1), fake.complete).complete(body)

    assert fake.of("draft")[0]["messages"][-1]["content"] == parts, "drafts keep the original turn"
    assert "[user]\nDescribe" in last_user(fake.of("distill")[0])
    content = fake.of("refine")[0]["messages"][-1]["content"]
    assert content[:2] == parts and content[2]["type"] == "text" and "--- notes ---" in content[2]["text"]
    assert body["messages"][0]["content"] == parts[:2] and len(parts) == 2, "the client's turn is not mutated"


async def test_drafts_use_the_draft_callable() -> None:
    fake, drafter = Fake(), Fake()
    await PDRRunner(pdr(drafts=3), fake.complete, draft_complete=drafter.complete).complete(dict(BODY))
    assert drafter.stages() == ["draft"] * 3
    assert fake.stages() == ["distill", "refine"]


async def test_stage_times_are_reported() -> None:
    fake = Fake(delay=0.02)
    seen: list[tuple[str, float]] = []
    await PDRRunner(pdr(drafts=2, rounds=2), fake.complete, on_stage=lambda s, t: seen.append((s, t))).complete(
        dict(BODY)
    )
    assert [s for s, _ in seen] == ["draft", "distill", "refine"] * 2
    assert all(0.015 <= t < 1.0 for _, t in seen)


async def test_stage_times_feed_the_metrics_histogram() -> None:
    metrics = GatewayMetrics()
    fake = Fake()
    strategy = pdr(drafts=2)
    hook = lambda stage, s: metrics.pdr_stage("smol", strategy.label, stage, s)  # noqa: E731
    await PDRRunner(strategy, fake.complete, on_stage=hook).complete(dict(BODY))
    text = metrics.exposition().decode()
    for stage in ("draft", "distill", "refine"):
        assert f'gateway_pdr_stage_seconds_count{{model="smol",stage="{stage}",strategy="pdr-n2-r1"}} 1.0' in text


async def test_completions_bodies_are_refused_naming_messages() -> None:
    fake = Fake()
    with pytest.raises(InvalidRequest) as info:
        await PDRRunner(pdr(), fake.complete).complete({"model": "smol", "prompt": "hi"})
    assert info.value.param == "messages"
    assert fake.calls == []


# ------------------------------------------------------------------ streaming


async def test_prepare_stream_runs_every_stage_before_the_last_refine_and_returns_its_body() -> None:
    fake = Fake()
    body = {**BODY, "stream": True, "stream_options": {"include_usage": False, "x": 1}}
    runner = PDRRunner(pdr(drafts=3), fake.complete)

    final = await runner.prepare_stream(body)

    assert fake.stages() == ["draft"] * 3 + ["distill"]
    assert all(b["stream"] is False for _, b in fake.calls)
    assert final["stream"] is True
    assert final["stream_options"] == {"include_usage": True, "x": 1}, "usage is always asked upstream"
    assert "WORKSPACE: all say 42" in last_user(final)
    assert runner.usage == {"prompt_tokens": 3 * 10 + 30, "completion_tokens": 3 * 20 + 5, "total_tokens": 3 * 30 + 35}


async def test_prepare_stream_with_rounds_runs_the_earlier_rounds_whole() -> None:
    fake = Fake()
    final = await PDRRunner(pdr(drafts=1, rounds=2), fake.complete).prepare_stream({**BODY, "stream": True})

    assert fake.stages() == ["draft", "distill", "refine", "draft", "distill"]
    assert fake.of("refine")[0]["stream"] is False
    assert "answer-1" in last_user(fake.of("draft")[1])
    assert final["stream"] is True


async def test_prepare_stream_raises_the_stages_errors() -> None:
    fake = Fake(fail_seeds=frozenset({1}))
    with pytest.raises(UpstreamError, match="draft seed 1 failed"):
        await PDRRunner(pdr(drafts=1), fake.complete, seed=1).prepare_stream({**BODY, "stream": True})


# ------------------------------------------------------------------ cancellation


class Blocking:
    """Drafts that block until cancelled, recording how each ended."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = 0
        self.cancelled = 0
        self.all_started = asyncio.Event()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self.started += 1
        if self.started == self.n:
            self.all_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("not reached")


@pytest.mark.parametrize("mode", ["complete", "prepare_stream"])
async def test_cancelling_the_caller_cancels_every_draft(mode: str) -> None:
    fake, drafts = Fake(), Blocking(4)
    runner = PDRRunner(pdr(drafts=4), fake.complete, draft_complete=drafts.complete)
    body = {**BODY, "stream": mode != "complete"}
    if mode == "complete":
        task = asyncio.ensure_future(runner.complete(body))
    else:
        task = asyncio.ensure_future(runner.prepare_stream(body))

    await asyncio.wait_for(drafts.all_started.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert drafts.cancelled == 4, "every in-flight draft is cancelled"
    assert fake.calls == [], "nothing runs after the cancel"
