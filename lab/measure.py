"""One profiling request: a streaming chat completion pinned to an arm, timed as a client sees it.

The answer's timings and token counts fill a profile row (:mod:`lab.profiles`); transport and
protocol failures become the row's ``error``, never an exception.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from lab.datasets import Prompt
from lab.profiles import TEXT_LIMIT, new_row

MIN_DECODE_SPAN_S = 0.002


def request_body(prompt: Prompt, arm: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": prompt.messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "route": {"arm": arm},
    }


def _error_message(event: dict[str, Any]) -> str:
    err = event.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


async def measure(
    client: httpx.AsyncClient, gateway: str, prompt: Prompt, arm: str, max_tokens: int
) -> tuple[dict[str, Any], str]:
    """Send one pinned streaming request; the row (without ``correct``) and the full answer text.

    Never raises for transport or protocol failures: they become the row's ``error``.
    """
    row = new_row(prompt, arm)
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    first = last = None
    error: str | None = None
    start = time.perf_counter()
    try:
        async with client.stream(
            "POST", gateway + "/v1/chat/completions", json=request_body(prompt, arm, max_tokens)
        ) as resp:
            h = resp.headers
            row.update(
                model=h.get("x-route-model"), strategy=h.get("x-route-strategy"), backend=h.get("x-route-backend")
            )
            if resp.status_code != 200:
                body = (await resp.aread())[:300].decode("utf-8", "replace")
                error = f"HTTP {resp.status_code}: {body}"
            else:
                served = h.get("x-route-arm")
                if served is not None and served != arm:
                    error = f"pinned arm '{arm}' but the gateway served '{served}' ({h.get('x-route-reason')})"
                done = False
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        event = json.loads(data)
                    except json.JSONDecodeError:
                        event = None
                    if not isinstance(event, dict):
                        error = f"unparseable stream event: {data[:200]}"
                        break
                    if "error" in event:
                        error = "in-stream error: " + _error_message(event)
                        break
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            now = time.perf_counter()
                            first = first or now
                            last = now
                            pieces.append(content)
                        row["finish_reason"] = choice.get("finish_reason") or row["finish_reason"]
                if not done and error is None:
                    error = "the stream ended before data: [DONE]"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    text = "".join(pieces)
    out_tokens = usage.get("completion_tokens")
    row.update(
        prompt_tokens=usage.get("prompt_tokens"),
        output_tokens=out_tokens,
        ttft_s=(first - start) if first is not None else end - start,
        decode_tps=_decode_tps(out_tokens, first, last),
        e2e_s=end - start,
        error=error,
        text=text[:TEXT_LIMIT],
    )
    return row, text


def _decode_tps(out_tokens: Any, first: float | None, last: float | None) -> float | None:
    # A stalled server flushes the tokens it queued as one burst (all deltas within microseconds):
    # no decode speed can be read from that, and (n - 1) / span would report millions of tok/s.
    if not isinstance(out_tokens, int) or out_tokens < 2 or first is None or last is None:
        return None
    if last - first < MIN_DECODE_SPAN_S:
        return None
    return (out_tokens - 1) / (last - first)
