"""``arms[].pinned_only`` (issue 17: an extra engine beside the routed arms, e.g. the local stack's
llama.cpp arm): such an arm answers only requests that pin it, or name a model only such arms serve;
the routing policy never sees it, so a learned artifact trained without it still loads."""

from __future__ import annotations

from typing import Any

import pytest
from fake_vllm import CONFIG, MakeGateway, Upstreams

from gateway.settings import Settings

LLAMA_BACKEND = {"name": "b4", "url": "http://b4.test:8000", "served_model": "embed-served"}
ARMS: list[dict[str, Any]] = [  # the shipped artifact's arms, then two it was never trained on
    {"name": "smollm2-plain", "model": "smol", "backends": ["b1"]},
    {"name": "smollm2-spec-ngram4", "model": "smol", "backends": ["b2"]},
    {"name": "qwen-coder-0.5b-plain", "model": "coder", "backends": ["b3"]},
    {"name": "smol-llamacpp", "model": "smol", "backends": ["b4"], "pinned_only": True},
    {"name": "llama-only", "model": "llama", "backends": ["b4"], "pinned_only": True},
]
DEPLOYMENT: dict[str, Any] = {
    "backends": [*CONFIG["backends"], LLAMA_BACKEND],
    "arms": ARMS,
    "routing": {"policy": "learned"},
}


def chat(model: str, route: dict[str, Any] | None = None, content: str = "What is 12 * 7?") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **({"route": route} if route else {})}


async def test_the_router_never_chooses_a_pinned_only_arm(make_gateway: MakeGateway, upstreams: Upstreams) -> None:
    async with make_gateway(**DEPLOYMENT) as gw:
        prompts = ("Hi", "Write a Python function that sorts a list.", "What is 12 * 7?", "Tell me a story.")
        for model in ("smol", "auto"):
            for content in prompts:
                r = await gw.client.post("/v1/chat/completions", json=chat(model, content=content))
                assert r.status_code == 200, r.text
                assert r.headers["x-route-arm"] not in ("smol-llamacpp", "llama-only")
        decision = await gw.client.post("/v1/route", json=chat("smol"))
        assert "smol-llamacpp" not in decision.json()["predictions"]
    assert upstreams["b4"].generation_bodies == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_pinned_only_arm_answers_when_pinned(
    make_gateway: MakeGateway, upstreams: Upstreams, stream: bool
) -> None:
    async with make_gateway(**DEPLOYMENT) as gw:
        r = await gw.client.post(
            "/v1/chat/completions", json={**chat("smol", {"arm": "smol-llamacpp"}), "stream": stream}
        )
        assert r.status_code == 200, r.text
        assert (r.headers["x-route-arm"], r.headers["x-route-reason"]) == ("smol-llamacpp", "pinned")
        headers = {"x-route-arm": "smol-llamacpp"}
        r = await gw.client.post("/v1/chat/completions", json=chat("smol"), headers=headers)
        assert r.headers["x-route-arm"] == "smol-llamacpp"
    assert len(upstreams["b4"].generation_bodies) == 2


async def test_a_model_served_only_by_pinned_only_arms_is_pinned_by_its_name(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    async with make_gateway(**DEPLOYMENT) as gw:
        r = await gw.client.post("/v1/completions", json={"model": "llama", "prompt": "Once upon"})
        assert r.status_code == 200, r.text
        assert r.headers["x-route-arm"] == "llama-only" and r.json()["model"] == "llama"
        models = (await gw.client.get("/v1/models")).json()["data"]
        assert "llama" in {m["id"] for m in models}
    assert len(upstreams["b4"].generation_bodies) == 1


async def test_pinning_a_routed_arm_still_works_beside_pinned_only_ones(make_gateway: MakeGateway) -> None:
    async with make_gateway(**DEPLOYMENT) as gw:
        r = await gw.client.post("/v1/chat/completions", json=chat("smol", {"arm": "smollm2-spec-ngram4"}))
        assert (r.headers["x-route-arm"], r.headers["x-route-reason"]) == ("smollm2-spec-ngram4", "pinned")


def test_the_router_needs_one_arm_that_is_not_pinned_only() -> None:
    config = {"backends": CONFIG["backends"], "arms": [{**ARMS[0], "pinned_only": True}]}
    with pytest.raises(ValueError, match="pinned_only"):
        Settings.model_validate(config)
