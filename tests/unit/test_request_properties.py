"""Property-based tests (hypothesis) of the request models and the routing-flag parser.

Whatever JSON a client sends, validation either accepts it or fails with a pydantic
``ValidationError`` (which the gateway turns into a 400 naming the field), flag parsing either
returns flags in their documented ranges or raises ``FlagError`` naming the flag, and the
estimate and caps of :mod:`gateway.limits` never crash on an accepted body.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.errors import InvalidRequest
from gateway.limits import check_caps, estimate_tokens
from gateway.protocol import ChatCompletionRequest, CompletionRequest, prompt_text
from gateway.settings import LimitSettings
from router.flags import ACCURACY_LEVELS, HEADERS, FlagError, parse_flags

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = [
    *("model", "messages", "prompt", "stream", "stream_options", "n", "max_tokens", "temperature", "top_p"),
    *("presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "top_k"),
]
# Bodies that use the real field names, with arbitrary values, plus arbitrary extra fields.
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=8)

messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=50)},
        optional={"name": st.text(max_size=5)},
    ),
    min_size=1,
    max_size=5,
)
valid_chat = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=10), "messages": messages},
    optional={
        "stream": st.booleans(),
        "n": st.integers(1, 128),
        "max_tokens": st.integers(1, 10**6),
        "temperature": st.floats(0.01, 2),  # 0 (greedy) takes n = 1 only
        "top_p": st.floats(0.001, 1),
        "tools": json_values,
        "x_vendor_extra": json_values,
    },
)


@FAST
@given(body=bodies)
def test_any_json_body_validates_or_fails_with_a_validation_error(body: dict[str, Any]) -> None:
    for model in (ChatCompletionRequest, CompletionRequest):
        try:
            model.model_validate(body)
        except ValidationError as exc:
            assert exc.errors(), "a rejection names at least one problem"
    assert isinstance(prompt_text(body), str)


@FAST
@given(body=valid_chat)
def test_valid_chat_bodies_pass_keep_unknown_fields_and_estimate_positive(body: dict[str, Any]) -> None:
    parsed = ChatCompletionRequest.model_validate(body)
    extras = set(body) - set(ChatCompletionRequest.model_fields)
    assert set(parsed.model_extra or {}) == extras
    limits = LimitSettings(max_tokens=1000, max_n=4, max_messages=3)
    assert estimate_tokens(body, limits) >= 1
    try:
        check_caps(body, limits)
    except InvalidRequest as exc:
        assert exc.param in ("max_tokens", "n", "messages")
        assert exc.message.startswith(f"{exc.param}: ")


@FAST
@given(value=json_values.filter(lambda v: not isinstance(v, bool) and v is not None))
def test_stream_must_be_a_real_boolean(value: Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": value}
    try:
        ChatCompletionRequest.model_validate(body)
    except ValidationError:
        return
    raise AssertionError(f"stream={value!r} was accepted")


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
route_values = st.dictionaries(
    st.sampled_from(list(HEADERS)) | st.text(max_size=6), json_values | header_text, max_size=5
)
header_maps = st.dictionaries(st.sampled_from(list(HEADERS.values())), header_text, max_size=5)


@FAST
@given(route=json_values | route_values, headers=header_maps)
def test_flag_parsing_returns_flags_in_range_or_names_the_flag(route: Any, headers: dict[str, str]) -> None:
    try:
        flags = parse_flags(route, headers)
    except FlagError as exc:
        assert exc.param == "route" or exc.param.startswith("route.") or exc.param in HEADERS.values()
        assert exc.message.startswith(exc.param + ": ")
        return
    acc = flags.accuracy
    assert acc is None or acc in ACCURACY_LEVELS or (isinstance(acc, float) and 0.0 <= acc <= 1.0)
    for ms in (flags.max_latency_ms, flags.max_ttft_ms):
        assert ms is None or (isinstance(ms, int) and not isinstance(ms, bool) and ms > 0)
    assert flags.prefer in (None, "quality", "balanced", "speed")
    assert flags.arm is None or (isinstance(flags.arm, str) and flags.arm)


valid_flags = st.fixed_dictionaries(
    {},
    optional={
        "accuracy": st.sampled_from(ACCURACY_LEVELS) | st.floats(0, 1),
        "max_latency_ms": st.integers(1, 10**9),
        "max_ttft_ms": st.integers(1, 10**9),
        "prefer": st.sampled_from(["quality", "balanced", "speed"]),
        "arm": st.text(min_size=1, max_size=10),
    },
)


@FAST
@given(body=valid_flags, header_flags=valid_flags)
def test_valid_flags_round_trip_and_the_body_wins_over_headers(
    body: dict[str, Any], header_flags: dict[str, Any]
) -> None:
    headers = {HEADERS[k]: str(v) for k, v in header_flags.items() if k != "arm" or v.isprintable()}
    flags = parse_flags(body, headers)
    for name, value in body.items():
        assert getattr(flags, name) == value
    for name in set(header_flags) - set(body):
        if HEADERS[name] in headers:
            got = getattr(flags, name)
            assert str(got) == headers[HEADERS[name]] or float(got) == float(headers[HEADERS[name]])
