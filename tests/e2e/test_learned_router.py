"""The shipped learned router on the real local stack: flags change decisions, visibly.

A gateway of its own: live speed measurements left by the other modules' load (the dashboard
traffic runs many streams at once) would otherwise stand in for the arms' speed on a quiet stack.
"""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

MATHS = (
    "A baker sells 14 boxes of 12 muffins each day for 6 days and throws away 37 muffins. "
    "How many muffins does she sell? Solve step by step and finish with 'The answer is N.'"
)
CHAT = "hi there! how are you today?"


def dry_run(gateway_url: str, content: str, route: dict[str, object]) -> dict[str, object]:
    body = {"model": "auto", "messages": [{"role": "user", "content": content}], "route": route}
    resp = httpx.post(gateway_url + "/v1/route", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_route_dry_run_explains_every_arm(fresh_gateway_url: str) -> None:
    doc = dry_run(fresh_gateway_url, MATHS, {})
    predictions = doc["predictions"]
    assert set(predictions) == {"smollm2-plain", "smollm2-spec-ngram4", "qwen-coder-0.5b-plain"}
    for p in predictions.values():
        assert 0 <= p["quality"] <= 1 and p["latency_ms"] > 0 and p["tokens_per_s"] > 0
    assert doc["arm"] == doc["ranked"][0]
    assert doc["reason"].startswith("prefer-") or doc["reason"] in ("budget-unmeetable", "accuracy-unmet")
    for p in predictions.values():  # budgets are checked against calibrated upper bounds, not the point forecast
        assert p["latency_bound_ms"] >= 0.5 * p["latency_ms"] and p["ttft_bound_ms"] > 0
    assert doc["explanation"]


def test_maths_with_high_accuracy_and_chat_with_speed_take_different_arms(fresh_gateway_url: str) -> None:
    """Maths + accuracy=high goes to the stronger model, chit-chat + prefer=speed to a SmolLM2 arm.

    Models, not arms, are compared between the dry run and the real requests: between them the live
    statistics move (scraped queue depth, measured speed), which may swap SmolLM2's two strategy arms.
    """
    maths = dry_run(fresh_gateway_url, MATHS, {"accuracy": "high"})
    chat = dry_run(fresh_gateway_url, CHAT, {"prefer": "speed"})
    assert maths["arm"] != chat["arm"]
    assert maths["model"] == "qwen2.5-coder-0.5b" and chat["model"] == "smollm2-135m"
    client = openai.OpenAI(base_url=fresh_gateway_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    real_maths = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": MATHS}],
        max_tokens=8,
        extra_body={"route": {"accuracy": "high"}},
    )
    real_chat = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": CHAT}],
        max_tokens=8,
        extra_headers={"x-route-prefer": "speed"},
    )
    assert real_maths.headers["x-route-model"] == maths["model"]
    assert real_chat.headers["x-route-model"] == chat["model"]
    assert real_chat.headers["x-route-arm"] in ("smollm2-plain", "smollm2-spec-ngram4")
    assert real_maths.headers["x-route-reason"] == maths["reason"]
    assert real_chat.headers["x-route-reason"] == "prefer-speed"


def test_invalid_flags_are_400_naming_the_param(fresh_gateway_url: str) -> None:
    client = openai.OpenAI(base_url=fresh_gateway_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}], extra_body={"route": {"max_latency_ms": -5}}
        )
    assert err.value.param == "route.max_latency_ms"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}], extra_body={"route": {"arm": "no-such-arm"}}
        )
    assert "no-such-arm" in err.value.message


ESSAY = "Write a detailed essay of at least 600 words on the history of the Roman Empire, with an introduction."


def test_a_tight_budget_keeps_a_long_answer_off_the_slow_arm(fresh_gateway_url: str) -> None:
    """Without a budget, quality-first routing sends the essay to Qwen; with 6 s it must not (Qwen's
    calibrated p90 for a long answer is far above that), and the real request agrees with the dry run.
    The stream is closed as soon as the headers arrive: the decision is what is under test."""
    free = dry_run(fresh_gateway_url, ESSAY, {"prefer": "quality"})
    tight = dry_run(fresh_gateway_url, ESSAY, {"prefer": "quality", "max_latency_ms": 6000})
    qwen = tight["predictions"]["qwen-coder-0.5b-plain"]
    assert qwen["latency_bound_ms"] > 6000
    assert tight["arm"] != "qwen-coder-0.5b-plain"
    assert free["arm"] == "qwen-coder-0.5b-plain" or free["predictions"][free["arm"]]["quality"] >= qwen["quality"]
    body = {
        "model": "auto",
        "stream": True,
        "messages": [{"role": "user", "content": ESSAY}],
        "route": {"prefer": "quality", "max_latency_ms": 6000},
    }
    with httpx.stream("POST", fresh_gateway_url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-route-model"] == "smollm2-135m"


def test_strict_refuses_an_impossible_budget_before_generating(fresh_gateway_url: str) -> None:
    client = openai.OpenAI(base_url=fresh_gateway_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": ESSAY}],
            extra_body={"route": {"max_latency_ms": 50, "strict": True}},
        )
    assert err.value.param == "route.max_latency_ms"  # type: ignore[attr-defined]
    assert err.value.code == "route_unmeetable"  # type: ignore[attr-defined]
    answered = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": ESSAY}],
        max_tokens=4,
        extra_body={"route": {"max_latency_ms": 50}},
    )
    assert answered.headers["x-route-reason"] == "budget-unmeetable"  # answered, and says the budget was not kept
