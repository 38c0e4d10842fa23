"""What held up in issue 18's attack run, kept so: each was probed and behaved; these are its
regression tests where none existed (the rest are named in docs/reliability.md, "Hardening")."""

from __future__ import annotations

import asyncio
import logging

import pytest
from fake_vllm import Gateway, MakeGateway, Upstreams, request_body

from gateway.auth import hash_key

HEADERS = {"content-type": "application/json"}
CHAT_HEAD = b'{"model":"smol","messages":[{"role":"user","content":"hi"}],'


@pytest.mark.parametrize(
    "content",
    [
        CHAT_HEAD + b'"temperature":NaN}',
        CHAT_HEAD + b'"temperature":Infinity}',
        CHAT_HEAD + b'"temperature":-Infinity}',
        CHAT_HEAD + b'"temperature":1e400}',
        b'{"model":"smol","messages":[{"role":"user","content":"\\ud800"}]}',  # a lone surrogate
        b'{"model":"smol","messages":[{"role":"user","content":"a\x00b"}]}',  # a raw NUL
        b'{"model":"smol","messages":[{"role":"user","content":"\xc3\x28"}]}',  # invalid UTF-8
    ],
    ids=["nan", "infinity", "-infinity", "1e400", "lone-surrogate", "raw-nul", "invalid-utf8"],
)
async def test_numbers_and_strings_json_does_not_allow_are_400(gw: Gateway, content: bytes) -> None:
    r = await gw.client.post("/v1/chat/completions", content=content, headers=HEADERS)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "not valid JSON" in err["message"]
    assert not gw.upstreams["b1"].generation_bodies and not gw.upstreams["b2"].generation_bodies


async def test_an_escaped_nul_is_valid_json_and_is_forwarded(gw: Gateway) -> None:
    r = await gw.client.post(
        "/v1/chat/completions", json=request_body("chat", messages=[{"role": "user", "content": "a\x00b"}])
    )
    assert r.status_code == 200, r.text


async def test_a_hundred_thousand_messages_are_a_400_naming_them(gw: Gateway) -> None:
    messages = [{"role": "user", "content": "x"}] * 100_000
    r = await gw.client.post("/v1/chat/completions", json=request_body("chat", messages=messages))
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["param"] == "messages"
    assert not gw.upstreams["b1"].generation_bodies and not gw.upstreams["b2"].generation_bodies


async def test_64_concurrent_requests_against_rpm_30_admit_exactly_30(make_gateway: MakeGateway) -> None:
    key = "sk-held-up-rpm"
    keys = {"keys": [{"name": "team-a", "sha256": hash_key(key), "rpm": 30}]}
    async with make_gateway(auth=keys) as gw:
        auth = {"authorization": f"Bearer {key}"}
        results = await asyncio.gather(
            *(gw.client.post("/v1/chat/completions", json=request_body("chat"), headers=auth) for _ in range(64))
        )
    codes = [r.status_code for r in results]
    assert codes.count(200) == 30 and codes.count(429) == 34, codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in results if r.status_code == 429)


async def test_no_metric_label_takes_a_clients_value(
    gw: Gateway, upstreams: Upstreams, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    evil = "evilvalue7q"
    await gw.generate(model=f"{evil}-model")
    await gw.client.post(
        "/v1/chat/completions",
        json=request_body("chat", messages=[{"role": "user", "content": f"{evil} prompt"}], user=evil),
        headers={"x-request-id": f"{evil}-id", "x-route-arm": f"{evil}-arm", "x-session-id": evil, "x-api-key": evil},
    )
    await gw.generate(route={"prefer": evil})
    upstreams["b1"].fail = upstreams["b2"].fail = 500
    upstreams["b1"].fail_body = upstreams["b2"].fail_body = (
        f'{{"error":{{"message":"{evil}","type":"{evil}"}}}}'.encode()
    )
    await gw.generate()
    await gw.client.post(
        "/v1/chat/completions", json=request_body("chat", messages=[{"role": "user", "content": evil}])
    )
    exposition = gw.app.state.metrics.exposition().decode()
    assert evil not in exposition
    assert f"{evil} prompt" not in caplog.text  # prompts reach no log
