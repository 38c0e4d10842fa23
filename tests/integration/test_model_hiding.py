"""Per-key model hiding has no side door (issue 18, item 8): with API keys configured the schema
pages need a key and list only the caller's models and arms, and pinning an arm the key may not
use answers exactly like pinning one that does not exist."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fake_vllm import Gateway, MakeGateway, request_body

from gateway.auth import hash_key

KEY_A, KEY_OPS = "sk-hide-a-7Qp", "sk-hide-ops-2Wx"
KEYS = {
    "keys": [
        {"name": "team-a", "sha256": hash_key(KEY_A), "models": ["smol"]},
        {"name": "ops", "sha256": hash_key(KEY_OPS)},
    ]
}
A, OPS = {"authorization": f"Bearer {KEY_A}"}, {"x-api-key": KEY_OPS}


@pytest.fixture
async def secured(make_gateway: MakeGateway) -> AsyncIterator[Gateway]:
    async with make_gateway(auth=KEYS) as gw:
        yield gw


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
async def test_schema_pages_need_a_key_when_keys_are_configured(secured: Gateway, path: str) -> None:
    r = await secured.client.get(path)
    assert r.status_code == 401, r.text[:200]
    assert r.json()["error"]["code"] == "missing_api_key" and r.headers["www-authenticate"]
    assert "coder" not in r.text and "smol" not in r.text
    wrong = await secured.client.get(path, headers={"authorization": "Bearer sk-nope"})
    assert wrong.status_code == 401
    ok = await secured.client.get(path, headers=A)
    assert ok.status_code == 200


async def test_the_schema_lists_only_the_callers_models_and_arms(secured: Gateway) -> None:
    mine = await secured.client.get("/openapi.json", headers=A)
    schemas = mine.json()["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["smol", "auto"]
    assert schemas["CompletionRequest"]["properties"]["model"]["enum"] == ["smol", "auto"]
    assert schemas["RouteOptions"]["properties"]["arm"]["anyOf"][0]["enum"] == ["smol-plain"]
    assert "coder" not in mine.text  # neither the model nor its arm (coder-spec), anywhere
    everything = (await secured.client.get("/openapi.json", headers=OPS)).json()["components"]["schemas"]
    assert everything["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["smol", "coder", "auto"]
    assert everything["RouteOptions"]["properties"]["arm"]["anyOf"][0]["enum"] == ["smol-plain", "coder-spec"]


async def test_without_keys_the_schema_pages_stay_open(gw: Gateway) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert (await gw.client.get(path)).status_code == 200
    schema = (await gw.client.get("/openapi.json")).json()["components"]["schemas"]
    assert schema["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["smol", "coder", "auto"]


@pytest.mark.parametrize("via", ["body", "header"])
async def test_pinning_an_arm_of_another_key_answers_like_an_arm_that_does_not_exist(
    secured: Gateway, via: str
) -> None:
    async def pin(arm: str) -> dict[str, object]:
        if via == "body":
            body, headers = request_body("chat", "auto", route={"arm": arm}), A
        else:
            body, headers = request_body("chat", "auto"), {**A, "x-route-arm": arm}
        r = await secured.client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 400, r.text
        return dict(r.json()["error"])

    hidden, missing = await pin("coder-spec"), await pin("no-such-arm")
    assert hidden == {**missing, "message": hidden["message"]}
    assert hidden["message"] == str(missing["message"]).replace("no-such-arm", "coder-spec")
    assert hidden["param"] == "route.arm"
    assert not secured.upstreams["b3"].generation_bodies
