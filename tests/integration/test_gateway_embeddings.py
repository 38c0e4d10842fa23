"""``POST /v1/embeddings``: passed to the arms whose ``endpoints`` list embeddings, least-loaded, with usage metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_vllm import EMBEDDING_DIM, EMBEDDINGS, Gateway, MakeGateway, Upstreams

from gateway.auth import hash_key


@pytest.fixture
async def egw(make_gateway: MakeGateway) -> AsyncIterator[Gateway]:
    async with make_gateway(**EMBEDDINGS) as gateway:
        yield gateway


async def embed(gw: Gateway, model: str = "embed", **fields: Any) -> Any:
    return await gw.client.post("/v1/embeddings", json={"model": model, "input": "two words", **fields})


async def test_embeddings_come_from_the_arm_that_serves_them_under_the_public_name(egw: Gateway) -> None:
    r = await egw.client.post(
        "/v1/embeddings", json={"model": "embed", "input": ["a b", "c"], "encoding_format": "float", "user": "u"}
    )

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "embed"
    assert [d["index"] for d in body["data"]] == [0, 1] and len(body["data"][0]["embedding"]) == EMBEDDING_DIM
    assert body["usage"]["prompt_tokens"] == 3
    assert (r.headers["x-route-arm"], r.headers["x-route-backend"], r.headers["x-route-strategy"]) == (
        "embed",
        "b4",
        "plain",
    )
    [sent] = egw.upstreams["b4"].generation_bodies
    assert sent == {"model": "embed-served", "input": ["a b", "c"], "encoding_format": "float", "user": "u"}
    assert egw.upstreams["b4"].requests[-1].url.path == "/v1/embeddings"


async def test_embeddings_count_requests_and_prompt_tokens(egw: Gateway) -> None:
    await embed(egw)
    await embed(egw, input=[1, 2, 3])

    assert (
        egw.metric("gateway_requests_total", model="embed", strategy="plain", endpoint="embeddings", status="200") == 2
    )
    assert egw.metric("gateway_prompt_tokens_total", model="embed", strategy="plain") == 5
    assert egw.metric("gateway_routing_decisions_total", model="embed", strategy="plain", reason="single-arm") == 2


async def test_embeddings_go_to_the_least_loaded_arm_of_the_model(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    overrides = {
        "backends": [
            *EMBEDDINGS["backends"],
            {"name": "b5", "url": "http://b5.test:8000", "served_model": "embed-served"},
        ],
        "arms": [
            *EMBEDDINGS["arms"],
            {"name": "embed-2", "model": "embed", "backends": ["b5"], "endpoints": ["embeddings"]},
        ],
    }
    upstreams["b5"] = type(upstreams["b4"])("b5", "embed-served")
    upstreams["b4"].running = 5.0  # b4 is busy
    async with make_gateway(**overrides) as gw:
        await gw.pool.check_all()
        r = await embed(gw)
        pinned = await gw.client.post(
            "/v1/embeddings", json={"model": "embed", "input": "x", "route": {"arm": "embed"}}
        )

    assert (r.headers["x-route-arm"], r.headers["x-route-reason"]) == ("embed-2", "least-loaded")
    assert (pinned.headers["x-route-arm"], pinned.headers["x-route-reason"]) == ("embed", "pinned")
    assert "route" not in upstreams["b4"].generation_bodies[-1]


@pytest.mark.parametrize("model", ["smol", "auto", "nope"])
async def test_a_model_without_embeddings_is_404_model_not_found(egw: Gateway, model: str) -> None:
    r = await embed(egw, model)

    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "does not serve embeddings; embedding models: embed" in error["message"]
    assert not egw.upstreams["b4"].requests or all(q.url.path != "/v1/embeddings" for q in egw.upstreams["b4"].requests)


async def test_without_an_embeddings_arm_the_error_says_so(gw: Gateway) -> None:
    r = await embed(gw, "smol")

    assert r.status_code == 404
    assert "no arm serves embeddings (arms[].endpoints)" in r.json()["error"]["message"]


async def test_an_embedding_model_is_listed_but_never_chosen_by_auto(egw: Gateway) -> None:
    listed = [m["id"] for m in (await egw.client.get("/v1/models")).json()["data"]]
    chat = await egw.generate("chat", model="embed")
    routed = await egw.generate("chat", model="auto")

    assert listed == ["smol", "coder", "embed", "auto"]
    assert (await egw.client.get("/v1/models/embed")).status_code == 200
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"
    assert routed.status_code == 200 and routed.headers["x-route-arm"] != "embed"


@pytest.mark.parametrize(
    ("fields", "param"), [({"input": None}, "input"), ({"dimensions": 0}, "dimensions"), ({"input": {}}, "input")]
)
async def test_an_invalid_embeddings_body_is_a_400_naming_the_field(
    egw: Gateway, fields: dict[str, Any], param: str
) -> None:
    r = await embed(egw, **fields)

    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


async def test_a_key_limited_to_other_models_cannot_embed(make_gateway: MakeGateway) -> None:
    keys = {"keys": [{"name": "team-a", "sha256": hash_key("sk-a-123456"), "models": ["smol"]}]}
    async with make_gateway(**EMBEDDINGS, auth=keys) as gw:
        r = await gw.client.post(
            "/v1/embeddings", json={"model": "embed", "input": "x"}, headers={"authorization": "Bearer sk-a-123456"}
        )
    assert r.status_code == 404 and "do not have access" in r.json()["error"]["message"]


async def test_an_upstream_4xx_passes_through(egw: Gateway) -> None:
    egw.upstreams["b4"].fail = 400
    egw.upstreams["b4"].fail_body = b'{"error": {"message": "input too long", "type": "BadRequestError", "code": 400}}'
    r = await embed(egw)

    assert r.status_code == 400 and r.json()["error"]["message"] == "input too long"
    assert r.headers["x-route-arm"] == "embed"
