"""Request models keep unknown fields; ``prompt_text`` flattens bodies for the router."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.protocol import ChatCompletionRequest, CompletionRequest, prompt_text
from gateway.request_body import validation_error


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"messages": [{"role": "user", "content": "2+2?"}]}, "2+2?"),
        (
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
            "Be brief.\nHi",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                            {"type": "text", "text": "in this picture?"},
                        ],
                    }
                ]
            },
            "What is\nin this picture?",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                    {"role": "tool", "content": "sunny"},
                ]
            },
            "weather?\nsunny",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}, "bare"]}]}, ""),
        ({"messages": ["not a dict", {"role": "user", "content": "ok"}]}, "ok"),
        ({"messages": []}, ""),
        ({"prompt": "Once upon a time"}, "Once upon a time"),
        ({"prompt": ["one", "two"]}, "one\ntwo"),
        ({"prompt": [1, 2, 3]}, ""),  # token ids: no text
        ({"prompt": [[1, 2], [3]]}, ""),
        ({"prompt": []}, ""),
        ({"messages": "not a list", "prompt": "fallback"}, "fallback"),
        ({}, ""),
    ],
)
def test_prompt_text(body: dict[str, Any], text: str) -> None:
    assert prompt_text(body) == text


def test_requests_keep_unknown_fields() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi", "name": "alice"}],
        "tools": [{"type": "function"}],
        "top_k": 5,
    }
    req = ChatCompletionRequest.model_validate(body)

    dumped = req.model_dump(exclude_unset=True)
    assert dumped["tools"] == [{"type": "function"}] and dumped["top_k"] == 5
    assert dumped["messages"][0]["name"] == "alice"


@pytest.mark.parametrize(
    ("fields", "valid"),
    [
        ({"stream": True}, True),
        ({"stream": None}, True),  # OpenAI allows null for optional fields
        ({"n": None}, True),
        ({"stream": "true"}, False),  # the gateway acts on stream itself: no lax coercion
        ({"stream": 1}, False),
        ({"stream_options": {"include_usage": "yes"}}, False),
        ({"stream_options": {"include_usage": None, "continuous_usage_stats": True}}, True),
    ],
)
def test_flags_the_gateway_acts_on_are_strict(fields: dict[str, Any], valid: bool) -> None:
    body = {"model": "m", "prompt": "p", **fields}
    if valid:
        CompletionRequest.model_validate(body)
    else:
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate(body)


# (endpoint, fields, the param a 400 names, or None: accepted) — the ranges of vLLM's SamplingParams
SAMPLING = [
    ("chat", {"temperature": 0}, None),
    ("chat", {"temperature": 2}, None),
    ("chat", {"temperature": 2.01}, "temperature"),
    ("chat", {"temperature": -0.1}, "temperature"),
    ("chat", {"temperature": float("inf")}, "temperature"),
    ("chat", {"top_p": 1}, None),
    ("chat", {"top_p": 0}, "top_p"),
    ("chat", {"top_p": 1.5}, "top_p"),
    ("chat", {"presence_penalty": -2, "frequency_penalty": 2}, None),
    ("chat", {"presence_penalty": 2.5}, "presence_penalty"),
    ("completions", {"frequency_penalty": -3}, "frequency_penalty"),
    ("chat", {"repetition_penalty": 1.2}, None),
    ("chat", {"repetition_penalty": 0}, "repetition_penalty"),
    ("chat", {"top_k": -1}, None),
    ("chat", {"top_k": -2}, "top_k"),
    ("chat", {"min_p": 1.1}, "min_p"),
    ("chat", {"n": 4, "temperature": 0.7}, None),
    ("chat", {"n": 2, "temperature": 0}, "n"),
    ("completions", {"n": 2, "temperature": 0.0}, "n"),
    ("chat", {"n": 2}, None),  # the backend's default temperature decides; vLLM's is 1
    ("chat", {"logprobs": True, "top_logprobs": 5}, None),
    ("chat", {"top_logprobs": 0}, None),
    ("chat", {"top_logprobs": 5}, "top_logprobs"),
    ("chat", {"logprobs": False, "top_logprobs": 5}, "top_logprobs"),
    ("chat", {"logprobs": True, "top_logprobs": -2}, "top_logprobs"),
    ("completions", {"logprobs": 5}, None),
    ("completions", {"logprobs": -1}, None),
    ("completions", {"logprobs": -3}, "logprobs"),
]


@pytest.mark.parametrize(("endpoint", "fields", "param"), SAMPLING)
def test_sampling_parameters_in_the_ranges_vllm_accepts(
    endpoint: str, fields: dict[str, Any], param: str | None
) -> None:
    model = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
    base: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]} if endpoint == "chat" else {"prompt": "p"}
    body = {"model": "m", **base, **fields}
    if param is None:
        model.model_validate(body)
        return
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    error = validation_error(caught.value, body)
    assert error.param == param and error.message.startswith(f"{param}: "), error.message
