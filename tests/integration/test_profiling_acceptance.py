"""Per-row speculative-decoding acceptance: ``llm-gateway profile`` through the real gateway app.

The profiler talks to the in-process gateway, which talks to fake vLLM backends; the profiler scrapes
those backends' ``/metrics`` itself. Backend b3 is a speculative fake (``FakeVLLM.spec_tokens``): every
answer moves its counters by a known amount (4 draft tokens per generated token, one accepted per
answer token the prompt contains), so each row's counters can be checked exactly. Two speculative
arms share b3: had their requests overlapped, each row's delta would hold the other's tokens.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_vllm import CONFIG, MakeGateway, Upstreams

from lab.datasets import Prompt
from lab.profiles import OPTIONAL_ROW_KEYS, ROW_KEYS, load, meta_path, read_rows
from lab.profiling import ProfileOptions, run_profile
from lab.spec_decode import row_counters

SPEC = {"kind": "speculative", "method": "ngram", "num_speculative_tokens": 4}
ARMS = [
    CONFIG["arms"][0],  # smol-plain on b1, b2: no speculative counters
    CONFIG["arms"][1],  # coder-spec on b3
    {"name": "coder-spec-twin", "model": "coder", "backends": ["b3"], "strategy": SPEC},
]
METRICS = {name: f"http://{name}.test:8000/metrics" for name in ("b1", "b2", "b3")}
# the fakes answer "Hello", " world", "!": accepted = how many of those three the prompt contains
PROMPTS = {"Say Hello world!": 3, "Hello?": 1, "Say it": 0, "Print ' world'": 1}


class Network(httpx.AsyncBaseTransport):
    """``gateway.test`` is the gateway app; every other host a fake backend."""

    def __init__(self, app: Any, upstreams: Upstreams) -> None:
        self.gateway = httpx.ASGITransport(app)
        self.backends = httpx.MockTransport(upstreams.handler)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        to = self.gateway if request.url.host == "gateway.test" else self.backends
        return await to.handle_async_request(request)


def prompts() -> list[Prompt]:
    return [
        Prompt(f"mtbench/{i:03d}", "mtbench", [{"role": "user", "content": text}], None, "train")
        for i, text in enumerate(PROMPTS)
    ]


async def profile(make_gateway: MakeGateway, upstreams: Upstreams, out: Path, concurrency: int) -> None:
    upstreams["b3"].spec_tokens = 4
    async with make_gateway(arms=ARMS) as gw:
        opts = ProfileOptions(
            gateway="http://gateway.test",
            arms=tuple(a["name"] for a in ARMS),
            tasks=("mtbench",),
            per_task=len(PROMPTS),
            out=out,
            concurrency=concurrency,
            backend_metrics=METRICS,
        )
        result = await run_profile(
            opts, transport=Network(gw.app, upstreams), prompts=prompts(), progress_stream=io.StringIO()
        )
    assert (result.written, result.errors) == (len(PROMPTS) * len(ARMS), 0)


async def test_one_request_at_a_time_gives_every_row_its_own_counters(
    make_gateway: MakeGateway, upstreams: Upstreams, tmp_path: Path
) -> None:
    out = tmp_path / "p.jsonl"
    await profile(make_gateway, upstreams, out, concurrency=1)
    rows = read_rows(out)
    expected = {f"mtbench/{i:03d}": accepted for i, accepted in enumerate(PROMPTS.values())}
    for r in rows:
        if r["arm"] == "smol-plain":  # its backends have no speculative counters: nothing to record
            assert tuple(r) == ROW_KEYS and r["backend"] in ("b1", "b2")
        else:
            assert r["backend"] == "b3" and tuple(r) == ROW_KEYS + OPTIONAL_ROW_KEYS
            assert (r["spec_draft_tokens"], r["spec_accepted_tokens"]) == (4 * 3, expected[r["prompt_id"]]), r
    spec = json.loads(meta_path(out).read_text())["runs"][-1]["spec_decode"]
    assert spec["per_row"] is True
    # the run's per-arm delta is the whole backend's, shared by the two arms; the rows split it
    total = sum(r.get("spec_accepted_tokens", 0) for r in rows)
    assert total == 2 * sum(PROMPTS.values()) == spec["backends"]["b3"]["accepted_tokens"]
    assert spec["arms"]["coder-spec"]["shared"] is True
    assert len(load([out]).rows) == len(rows)  # training reads the rows with or without the fields


async def test_at_higher_concurrency_rows_carry_no_counters(
    make_gateway: MakeGateway, upstreams: Upstreams, tmp_path: Path
) -> None:
    """Requests overlap on b3: a delta would mix them, so no row gets one; the run's total remains."""
    out = tmp_path / "p.jsonl"
    await profile(make_gateway, upstreams, out, concurrency=2)
    assert all(tuple(r) == ROW_KEYS for r in read_rows(out))
    spec = json.loads(meta_path(out).read_text())["runs"][-1]["spec_decode"]
    assert spec["per_row"] is False
    assert spec["backends"]["b3"]["accepted_tokens"] == 2 * sum(PROMPTS.values())


@pytest.mark.parametrize(
    ("before", "after", "backend", "expected"),
    [
        (
            {"b": {"draft_tokens": 10.0, "accepted_tokens": 4.0}},
            {"b": {"draft_tokens": 22.0, "accepted_tokens": 9.0}},
            "b",
            {"spec_draft_tokens": 12, "spec_accepted_tokens": 5},
        ),
        ({"b": {}}, {"b": {}}, "b", {}),  # a plain server: no counters
        ({"b": {"error": "ConnectError"}}, {"b": {"draft_tokens": 1.0, "accepted_tokens": 1.0}}, "b", {}),
        ({}, {"b": {"draft_tokens": 1.0, "accepted_tokens": 1.0}}, "b", {}),  # not scraped before
        ({"b": {"draft_tokens": 1.0, "accepted_tokens": 1.0}}, {"b": {"draft_tokens": 1.0}}, None, {}),
        # the server restarted between the scrapes: its counters began again
        (
            {"b": {"draft_tokens": 90.0, "accepted_tokens": 50.0}},
            {"b": {"draft_tokens": 8.0, "accepted_tokens": 3.0}},
            "b",
            {},
        ),
    ],
)
def test_row_counters(before: Any, after: Any, backend: str | None, expected: dict[str, int]) -> None:
    assert row_counters(before, after, backend) == expected
