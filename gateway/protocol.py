"""OpenAI wire protocol: the request and response shapes the gateway checks and emits.

Requests are validated for the fields the gateway itself relies on or that are cheap to get
wrong (types, ranges); every other field — ``tools``, ``response_format``, vLLM's extras — is
kept (``extra="allow"``) and forwarded untouched. The gateway forwards the client's own JSON,
not a re-serialisation of these models, so nothing is lost or reformatted.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

# the two generation endpoints: /v1/chat/completions and /v1/completions
Endpoint = Literal["chat", "completions"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool | None = Field(None, description="Send a final chunk with token usage.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(min_length=1, description="system, user, assistant, tool, developer, ...")
    content: str | list[dict[str, Any]] | None = None


class _GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="A public model name from /v1/models, or 'auto'.")
    # Strict: the gateway acts on ``stream`` and ``include_usage`` itself, so ``"false"`` must not pass.
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    # Strict: capped by the gateway (limits.*), so "1000000" and 1000000.0 must not slip past the cap
    n: StrictInt | None = Field(1, ge=1, le=128)
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope; every error the gateway returns has this shape."""

    error: ErrorBody


class FeedbackRequest(BaseModel):
    """A caller's rating of one answer (``POST /v1/feedback``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        min_length=1, max_length=256, description="The response's id (chatcmpl-...) or its x-request-id header."
    )
    rating: float = Field(ge=0, le=1, allow_inf_nan=False, description="1 = good answer, 0 = bad.")
    comment: str | None = Field(None, max_length=4096)
    labels: dict[str, str] | None = Field(None, max_length=32, description="Free-form tags, e.g. {'task': 'maths'}.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llm-gateway"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def prompt_text(body: dict[str, Any]) -> str:
    """Flatten a chat or completion body into plain text for the router (text parts only)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return ""
