"""The OpenAI surface at its edges: one model by id, the caller's request id, sampling limits."""

from __future__ import annotations

from typing import Any

import pytest
from fake_vllm import Gateway, MakeGateway

from gateway.auth import hash_key

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
