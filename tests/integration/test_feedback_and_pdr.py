"""Request ids, POST /v1/feedback joined to decisions, and the pdr strategy wired into the gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_vllm import CONFIG, Gateway, MakeGateway, request_body

from gateway.auth import hash_key

KEY = "sk-pdr-Qm41x"
PDR_ARMS = [
    *CONFIG["arms"],
    {
        "name": "smol-pdr",
        "model": "smol-pdr",
        "backends": ["b1", "b2"],
        "strategy": {"kind": "pdr", "drafts": 3, "rounds": 1, "workspace_tokens": 128, "draft_max_tokens": 64},
    },
]


async def test_request_id_goes_upstream_and_names_the_response(gw: Gateway) -> None:
    resp = await gw.generate()
    rid = resp.headers["x-request-id"]
    assert len(rid) == 32 and resp.json()["id"] == f"chatcmpl-{rid}"
    sent = gw.upstreams["b1"].requests[-1]
    assert sent.headers["x-request-id"] == rid
    again = await gw.generate()
    assert again.headers["x-request-id"] != rid
    error = await gw.generate(model="nope")
    assert error.status_code == 404 and error.headers["x-request-id"]


async def test_feedback_is_off_by_default(gw: Gateway) -> None:
    resp = await gw.client.post("/v1/feedback", json={"id": "x", "rating": 1})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "feedback_disabled"


async def test_feedback_joins_the_decision(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "fb" / "feedback.jsonl"
    async with make_gateway(feedback={"path": str(path)}) as gw:
        answer = await gw.generate()
        rid, arm = answer.headers["x-request-id"], answer.headers["x-route-arm"]
        ok = await gw.client.post(
            "/v1/feedback", json={"id": answer.json()["id"], "rating": 0.0, "comment": "wrong", "labels": {"t": "x"}}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json() == {
            "object": "feedback",
            "id": f"chatcmpl-{rid}",
            "recorded": True,
            "matched": True,
            "arm": arm,
        }
        by_header = await gw.client.post("/v1/feedback", json={"id": rid, "rating": 1})
        assert by_header.json()["matched"] is True
        stream = await gw.generate(stream=True)
        assert (await gw.client.post("/v1/feedback", json={"id": stream.headers["x-request-id"], "rating": 1})).json()[
            "matched"
        ]
        unknown = await gw.client.post("/v1/feedback", json={"id": "chatcmpl-forgotten", "rating": 0.5})
        assert unknown.status_code == 404  # not written (tests/integration/test_feedback_bounds.py)
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert len(lines) == 3
        assert lines[0]["route"]["arm"] == arm and lines[0]["route"]["backend"] in ("b1", "b2")
        assert lines[0]["comment"] == "wrong" and lines[0]["labels"] == {"t": "x"}
        assert "prompt" not in lines[0]["route"] and len(lines[0]["route"]["prompt_sha256"]) == 64


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"id": "x", "rating": 2}, "rating"),
        ({"id": "x", "rating": "good"}, "rating"),
        ({"id": "", "rating": 1}, "id"),
        ({"rating": 1}, "id"),
        ({"id": "x", "rating": 1, "extra": True}, "extra"),
        ({"id": "x", "rating": 1, "labels": {"a": 1}}, "labels.a"),
    ],
)
async def test_bad_feedback_is_400_naming_the_param(
    make_gateway: MakeGateway, tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    async with make_gateway(feedback={"path": str(tmp_path / "f.jsonl")}) as gw:
        resp = await gw.client.post("/v1/feedback", json=body)
        assert resp.status_code == 400
        assert resp.json()["error"]["param"] == param
        assert not (tmp_path / "f.jsonl").exists()


async def test_pdr_arm_runs_drafts_distill_refine_through_the_gateway(make_gateway: MakeGateway) -> None:
    async with make_gateway(arms=PDR_ARMS) as gw:
        resp = await gw.generate(model="smol-pdr")
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-route-strategy"] == "pdr-n3-r1"
        calls = gw.upstreams["b1"].generation_bodies + gw.upstreams["b2"].generation_bodies
        assert len(calls) == 5  # 3 drafts + distill + refine
        assert all(c["model"] == "smol-served" for c in calls)
        doc = resp.json()
        assert doc["model"] == "smol-pdr"
        assert doc["usage"]["completion_tokens"] == 5 * 3  # every stage counted
        ids = [
            r.headers["x-request-id"] for up in ("b1", "b2") for r in gw.upstreams[up].requests if r.method == "POST"
        ]
        assert len(set(ids)) == 5  # vLLM refuses duplicate ids in flight
        for stage in ("draft", "distill", "refine"):  # one observation per stage (drafts run together)
            assert (
                gw.metric("gateway_pdr_stage_seconds_count", model="smol-pdr", strategy="pdr-n3-r1", stage=stage) == 1
            )


async def test_pdr_streams_the_final_stage_with_summed_usage(make_gateway: MakeGateway) -> None:
    async with make_gateway(arms=PDR_ARMS) as gw:
        resp = await gw.client.post(
            "/v1/chat/completions",
            json=request_body("chat", "smol-pdr", stream=True, stream_options={"include_usage": True}),
        )
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = Gateway.events(resp)
        assert events[-1] == "[DONE]"
        text = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events[:-1] if isinstance(e, dict) and e["choices"]
        )
        assert text == "Hello world!"
        usage = next(e["usage"] for e in events if isinstance(e, dict) and e.get("usage"))
        assert usage["completion_tokens"] == 15
        assert all(e["model"] == "smol-pdr" for e in events[:-1] if isinstance(e, dict))


async def test_pdr_survives_a_failed_backend_and_refuses_completions(make_gateway: MakeGateway) -> None:
    async with make_gateway(arms=PDR_ARMS) as gw:
        gw.upstreams["b2"].fail = 500
        resp = await gw.generate(model="smol-pdr")
        assert resp.status_code == 200, resp.text
        completions = await gw.generate("completions", model="smol-pdr")
        assert completions.status_code == 400 and completions.json()["error"]["param"] == "model"


async def test_pdr_arm_references_are_checked_at_start_up() -> None:
    from gateway.settings import Settings

    bad = [*CONFIG["arms"], {**PDR_ARMS[-1], "strategy": {"kind": "pdr", "draft_arm": "nope"}}]
    with pytest.raises(ValueError, match=r"arms\[2\]\.strategy\.draft_arm: unknown arm 'nope'"):
        Settings.model_validate({**CONFIG, "arms": bad})


async def test_pdr_refine_with_a_garbage_body_is_a_502_not_a_crash(make_gateway: MakeGateway) -> None:
    async with make_gateway(arms=PDR_ARMS) as gw:
        for name in ("b1", "b2"):
            gw.upstreams[name].fail = 200
            gw.upstreams[name].fail_body = b"<html>proxy error</html>"
        resp = await gw.generate(model="smol-pdr")
        assert resp.status_code == 502, resp.text
        assert resp.json()["error"]["code"] == "upstream_protocol"
        assert "<html>" not in resp.text


async def test_pdr_stream_is_renamed_even_when_the_model_field_is_split_across_reads(
    make_gateway: MakeGateway,
) -> None:
    async with make_gateway(arms=PDR_ARMS) as gw:
        for name in ("b1", "b2"):
            gw.upstreams[name].split_every = 7  # every "model":"smol-served" is cut somewhere
        resp = await gw.generate(model="smol-pdr", stream=True, stream_options={"include_usage": True})

        assert resp.status_code == 200
        assert "smol-served" not in resp.text
        events = Gateway.events(resp)
        assert all(e["model"] == "smol-pdr" for e in events[:-1] if isinstance(e, dict))


async def test_pdr_stream_records_ttft_inter_token_latency_and_tokens_per_second(make_gateway: MakeGateway) -> None:
    async with make_gateway(arms=PDR_ARMS) as gw:
        resp = await gw.generate(model="smol-pdr", stream=True)
        assert resp.status_code == 200 and Gateway.events(resp)[-1] == "[DONE]"

        series = {"model": "smol-pdr", "strategy": "pdr-n3-r1"}
        assert gw.metric("gateway_requests_total", **series, endpoint="chat", status="200") == 1
        assert gw.metric("gateway_time_to_first_token_seconds_count", **series) == 1
        assert gw.metric("gateway_inter_token_latency_seconds_count", **series) == 2  # three tokens
        assert gw.metric("gateway_output_tokens_per_second_count", **series) == 1
        assert gw.metric("gateway_output_tokens_total", **series) == 15  # every stage


async def test_pdr_stream_corrects_the_token_charge(make_gateway: MakeGateway) -> None:
    # Estimated at ceil(len("Say hello.") / 4) + 150 = 153 of 200 tokens per minute; the five calls
    # use 5 x 10. Uncorrected, 47 tokens are left and the second request (estimated at 103) is refused.
    keys = {"keys": [{"name": "team-a", "sha256": hash_key(KEY), "tpm": 200}]}
    async with make_gateway(arms=PDR_ARMS, auth=keys) as gw:
        first = await gw.client.post(
            "/v1/chat/completions",
            json=request_body("chat", "smol-pdr", stream=True, max_tokens=150),
            headers={"authorization": f"Bearer {KEY}"},
        )
        assert first.status_code == 200 and first.text.endswith("data: [DONE]\n\n")
        second = await gw.client.post(
            "/v1/chat/completions",
            json=request_body("chat", "smol-pdr", max_tokens=100),
            headers={"authorization": f"Bearer {KEY}"},
        )
        assert second.status_code == 200, second.text
