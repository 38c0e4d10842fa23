"""Request caps, the up-front token estimate and the per-key token buckets (with a fake clock)."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from gateway.auth import ApiKey
from gateway.errors import InvalidRequest, RateLimited
from gateway.limits import RateLimiter, check_caps, estimate_tokens
from gateway.settings import LimitSettings

LIMITS = LimitSettings(max_tokens=100, max_n=2, max_messages=3, assumed_completion_tokens=50)
MSG = {"role": "user", "content": "x"}


@pytest.mark.parametrize(
    ("body", "param", "reason"),
    [
        ({"max_tokens": 101}, "max_tokens", "max_tokens"),
        ({"max_completion_tokens": 101}, "max_completion_tokens", "max_tokens"),
        ({"n": 3}, "n", "n"),
        ({"messages": [MSG] * 4}, "messages", "messages"),
    ],
)
def test_over_a_cap_is_a_400_naming_the_field(body: dict[str, Any], param: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_caps(body, LIMITS)
    assert (info.value.status, info.value.param, info.value.reason) == (400, param, reason)
    assert info.value.message.startswith(f"{param}: ")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "n"])
@pytest.mark.parametrize("value", ["1000000", 1000000.0, 2.0, True, [5], {"n": 1}])
def test_a_capped_field_that_is_not_an_integer_is_a_400_naming_it(field: str, value: Any) -> None:
    """Issue 18 #2: a string or float used to skip the cap (only ``int`` values were compared)."""
    with pytest.raises(InvalidRequest) as info:
        check_caps({field: value}, LIMITS)
    assert (info.value.status, info.value.param) == (400, field)
    assert info.value.message.startswith(f"{field}: must be an integer")


@pytest.mark.parametrize(
    "body", [{"max_tokens": 100, "n": 2, "messages": [MSG] * 3}, {"max_tokens": None, "n": None}, {"prompt": "x"}]
)
def test_at_or_under_the_caps_passes(body: dict[str, Any]) -> None:
    check_caps(body, LIMITS)


def test_without_a_max_tokens_cap_any_value_passes() -> None:
    check_caps({"max_tokens": 10**9}, LimitSettings())


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        ({"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 10}, 10 + 10),
        ({"messages": [{"role": "user", "content": "x" * 41}], "max_completion_tokens": 10, "max_tokens": 99}, 11 + 10),
        ({"prompt": "abcd", "n": 3}, 1 + 50 * 3),
        ({"prompt": [1, 2, 3], "max_tokens": 5}, 3 + 5),
        ({"prompt": [[1, 2], [3]], "max_tokens": 5}, 3 + 5),
    ],
)
def test_estimate(body: dict[str, Any], tokens: int) -> None:
    assert estimate_tokens(body, LIMITS) == tokens


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "description": "d" * 4000}}}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [TOOL]),
        ("functions", [TOOL["function"]]),
        ("response_format", {"type": "json_schema", "json_schema": {"schema": {"description": "d" * 4000}}}),
        ("guided_json", {"description": "d" * 4000}),  # any structured extra the upstream may read
        ("tool_choice", {"type": "function", "function": {"name": "f" * 4000}}),
    ],
)
def test_the_estimate_counts_structured_fields_at_their_serialized_size(field: str, value: Any) -> None:
    text = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 10}
    extra = len(orjson.dumps(value))
    assert extra > 4000
    assert estimate_tokens({**text, field: value}, LIMITS) == 10 + 10 + math.ceil(extra / 4)


def test_the_estimate_counts_non_text_message_content() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 40_000}}
    parts = [{"type": "text", "text": "x" * 40}, image]
    body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 10}
    assert estimate_tokens(body, LIMITS) == 10 + 10 + math.ceil(len(orjson.dumps(image)) / 4)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "a" * 8000}}
    calls = {"messages": [{"role": "assistant", "content": None, "tool_calls": [call]}], "max_tokens": 10}
    assert estimate_tokens(calls, LIMITS) == math.ceil(len(orjson.dumps([call])) / 4) + 10


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refuse_with_retry_after_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = ApiKey("k", None, rpm=2, tpm=None)
    limiter.admit(key, 10)
    limiter.admit(key, 10)
    with pytest.raises(RateLimited) as info:
        limiter.admit(key, 10)
    err = info.value
    assert (err.status, err.type, err.code, err.reason) == (
        429,
        "requests",
        "rate_limit_exceeded",
        "rate_limit_requests",
    )
    assert err.headers["retry-after"] == "30"  # one request refills in 60 / 2 s
    clock.now += 29.0
    with pytest.raises(RateLimited):
        limiter.admit(key, 10)
    clock.now += 1.0
    limiter.admit(key, 10)


def test_tokens_are_charged_up_front_and_corrected_with_usage() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = ApiKey("k", None, rpm=None, tpm=600)  # 10 tokens/s
    first = limiter.admit(key, 500)
    with pytest.raises(RateLimited) as info:
        limiter.admit(key, 500)  # 100 left, 400 missing: 40 s
    assert (info.value.type, info.value.headers["retry-after"]) == ("tokens", "40")
    first.settle(50)  # it used far less: 450 come back
    second = limiter.admit(key, 500)
    second.settle(None)  # unknown usage keeps the estimate
    second.settle(0)  # settles once only
    with pytest.raises(RateLimited):
        limiter.admit(key, 100)  # 50 left


def test_a_request_larger_than_a_minute_passes_on_a_full_bucket_and_leaves_a_debt() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = ApiKey("k", None, rpm=None, tpm=60)  # 1 token/s
    limiter.admit(key, 150)  # bucket 60 -> -90
    with pytest.raises(RateLimited) as info:
        limiter.admit(key, 1)
    assert info.value.headers["retry-after"] == "91"
    clock.now += 150
    limiter.admit(key, 150)


def test_refused_requests_take_nothing_and_keys_are_independent() -> None:
    limiter = RateLimiter(Clock())
    key = ApiKey("c", None, rpm=5, tpm=10)
    limiter.admit(key, 5)
    with pytest.raises(RateLimited):
        limiter.admit(key, 6)  # refused on tokens: must not have taken a request either
    for _ in range(3):
        limiter.admit(key, 0)
    limiter.admit(key, 5)  # 5 requests, 10 tokens: exactly the budgets
    with pytest.raises(RateLimited):
        limiter.admit(key, 0)
    limiter.admit(ApiKey("other", None, rpm=1, tpm=10), 10)


def test_no_key_or_no_budgets_is_never_limited() -> None:
    limiter = RateLimiter(Clock())
    for _ in range(1000):
        assert limiter.admit(None, 10**6).bucket is None
        assert limiter.admit(ApiKey("k", None, None, None), 10**6).bucket is None
