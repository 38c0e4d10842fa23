"""The OpenAI surface at its edges: one model by id, the caller's request id, sampling limits."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from fake_vllm import Gateway, MakeGateway, request_body

from gateway.auth import hash_key
from gateway.logs import JsonFormatter
from gateway.request_id import MAX_LENGTH

KEY = "sk-team-a-1234"
KEYS = {"keys": [{"name": "team-a", "sha256": hash_key(KEY), "models": ["smol"]}]}


@pytest.mark.parametrize("model", ["smol", "coder", "auto"])
async def test_a_public_model_or_auto_is_retrieved_by_id(gw: Gateway, model: str) -> None:
    r = await gw.client.get(f"/v1/models/{model}")

    assert r.status_code == 200, r.text
    card = r.json()
    assert (card["id"], card["object"], card["owned_by"]) == (model, "model", "llm-gateway")
    listed = (await gw.client.get("/v1/models")).json()["data"]
    assert card in listed, "the same card as in the list"


@pytest.mark.parametrize("model", ["smol-served", "smol-plain", "nope", "org/model"])
async def test_any_other_model_id_is_404_model_not_found(gw: Gateway, model: str) -> None:
    r = await gw.client.get(f"/v1/models/{model}")

    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["code"], error["type"], error["param"]) == ("model_not_found", "invalid_request_error", "model")
    assert f"'{model}'" in error["message"] and "smol, coder, auto" in error["message"]


async def test_a_key_retrieves_only_the_models_it_may_use(make_gateway: MakeGateway) -> None:
    async with make_gateway(auth=KEYS) as gw:
        headers = {"authorization": f"Bearer {KEY}"}
        smol = await gw.client.get("/v1/models/smol", headers=headers)
        coder = await gw.client.get("/v1/models/coder", headers=headers)
        anonymous = await gw.client.get("/v1/models/smol")

    assert smol.status_code == 200
    assert coder.status_code == 404 and coder.json()["error"]["code"] == "model_not_found"
    assert "coder" not in coder.json()["error"]["message"].partition("available:")[2]
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("endpoint", "fields", "param"),
    [
        ("chat", {"temperature": 2.5}, "temperature"),
        ("chat", {"top_p": 0}, "top_p"),
        ("completions", {"presence_penalty": -2.5}, "presence_penalty"),
        ("chat", {"frequency_penalty": 9}, "frequency_penalty"),
        ("chat", {"n": 3, "temperature": 0}, "n"),
        ("chat", {"top_logprobs": 3}, "top_logprobs"),
        ("completions", {"logprobs": -5}, "logprobs"),
    ],
)
async def test_a_sampling_parameter_vllm_refuses_is_a_400_naming_it(
    gw: Gateway, endpoint: str, fields: dict[str, Any], param: str
) -> None:
    r = await gw.generate(endpoint, **fields)

    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert error["message"].startswith(f"{param}: ")
    assert not gw.upstreams["b1"].generation_bodies, "refused before any backend was called"


async def test_sampling_parameters_in_range_reach_the_backend_untouched(gw: Gateway) -> None:
    fields = {"temperature": 0, "top_p": 1, "presence_penalty": -2, "logprobs": True, "top_logprobs": 2, "top_k": -1}
    r = await gw.generate("chat", **fields)

    assert r.status_code == 200, r.text
    [sent] = gw.upstreams["b1"].generation_bodies
    assert {k: sent[k] for k in fields} == fields


@pytest.mark.parametrize("stream", [False, True])
async def test_the_callers_request_id_is_the_request_id_everywhere(gw: Gateway, stream: bool) -> None:
    rid = "trace-7f3a:span.01_x"
    r = await gw.client.post(
        "/v1/chat/completions", json=request_body("chat", stream=stream), headers={"x-request-id": rid}
    )

    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == rid
    assert gw.upstreams["b1"].requests[-1].headers["x-request-id"] == rid
    answer_id = gw.events(r)[0]["id"] if stream else r.json()["id"]
    assert answer_id == f"chatcmpl-{rid}", "vLLM names its answer after the id"


@pytest.mark.parametrize(
    "given",
    ["a" * (MAX_LENGTH + 1), "has space", 'quote"d', "slash/ed", "semi;colon", "", "caf\u00e9"],
    ids=["too-long", "space", "quote", "slash", "semicolon", "empty", "non-ascii"],
)
async def test_an_unusable_request_id_is_replaced_by_a_generated_one(gw: Gateway, given: str) -> None:
    r = await gw.client.post(
        "/v1/chat/completions", json=request_body("chat"), headers={"x-request-id": given.encode("latin-1")}
    )

    assert r.status_code == 200, "not an error"
    rid = r.headers["x-request-id"]
    assert rid != given and re.fullmatch(r"[0-9a-f]{32}", rid)
    assert gw.upstreams["b1"].requests[-1].headers["x-request-id"] == rid


async def test_the_longest_request_id_is_kept_and_errors_carry_it(gw: Gateway) -> None:
    rid = "x" * MAX_LENGTH
    ok = await gw.client.post("/v1/completions", json=request_body("completions"), headers={"x-request-id": rid})
    refused = await gw.client.post(
        "/v1/completions", json=request_body("completions", model="nope"), headers={"x-request-id": "err-1"}
    )

    assert ok.headers["x-request-id"] == rid
    assert refused.status_code == 404 and refused.headers["x-request-id"] == "err-1"


async def test_feedback_joins_on_the_callers_request_id(make_gateway: MakeGateway, tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    async with make_gateway(feedback={"path": str(path)}) as gw:
        await gw.client.post("/v1/chat/completions", json=request_body("chat"), headers={"x-request-id": "mine-1"})
        r = await gw.client.post("/v1/feedback", json={"id": "mine-1", "rating": 1})

    assert r.status_code < 300, r.text
    [line] = [json.loads(x) for x in path.read_text().splitlines()]
    assert line["matched"] and line["route"]["request_id"] == "mine-1" and line["route"]["arm"] == "smol-plain"


async def test_json_log_format_logs_one_line_per_finished_request(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.requests")
    async with make_gateway(server={"log_format": "json"}, auth=KEYS) as gw:
        auth = {"authorization": f"Bearer {KEY}"}
        await gw.client.post(
            "/v1/chat/completions", json=request_body("chat", stream=True), headers={**auth, "x-request-id": "s-1"}
        )
        await gw.client.post(
            "/v1/completions", json=request_body("completions"), headers={**auth, "x-request-id": "c-1"}
        )
        await gw.client.post("/v1/completions", json=request_body("completions", model="coder"), headers=auth)

    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "gateway.requests"]
    assert len(lines) == 3, "one line per request, refused ones too"
    stream, whole, refused = lines
    assert stream["request_id"] == "s-1" and stream["stream"] is True
    assert (stream["arm"], stream["strategy"], stream["backend"], stream["model"]) == (
        "smol-plain",
        "plain",
        "b1",
        "smol",
    )
    assert (stream["status"], stream["key"], stream["error"]) == (200, "team-a", None)
    assert stream["reason"] and stream["ttft_s"] > 0 and stream["latency_s"] >= stream["ttft_s"]
    assert (stream["prompt_tokens"], stream["completion_tokens"]) == (7, 3)
    assert whole["request_id"] == "c-1" and whole["endpoint"] == "completions" and whole["ttft_s"] is None
    assert (whole["status"], whole["completion_tokens"]) == (200, 3)
    assert (refused["status"], refused["error"], refused["arm"], refused["backend"]) == (
        404,
        "model_not_found",
        None,
        None,
    )


async def test_text_log_format_logs_no_request_lines(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.requests")
    await gw.generate("chat")
    assert not [r for r in caplog.records if r.name == "gateway.requests"]
