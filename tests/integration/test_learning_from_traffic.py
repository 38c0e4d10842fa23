"""Learning from traffic: the decision log written by the served requests, exploration, ratings, and
``llm-gateway train --from-log`` changing a decision the ratings contradict."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fake_vllm import Gateway, MakeGateway, Upstreams, compact, leaving_client
from test_gateway_streaming import _scope

from gateway.cli import main
from router.features import FEATURE_NAMES

ARMS = [
    {"name": "smollm2-plain", "model": "smol", "backends": ["b1"], "strategy": {"kind": "plain"}},
    {"name": "smollm2-spec-ngram4", "model": "smol", "backends": ["b2"], "strategy": {"kind": "plain"}},
    {"name": "qwen-coder-0.5b-plain", "model": "coder", "backends": ["b3"], "strategy": {"kind": "plain"}},
]


def chat(content: str, model: str = "auto", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_every_routed_request_leaves_one_line_when_it_ends(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    async with make_gateway(arms=ARMS, routing={"policy": "learned", "decision_log": str(path)}) as gw:
        plain = await gw.client.post("/v1/chat/completions", json=chat("What is 12 * 7?"))
        stream = await gw.client.post("/v1/chat/completions", json=chat("Say hi.", model="smol", stream=True))
        assert plain.status_code == stream.status_code == 200
        # not decided by the learned policy among several arms: nothing logged
        await gw.client.post("/v1/chat/completions", json=chat("Hi", model="coder"))
        await gw.client.post("/v1/chat/completions", json=chat("Hi", route={"arm": "smollm2-plain"}))
        await gw.client.post("/v1/route", json=chat("Hi"))
        for fake in gw.upstreams.values():
            fake.fail = 503
        failed = await gw.client.post("/v1/chat/completions", json=chat("What is 12 * 7?"))
        assert failed.status_code >= 500
    first, second, third = log_lines(path)
    assert first["request_id"] == plain.headers["x-request-id"] and first["endpoint"] == "chat"
    assert (first["arm"], first["served_arm"], first["backend"]) == (
        plain.headers["x-route-arm"],
        plain.headers["x-route-arm"],
        plain.headers["x-route-backend"],
    )
    assert (first["status"], first["output_tokens"], first["ttft_s"], first["tokens_per_s"]) == (200, 3, None, None)
    assert first["latency_s"] > 0 and first["propensity"] == 1.0 and first["reason"] == plain.headers["x-route-reason"]
    assert set(first["predictions"]) == {a["name"] for a in ARMS}
    assert len(first["features"]) == len(FEATURE_NAMES) and "prompt" not in first
    assert second["request_id"] == stream.headers["x-request-id"]
    assert set(second["predictions"]) == {"smollm2-plain", "smollm2-spec-ngram4"}
    assert second["ttft_s"] > 0 and second["output_tokens"] == 3 and second["status"] == 200
    assert (third["status"], third["served_arm"], third["backend"]) == (failed.status_code, None, None)


async def test_a_client_that_leaves_mid_stream_is_logged_as_499(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    async with make_gateway(arms=ARMS, routing={"policy": "learned", "decision_log": str(path)}) as gw:
        for fake in gw.upstreams.values():
            fake.stream_fault, fake.stream_fault_after = "hang", 2
        body = compact(chat("Tell me a story.", stream=True))
        chunks = asyncio.Event()
        receive = leaving_client(body, chunks.wait)

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.set()

        await asyncio.wait_for(gw.app(_scope(body), receive, send), timeout=5)
    (line,) = log_lines(path)
    assert line["status"] == 499 and line["served_arm"] is not None


async def test_a_log_that_cannot_be_written_never_fails_a_request(make_gateway: MakeGateway, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    routing = {"policy": "learned", "decision_log": str(blocker / "decisions.jsonl")}
    async with make_gateway(arms=ARMS, routing=routing) as gw:
        for stream in (False, True):
            r = await gw.client.post("/v1/chat/completions", json=chat("What is 2 + 2?", stream=stream))
            assert r.status_code == 200
        assert gw.metric("gateway_decision_log_errors_total") == 2


def maths(i: int) -> str:
    return f"What is {17 + i} * {23 + 2 * i}? Answer with the number."


def poem(i: int) -> str:
    return f"Write a short poem about autumn leaves, number {i}."


async def route(gw: Gateway, prompt: str) -> dict[str, Any]:
    r = await gw.client.post("/v1/route", json=chat(prompt))
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def test_ratings_that_contradict_the_artifact_change_the_decision_after_training(
    make_gateway: MakeGateway, upstreams: Upstreams, tmp_path: Path
) -> None:
    """Served with exploration, maths answers rated right only from smollm2-spec-ngram4 and poems only
    from qwen: retrained from the log, maths moves to smollm2-spec-ngram4 while poems stay on qwen."""
    log, feedback, artifact = tmp_path / "decisions.jsonl", tmp_path / "feedback.jsonl", tmp_path / "artifact"
    routing = {"policy": "learned", "params": {"explore": 0.5, "seed": 3}, "decision_log": str(log)}
    async with make_gateway(arms=ARMS, routing={"policy": "learned"}) as gw:
        before = [await route(gw, maths(100)), await route(gw, poem(100))]
    assert [d["arm"] for d in before] == ["qwen-coder-0.5b-plain"] * 2  # the shipped artifact's choice
    async with make_gateway(arms=ARMS, routing=routing, feedback={"path": str(feedback)}) as gw:
        served: dict[str, int] = {}
        for i in range(90):
            prompt, right = (maths(i), "smollm2-spec-ngram4") if i % 2 == 0 else (poem(i), "qwen-coder-0.5b-plain")
            r = await gw.client.post("/v1/chat/completions", json=chat(prompt, stream=i % 3 == 0))
            arm = r.headers["x-route-arm"]
            served[arm] = served.get(arm, 0) + 1
            rated = await gw.client.post(
                "/v1/feedback",
                json={
                    "id": r.json()["id"] if i % 3 else r.headers["x-request-id"],
                    "rating": 1.0 if arm == right else 0.0,
                },
            )
            assert rated.status_code == 200
        unknown = await gw.client.post("/v1/feedback", json={"id": "chatcmpl-unknown", "rating": 1.0})
        assert unknown.status_code == 404  # refused, not written
    assert set(served) == {a["name"] for a in ARMS}  # exploration reached every arm
    lines = log_lines(log)
    assert len(lines) == 90 and any(line["reason"] == "explore" for line in lines)
    assert {round(line["propensity"], 4) for line in lines} == {round(0.5 + 0.5 / 3, 4), round(0.5 / 3, 4)}

    rc = main(
        [
            *("train", "--from-log", str(log), "--feedback", str(feedback)),
            *("--encoder", "none", "--folds", "3", "--out", str(artifact)),
        ]
    )
    assert rc == 0
    meta = json.loads((artifact / "router.json").read_text())["metadata"]
    assert meta["decision_log"]["rated_rows"] == 90 and meta["decision_log"]["unmatched_ratings"] == 0

    retrained = {"policy": "learned", "params": {"artifact": str(artifact)}}
    async with make_gateway(arms=ARMS, routing=retrained) as gw:
        after = [await route(gw, maths(100)), await route(gw, poem(100))]
    assert [d["arm"] for d in after] == ["smollm2-spec-ngram4", "qwen-coder-0.5b-plain"]
    assert (
        after[0]["predictions"]["smollm2-spec-ngram4"]["quality"]
        > 0.5
        > after[0]["predictions"]["qwen-coder-0.5b-plain"]["quality"]
    )
