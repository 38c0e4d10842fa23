"""The OpenAI surface against fake vLLM upstreams: bodies in and out, streams, route headers, probes, metrics."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from fake_vllm import CONFIG, PATHS, TOKENS, USAGE, Gateway, MakeGateway, Upstreams, request_body

ENDPOINTS = ("chat", "completions")
TEXT = "".join(TOKENS)


def token_text(endpoint: str, chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0]
    return str(choice["delta"].get("content") or "") if endpoint == "chat" else str(choice["text"])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_non_streaming_answer_carries_the_public_model_name(gw: Gateway, endpoint: str) -> None:
    r = await gw.generate(endpoint, max_tokens=8)

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "smol"
    choice = body["choices"][0]
    assert (choice["message"]["content"] if endpoint == "chat" else choice["text"]) == TEXT
    assert body["usage"] == USAGE
    [sent] = gw.upstreams["b1"].generation_bodies
    assert sent["model"] == "smol-served"
    assert gw.upstreams["b1"].requests[-1].url.path == PATHS[endpoint]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_stream_relays_every_chunk_renamed_and_strips_the_forced_usage_chunk(gw: Gateway, endpoint: str) -> None:
    r = await gw.generate(endpoint, stream=True)

    assert r.status_code == 200
    events = gw.events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["model"] == "smol" for c in chunks)
    assert "".join(token_text(endpoint, c) for c in chunks) == TEXT
    assert all(c["choices"] and "usage" not in c for c in chunks), "usage chunk must be stripped"
    if endpoint == "chat":
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert len(chunks) == 1 + len(TOKENS)
    [sent] = gw.upstreams["b1"].generation_bodies
    assert sent["model"] == "smol-served"
    assert sent["stream_options"] == {"include_usage": True}, "usage is forced on upstream"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_stream_keeps_the_usage_chunk_when_the_client_asked(gw: Gateway, endpoint: str) -> None:
    options = {"include_usage": True, "continuous_usage_stats": False}
    r = await gw.generate(endpoint, stream=True, stream_options=options)

    events = gw.events(r)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == USAGE
    assert usage_chunk["model"] == "smol"
    [sent] = gw.upstreams["b1"].generation_bodies
    assert sent["stream_options"] == options, "the client's other stream options reach upstream untouched"


async def test_stream_reassembles_events_split_across_reads(gw: Gateway, upstreams: Upstreams) -> None:
    whole = gw.events(await gw.generate(stream=True))
    upstreams["b1"].split_every = 7  # events cut at arbitrary byte boundaries, as TCP may deliver them

    split = gw.events(await gw.generate(stream=True))

    assert len(upstreams["b1"].streams[-1].chunks) > len(whole) * 10
    strip_ids = [{k: v for k, v in c.items() if k != "id"} if isinstance(c, dict) else c for c in split]
    assert strip_ids == [{k: v for k, v in c.items() if k != "id"} if isinstance(c, dict) else c for c in whole]


@pytest.mark.parametrize("stream", [False, True])
async def test_every_other_body_field_reaches_upstream_untouched(gw: Gateway, stream: bool) -> None:
    body: dict[str, Any] = {
        "model": "smol",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}], "name": "alice"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        ],
        "stream": stream,
        "n": 2,
        "temperature": 0.3,
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        "logit_bias": {"50256": -100},
        "seed": 7,
        "top_k": 20,  # a vLLM extra
        "x_unknown_extension": {"nested": [1, 2.5, None, True]},
    }

    r = await gw.client.post("/v1/chat/completions", json=body)

    assert r.status_code == 200
    [sent] = gw.upstreams["b1"].generation_bodies
    expected = copy.deepcopy(body)
    expected["model"] = "smol-served"
    if stream:
        expected["stream_options"] = {"include_usage": True}
    assert sent == expected


async def test_routing_flags_are_consumed_not_forwarded(gw: Gateway) -> None:
    r = await gw.generate(route={"prefer": "speed"}, max_tokens=4)

    assert r.status_code == 200
    [sent] = gw.upstreams["b1"].generation_bodies
    assert "route" not in sent
    assert sent["max_tokens"] == 4


ROUTES = {
    "smol": {
        "x-route-arm": "smol-plain",
        "x-route-model": "smol",
        "x-route-strategy": "plain",
        "x-route-backend": "b1",
        "x-route-reason": "single-arm",
    },
    "coder": {
        "x-route-arm": "coder-spec",
        "x-route-model": "coder",
        "x-route-strategy": "speculative-ngram-k4",
        "x-route-backend": "b3",
        "x-route-reason": "single-arm",
    },
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", sorted(ROUTES))
async def test_route_headers_name_arm_model_strategy_backend(
    gw: Gateway, model: str, stream: bool, endpoint: str
) -> None:
    r = await gw.generate(endpoint, model=model, stream=stream)

    assert r.status_code == 200
    assert {k: r.headers.get(k) for k in ROUTES[model]} == ROUTES[model]
    served = gw.upstreams[ROUTES[model]["x-route-backend"]].generation_bodies[-1]["model"]
    assert served == f"{model}-served"


async def test_auto_picks_the_least_loaded_arm_and_says_so(gw: Gateway, upstreams: Upstreams) -> None:
    upstreams["b1"].running, upstreams["b2"].running = 3, 2
    await gw.pool.check_all()

    r = await gw.generate(model="auto")

    assert r.status_code == 200
    assert r.headers["x-route-arm"] == "coder-spec"
    assert r.headers["x-route-reason"] == "least-loaded"
    assert r.json()["model"] == "coder", "auto answers with the chosen arm's public model"


async def test_upstream_auth_header_is_sent_when_configured(make_gateway: MakeGateway, upstreams: Upstreams) -> None:
    backends = copy.deepcopy(CONFIG["backends"])
    backends[0]["api_key"] = "s3cret"
    async with make_gateway(backends=backends) as gw:
        r = await gw.generate()

    assert r.status_code == 200
    assert {req.url.path: req.headers.get("authorization") for req in upstreams["b1"].requests} == {
        "/health": "Bearer s3cret",
        "/metrics": "Bearer s3cret",
        "/v1/chat/completions": "Bearer s3cret",
    }
    assert all("authorization" not in req.headers for req in upstreams["b2"].requests)


async def test_models_lists_public_models_and_auto(gw: Gateway) -> None:
    r = await gw.client.get("/v1/models")

    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["smol", "coder", "auto"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])


async def test_health_answers_while_no_backend_is_up(make_gateway: MakeGateway, upstreams: Upstreams) -> None:
    for fake in upstreams.values():
        fake.healthy = False
    async with make_gateway() as gw:
        r = await gw.client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_ready_when_a_backend_is_healthy(gw: Gateway) -> None:
    r = await gw.client.get("/ready")

    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    assert {name: b["healthy"] for name, b in body["backends"].items()} == {"b1": True, "b2": True, "b3": True}


async def test_not_ready_with_retry_after_until_a_backend_passes_health(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    for fake in upstreams.values():
        fake.healthy = False
    async with make_gateway(timeouts={"retry_after_s": 7}) as gw:
        down = await gw.client.get("/ready")
        upstreams["b3"].healthy = True
        await gw.pool.check_all()
        up = await gw.client.get("/ready")

    assert down.status_code == 503
    assert down.headers["retry-after"] == "7"
    assert down.json()["ready"] is False
    assert all(b["error"] == "/health returned 503" for b in down.json()["backends"].values())
    assert up.status_code == 200
    assert up.json()["backends"]["b3"]["healthy"] is True


async def test_least_loaded_backend_of_an_arm_from_scraped_vllm_metrics(gw: Gateway, upstreams: Upstreams) -> None:
    upstreams["b1"].running, upstreams["b1"].waiting = 4, 2
    await gw.pool.check_all()
    first = await gw.generate()

    upstreams["b1"].running, upstreams["b1"].waiting = 0, 0
    upstreams["b2"].running, upstreams["b2"].kv_usage = 1, 0.5
    await gw.pool.check_all()
    second = await gw.generate()

    assert first.headers["x-route-backend"] == "b2"
    assert second.headers["x-route-backend"] == "b1"
    assert len(upstreams["b1"].generation_bodies) == len(upstreams["b2"].generation_bodies) == 1
    ready = (await gw.client.get("/ready")).json()["backends"]
    assert ready["b2"]["load"] == pytest.approx(1.5), "running + waiting + kv-cache use, from /metrics"


async def test_metrics_record_ttft_tokens_and_status_after_a_stream(gw: Gateway) -> None:
    r = await gw.generate(stream=True)
    assert r.status_code == 200

    exposition = await gw.client.get("/metrics")
    assert exposition.status_code == 200
    assert exposition.headers["content-type"].startswith("text/plain")
    series = {"model": "smol", "strategy": "plain"}
    assert gw.metric("gateway_requests_total", **series, endpoint="chat", status="200") == 1
    assert gw.metric("gateway_time_to_first_token_seconds_count", **series) == 1
    assert gw.metric("gateway_inter_token_latency_seconds_count", **series) == len(TOKENS) - 1
    assert gw.metric("gateway_request_duration_seconds_count", **series) == 1
    assert gw.metric("gateway_output_tokens_per_second_count", **series) == 1
    assert gw.metric("gateway_prompt_tokens_total", **series) == USAGE["prompt_tokens"]
    assert gw.metric("gateway_output_tokens_total", **series) == USAGE["completion_tokens"]
    assert gw.metric("gateway_routing_decisions_total", **series, reason="single-arm") == 1
    assert gw.metric("gateway_router_decision_seconds_count") == 1
    assert gw.metric("gateway_inflight_requests", backend="b1") == 0
    assert gw.metric("gateway_backend_up", backend="b1") == 1
    ttft_sum = gw.metric("gateway_time_to_first_token_seconds_sum", **series)
    assert ttft_sum is not None and 0 < ttft_sum < 5
    assert "gateway_time_to_first_token_seconds_count" in exposition.text


async def test_metrics_count_tokens_of_non_streaming_answers(gw: Gateway) -> None:
    await gw.generate("completions", model="coder")

    series = {"model": "coder", "strategy": "speculative-ngram-k4"}
    assert gw.metric("gateway_requests_total", **series, endpoint="completions", status="200") == 1
    assert gw.metric("gateway_output_tokens_total", **series) == USAGE["completion_tokens"]
    assert gw.metric("gateway_request_duration_seconds_count", **series) == 1
    assert gw.metric("gateway_time_to_first_token_seconds_count", **series) == 0, "no TTFT without a stream"


async def test_dry_run_route_decides_without_calling_a_backend(gw: Gateway, upstreams: Upstreams) -> None:
    r = await gw.client.post("/v1/route", json=request_body("completions", model="coder"))

    assert r.status_code == 200
    doc = r.json()
    assert (doc["arm"], doc["strategy"], doc["backends"], doc["reason"]) == (
        "coder-spec",
        "speculative-ngram-k4",
        ["b3"],
        "single-arm",
    )
    assert not any(fake.generation_bodies for fake in upstreams.values())


async def test_every_arm_exports_its_series_at_zero_before_any_request(gw: Gateway) -> None:
    """rate() sees no increase in a series whose first sample already counts a request."""
    for model, strategy in (("smol", "plain"), ("coder", "speculative-ngram-k4")):
        assert gw.metric("gateway_time_to_first_token_seconds_count", model=model, strategy=strategy) == 0
        assert gw.metric("gateway_output_tokens_total", model=model, strategy=strategy) == 0


LEARNED_ARMS = [
    {"name": "smollm2-plain", "model": "smol", "backends": ["b1"], "strategy": {"kind": "plain"}},
    {"name": "smollm2-spec-ngram4", "model": "smol", "backends": ["b2"], "strategy": {"kind": "plain"}},
    {"name": "qwen-coder-0.5b-plain", "model": "coder", "backends": ["b3"], "strategy": {"kind": "plain"}},
]


async def test_cheap_features_run_on_the_event_loop_and_long_prompts_in_a_thread(make_gateway: MakeGateway) -> None:
    """The default (features-only) artifact spares the thread hop, except for a prompt long enough to block."""
    async with make_gateway(arms=LEARNED_ARMS, routing={"policy": "learned"}) as gw:
        policy = gw.app.state.proxy.policy
        assert policy.cheap_features
        threads: list[str] = []
        featurize = policy.featurize

        def spy(prompt: str) -> Any:
            threads.append(threading.current_thread().name)
            return featurize(prompt)

        policy.featurize = spy
        for content in ("What is 12 * 7?", "word " * 2000):
            body = {"model": "auto", "messages": [{"role": "user", "content": content}]}
            r = await gw.client.post("/v1/route", json=body)
            assert r.status_code == 200, r.text
        assert threads[0] == threading.main_thread().name
        assert threads[1] != threading.main_thread().name


async def test_strict_flags_that_no_arm_can_keep_are_refused_before_generation(
    make_gateway: MakeGateway, upstreams: Upstreams
) -> None:
    """route.strict + a budget no arm fits: an OpenAI-style 422 naming the flag; nothing is generated.
    Without strict, the same request is answered and the reason says the budget could not be met."""
    async with make_gateway(arms=LEARNED_ARMS, routing={"policy": "learned"}) as gw:
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": "Write a long essay about the history of Rome."}],
            "route": {"max_latency_ms": 1, "strict": True},
        }
        r = await gw.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert (err["type"], err["code"], err["param"]) == (
            "invalid_request_error",
            "route_unmeetable",
            "route.max_latency_ms",
        )
        assert not any(fake.generation_bodies for fake in upstreams.values())

        r = await gw.client.post("/v1/route", json={**body, "route": {"max_latency_ms": 1}})
        assert r.status_code == 200 and r.json()["reason"] == "budget-unmeetable"

        r = await gw.client.post("/v1/route", json={**body, "route": {"strict": "yes"}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "route.strict"


async def test_finished_requests_feed_the_policys_latency_residuals(make_gateway: MakeGateway) -> None:
    async with make_gateway(arms=LEARNED_ARMS, routing={"policy": "learned"}) as gw:
        policy = gw.app.state.proxy.policy
        for stream in (False, True):
            body = {"model": "auto", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}
            r = await gw.client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
        assert sum(policy.residuals.samples(a) for a in policy.model.arms) == 2


@pytest.mark.parametrize("route", [{}, {"arm": "qwen-coder-0.5b-plain"}], ids=["single-arm-model", "pinned-arm"])
async def test_a_forecast_without_a_choice_is_still_made_for_the_prompt(
    make_gateway: MakeGateway, route: dict[str, Any]
) -> None:
    """A single-arm model or a pinned arm needs no choice, but its forecast feeds the arm's live
    corrections (and a strict budget): it must be made for the request's prompt, not an empty one."""
    async with make_gateway(arms=LEARNED_ARMS, routing={"policy": "learned"}) as gw:
        ttft = []
        for content in ("Hi", "Summarise this report. " + "The quarterly figures rose again. " * 120):
            body = {"model": "coder", "messages": [{"role": "user", "content": content}], "route": route}
            r = await gw.client.post("/v1/route", json=body)
            assert r.status_code == 200, r.text
            ttft.append(r.json()["predictions"]["qwen-coder-0.5b-plain"]["ttft_ms"])
        assert ttft[1] > ttft[0]


async def test_routed_requests_are_counted_per_predicted_task_family(make_gateway: MakeGateway) -> None:
    """The shipped artifact recognises the prompt's task family; the gateway counts decisions by it."""
    async with make_gateway(arms=LEARNED_ARMS, routing={"policy": "learned"}) as gw:
        question = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        question += "How many clips did Natalia sell altogether in April and May?\n\n"
        question += "Solve the problem step by step, briefly. Finish with a line of the form 'The answer is N.'"
        r = await gw.client.post(
            "/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": question}]}
        )
        assert r.status_code == 200, r.text
        model, strategy = r.headers["x-route-model"], r.headers["x-route-strategy"]
        assert gw.metric("gateway_routing_family_decisions_total", family="gsm8k", model=model, strategy=strategy) == 1
        assert gw.metric("gateway_routing_family_decisions_total", family="rename", model=model, strategy=strategy) == 0
