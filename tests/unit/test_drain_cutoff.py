"""``DrainCutoff`` (gateway/server.py): what a request cut by the drain timeout gets, at the ASGI level."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.server import DrainCutoff


async def _cut(app: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    task = asyncio.ensure_future(DrainCutoff(app)({"type": "http"}, receive, send))
    await asyncio.sleep(0.01)
    task.cancel()
    await task  # ends normally: no CancelledError, so uvicorn logs no traceback
    return sent


async def test_a_request_cut_before_its_answer_started_gets_a_503_envelope() -> None:
    async def waiting(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    sent = await _cut(waiting)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 503
    error = json.loads(sent[1]["body"])["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "shutting_down")


async def test_an_open_stream_cut_ends_with_an_error_event_and_done() -> None:
    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await asyncio.Event().wait()

    sent = await _cut(streaming)
    last = sent[-1]
    assert last["more_body"] is False and last["body"].endswith(b"data: [DONE]\n\n")
    assert b'"code":"shutting_down"' in last["body"]
