"""Per-request caps and per-key rate limits.

**Caps** (``limits.*``): ``max_tokens`` / ``max_completion_tokens``, ``n`` and the number of chat
messages are checked after the body is validated; a request over a cap gets 400 naming the
field. (The body size cap, ``server.max_body_bytes``, is checked while reading: 413.)

**Rate limits** (``auth.keys[].rpm`` / ``.tpm``): one token bucket per key and budget, holding
at most a minute's allowance and refilled continuously (``rpm / 60`` per second). A request
takes 1 from the request bucket and an *estimate* of its tokens from the token bucket up front:

    estimate = ceil((prompt characters + non-text characters) / 4) (or the number of prompt token ids)
             + (max_completion_tokens or max_tokens or limits.assumed_completion_tokens) * n

Non-text characters are the serialized size of what else reaches the model's prompt or decoding:
every structured field (``tools``, ``functions``, ``response_format``, ``tool_choice``, vLLM's
``guided_json`` and other extras), message fields besides the text (``tool_calls``, ...), content
parts that are not plain text (images as data URLs, ...), and any string field over 64 characters;
short scalars (``model``, ``temperature``, a message's ``role``) and ``stream_options`` are ignored.

When the answer's ``usage`` is known (non-streaming body, or the usage chunk the gateway
always asks for on streams) the bucket is corrected by ``usage.total_tokens - estimate``;
a request that failed before any backend answered gives its estimate back; one that ended
without usage (client disconnect, broken stream) keeps the estimate. A request is admitted
while the token bucket holds ``min(estimate, tpm)``, so one request larger than a whole
minute's budget still passes when the bucket is full, and the debt it leaves (the bucket can
go negative on correction) holds back the next ones. Refused requests take nothing and get
429 ``rate_limit_exceeded`` with ``Retry-After`` (whole seconds until the bucket holds enough).

State is in memory, per process; buckets are created lazily per configured key, so their
number is bounded by the configuration.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.auth import ApiKey
from gateway.errors import InvalidRequest, RateLimited
from gateway.protocol import prompt_text
from gateway.settings import LimitSettings


def check_caps(body: dict[str, Any], limits: LimitSettings) -> None:
    """Raise :class:`InvalidRequest` (400, ``param`` named) if a validated body is over a cap, or gives a
    capped field as anything but an integer (``"1000000"``, ``1e6``, ``true`` would dodge the cap)."""
    for field in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRequest(f"{field}: must be an integer, got {type(value).__name__}", param=field)
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if limits.max_tokens is not None and value is not None and value > limits.max_tokens:
            raise InvalidRequest(
                f"{field}: {value} is more than this gateway allows ({limits.max_tokens})",
                param=field,
                reason="max_tokens",
            )
    n = body.get("n")
    if n is not None and n > limits.max_n:
        raise InvalidRequest(f"n: {n} is more than this gateway allows ({limits.max_n})", param="n", reason="n")
    check_message_count(body, limits)


def check_message_count(body: dict[str, Any], limits: LimitSettings) -> None:
    """The ``limits.max_messages`` cap alone: cheap, so admission checks it before validating the
    messages one by one (100,000 of them took 1.7 s of the event loop to validate)."""
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > limits.max_messages:
        raise InvalidRequest(
            f"messages: {len(messages)} messages are more than this gateway allows ({limits.max_messages})",
            param="messages",
            reason="messages",
        )


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a validated body, estimated: the number of token ids, else (prompt characters +
    serialized structured fields) / 4."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
        return sum(len(p) if isinstance(p, list) else 1 for p in prompt)
    return math.ceil((len(prompt_text(body)) + _non_text_chars(body)) / 4)


def estimate_tokens(body: dict[str, Any], limits: LimitSettings) -> int:
    """Up-front token charge of a validated body (see the module docstring)."""
    prompt_tokens = estimate_prompt_tokens(body)
    completion = body.get("max_completion_tokens") or body.get("max_tokens") or limits.assumed_completion_tokens
    return prompt_tokens + int(completion) * int(body.get("n") or 1)


_SKIPPED = frozenset({"messages", "prompt", "stream_options"})  # prompt text is counted apart


def _size(value: Any) -> int:
    """The serialized size of a structured value or a long string; 0 for short scalars."""
    if isinstance(value, dict | list):
        return len(orjson.dumps(value))
    return len(value) if isinstance(value, str) and len(value) > 64 else 0


def _non_text_chars(body: dict[str, Any]) -> int:
    """Characters of ``body`` that are not prompt text but reach the upstream (module docstring)."""
    size = sum(_size(v) for k, v in body.items() if k not in _SKIPPED)
    messages = body.get("messages")
    for m in messages if isinstance(messages, list) else ():
        if not isinstance(m, dict):
            continue
        for k, v in m.items():
            if k != "content":
                size += _size(v)
            elif isinstance(v, list):
                size += sum(0 if _is_text_part(p) else _size(p) for p in v)
    return size


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.keys() <= {"type", "text"} and isinstance(part.get("text"), str)


class TokenBucket:
    """Holds up to ``capacity``, refilled at ``capacity / 60`` per second. Not thread-safe; loop-only."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / 60.0
        self.level = float(capacity)
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, amount: float) -> float:
        """Seconds until the bucket holds ``min(amount, capacity)``; 0 if it does now (after :meth:`refill`)."""
        need = min(amount, self.capacity) - self.level
        return max(0.0, need / self.rate)

    def add(self, amount: float) -> None:
        """Take (negative) or give back (positive); the level may go below zero, never above capacity."""
        self.level = min(self.capacity, self.level + amount)


class Charge:
    """What one admitted request took from its key's token bucket; :meth:`settle` corrects it once."""

    def __init__(self, bucket: TokenBucket | None, estimate: int) -> None:
        self.bucket = bucket
        self.estimate = estimate
        self.settled = False

    def settle(self, used_tokens: int | None) -> None:
        """Correct the charge with the tokens really used; ``None`` (unknown) keeps the estimate."""
        if self.settled:
            return
        self.settled = True
        if self.bucket is not None and used_tokens is not None:
            self.bucket.add(self.estimate - used_tokens)


def _bucket(table: dict[str, TokenBucket], name: str, capacity: int, now: float) -> TokenBucket:
    """``name``'s bucket in ``table``, refilled to ``now`` (a new, full one when ``capacity`` changed)."""
    bucket = table.get(name)
    if bucket is None or bucket.capacity != capacity:
        bucket = table[name] = TokenBucket(capacity, now)
    bucket.refill(now)
    return bucket


class RateLimiter:
    """Per-key request and token buckets. Call from the event loop only (no locking, no awaits)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def admit(self, key: ApiKey | None, estimate: int, count_tokens: bool = True) -> Charge:
        """Take one request and ``estimate`` tokens from ``key``'s budgets, or raise :class:`RateLimited`.
        ``count_tokens=False`` (a ``/v1/route`` dry run): the request budget only."""
        if key is None or (key.rpm is None and key.tpm is None):
            return Charge(None, 0)
        now = self.clock()
        requests = None if key.rpm is None else _bucket(self._requests, key.name, key.rpm, now)
        tokens = None if key.tpm is None or not count_tokens else _bucket(self._tokens, key.name, key.tpm, now)
        if requests is not None and (wait := requests.wait_s(1)) > 0:
            raise RateLimited(
                f"Rate limit reached for key '{key.name}' on requests per minute: limit {key.rpm}. "
                f"Try again in {math.ceil(wait)}s.",
                limit="requests",
                retry_after_s=max(1, math.ceil(wait)),
            )
        if tokens is not None and (wait := tokens.wait_s(estimate)) > 0:
            raise RateLimited(
                f"Rate limit reached for key '{key.name}' on tokens per minute: limit {key.tpm}, "
                f"requested about {estimate}. Try again in {math.ceil(wait)}s.",
                limit="tokens",
                retry_after_s=max(1, math.ceil(wait)),
            )
        if requests is not None:
            requests.add(-1)
        if tokens is not None:
            tokens.add(-estimate)
        return Charge(tokens, estimate)


class PerMinute:
    """A requests-per-minute budget per name, for endpoints outside a key's own ``rpm`` (feedback).
    Call from the event loop only; the names must be bounded (configured key names)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, name: str, rpm: int, what: str) -> None:
        """Take one from ``name``'s budget of ``rpm`` a minute, or raise :class:`RateLimited` (429 with
        ``Retry-After``); ``what`` names the budget in the message."""
        bucket = _bucket(self._buckets, name, rpm, self.clock())
        if (wait := bucket.wait_s(1)) > 0:
            raise RateLimited(
                f"Rate limit reached for {what}: limit {rpm} per minute. Try again in {math.ceil(wait)}s.",
                limit="requests",
                retry_after_s=max(1, math.ceil(wait)),
            )
        bucket.add(-1)


def token_count(value: Any) -> int:
    """A token count from an upstream ``usage`` field: the value if it is a non-negative integer, else 0
    (an upstream's ``"12"``, ``null``, ``-1`` or ``[]`` must not fail the request or a metric)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def total_tokens(usage: Any) -> int | None:
    """Tokens an answer's ``usage`` reports: ``total_tokens``, else prompt + completion; ``None`` if unknown."""
    if not isinstance(usage, dict):
        return None
    counts = [usage.get(k) for k in ("total_tokens", "prompt_tokens", "completion_tokens")]
    total, prompt, completion = (c if isinstance(c, int) and not isinstance(c, bool) else None for c in counts)
    if total is not None:
        return total
    if prompt is None and completion is None:
        return None
    return (prompt or 0) + (completion or 0)
