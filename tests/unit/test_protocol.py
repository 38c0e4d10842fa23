"""Request models keep unknown fields; ``prompt_text`` flattens bodies for the router."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.protocol import ChatCompletionRequest, CompletionRequest, prompt_text


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
