"""A slow fake vLLM for real-process tests: ``python slow_upstream.py PORT CHUNKS DELAY_S``.

Serves ``/health`` and a streaming ``/v1/chat/completions`` that sends ``CHUNKS`` content
chunks ``DELAY_S`` seconds apart, then a usage chunk and ``data: [DONE]`` (the shapes of
:mod:`fake_vllm`). The served model is ``slow-served``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

SERVED_MODEL = "slow-served"


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"  # compact, as vLLM writes


def build(chunks: int, delay_s: float) -> Starlette:
    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def chat(request: Request) -> Response:
        body = await request.json()
        head = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1, "model": SERVED_MODEL}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(f"t{i} " for i in range(chunks))}
            return JSONResponse({**head, "object": "chat.completion", "choices": [{"index": 0, "message": message}]})

        async def events() -> AsyncIterator[bytes]:
            for i in range(chunks):
                finish = "stop" if i == chunks - 1 else None
                choice = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": finish}
                yield sse({**head, "choices": [choice]})
                await asyncio.sleep(delay_s)
            usage = {"prompt_tokens": 3, "completion_tokens": chunks, "total_tokens": chunks + 3}
            yield sse({**head, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/health", health), Route("/v1/chat/completions", chat, methods=["POST"])])


if __name__ == "__main__":
    port, chunks, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    uvicorn.run(build(chunks, delay), host="127.0.0.1", port=port, log_level="warning")
