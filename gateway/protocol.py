"""OpenAI wire protocol: the request and response shapes the gateway checks and emits.

Requests are validated for the fields the gateway itself relies on or that are cheap to get
wrong (types, ranges); every other field — ``tools``, ``response_format``, vLLM's extras — is
kept (``extra="allow"``) and forwarded untouched. The gateway forwards the client's own JSON,
not a re-serialisation of these models, so nothing is lost or reformatted.

Sampling parameters are held to the ranges vLLM's ``SamplingParams._verify_args`` and its request
models accept, so a bad value is a 400 naming the parameter here instead of an upstream error
(or one backend accepting what another refuses): ``temperature`` in [0, 2], ``top_p`` in (0, 1],
``presence_penalty`` / ``frequency_penalty`` in [-2, 2], ``repetition_penalty`` > 0, ``min_p`` in
[0, 1], ``top_k`` >= -1 (0 and -1: off), ``n`` in [1, 128] and 1 when ``temperature`` is 0 (greedy),
chat ``top_logprobs`` >= 0 (-1: all) and only with ``logprobs: true``, completion ``logprobs`` >= 0
(-1: all); every number finite. The upper bound of log probabilities is the backend's
``--max-logprobs`` (vLLM's default 20): its 400 is passed through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

# the endpoints requests are served on: /v1/chat/completions, /v1/completions, /v1/embeddings
Endpoint = Literal["chat", "completions", "embeddings"]
#: vLLM samples greedily below this temperature (``vllm.sampling_params._SAMPLING_EPS``)
GREEDY_TEMPERATURE = 1e-5


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
    # before n: n's check reads it
    temperature: float | None = Field(
        None, ge=0, le=2, allow_inf_nan=False, description="0: greedy (then n must be 1); at most 2."
    )
    # Strict: capped by the gateway (limits.*), so "1000000" and 1000000.0 must not slip past the cap
    n: StrictInt | None = Field(1, ge=1, le=128, description="Choices to generate; 1 when temperature is 0.")
    max_tokens: StrictInt | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    # vLLM's sampling extras
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False, description="vLLM: 1 is off.")
    top_k: int | None = Field(None, ge=-1, description="vLLM: 0 or -1 is off.")
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="vLLM: 0 is off.")

    @field_validator("n")
    @classmethod
    def _greedy_takes_one(cls, n: int | None, info: ValidationInfo) -> int | None:
        temperature = info.data.get("temperature")
        if n is not None and n > 1 and temperature is not None and temperature < GREEDY_TEMPERATURE:
            raise PydanticCustomError(
                "greedy_n", "must be 1 when temperature is 0 (greedy sampling), got {n}", {"n": n}
            )
        return n


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="Return the chosen tokens' log probabilities.")
    top_logprobs: int | None = Field(
        None, ge=-1, description="Most likely tokens per position (needs logprobs: true; vLLM: -1 is all)."
    )

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and top != 0 and not info.data.get("logprobs"):
            raise PydanticCustomError("top_logprobs_without_logprobs", "needs logprobs: true")
        return top


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(
        None, ge=-1, description="Log probabilities of this many most likely tokens (vLLM: -1 is all)."
    )


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: served by the arms whose ``endpoints`` list ``embeddings``."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="A public model served with embeddings (not 'auto').")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, texts, token ids, or lists of token ids to embed."
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = Field(None, ge=1, description="Matryoshka models only.")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope; every error the gateway returns has this shape."""

    error: ErrorBody


#: a feedback label's name or value
Label = Annotated[str, StringConstraints(max_length=64)]
#: the largest ``POST /v1/feedback`` body read (413 past it): a rating at its limits takes a few KiB
FEEDBACK_MAX_BODY_BYTES = 32 * 1024


class FeedbackRequest(BaseModel):
    """A caller's rating of one answer (``POST /v1/feedback``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        min_length=1, max_length=256, description="The response's id (chatcmpl-...) or its x-request-id header."
    )
    rating: float = Field(ge=0, le=1, allow_inf_nan=False, description="1 = good answer, 0 = bad.")
    comment: str | None = Field(None, max_length=4096)
    labels: dict[Label, Label] | None = Field(
        None,
        max_length=16,
        description="Free-form tags, e.g. {'task': 'maths'}: at most 16, names and values of at most 64 characters.",
    )


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
