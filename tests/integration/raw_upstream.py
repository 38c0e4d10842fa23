"""A misbehaving upstream on a real socket, for faults the gateway's aiohttp client must survive.

:class:`RawUpstream` is a plain asyncio server on 127.0.0.1 (the test's own event loop, no
framework), so the gateway's production client (:class:`gateway.upstream.AiohttpUpstream`) is the
one exercised, not ``httpx.MockTransport``. ``GET /health`` always answers 200 (so the backend is
healthy at start-up); a generation ``POST`` gets the behaviour named by :attr:`RawUpstream.mode`:

==============  =========================================================================
``ok``          a well-formed vLLM-shaped answer (stream: role, "Hello", usage, ``[DONE]``)
``silent``      reads the request and never answers (no status line)
``stall``       stream: status line and the role chunk, then silence
``garbage``     stream: status line, then bytes that are not SSE, then close
``truncated``   stream: the role chunk, then half a ``data:`` event, then close
``reset``       stream (chunked): the role chunk, then a TCP reset
``bad_event``   stream: a ``data:`` event that is not JSON, then ``data: [DONE]``
``bad_status``  answers with a line that is not HTTP, then closes
``not_json``    non-stream: 200 ``application/json`` whose body is an HTML page
``trickle``     non-stream: status line and headers, then the body one byte every 0.1 s
``long``        stream (chunked): 2,000 token events of about 1 KiB each, then usage and ``[DONE]``
==============  =========================================================================
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

HEAD = {"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1, "model": "smol-served"}


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


ROLE = _event({**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
HELLO = _event({**HEAD, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": "stop"}]})
USAGE = _event({**HEAD, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
DONE = b"data: [DONE]\n\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


#: Token events in a ``long`` stream.
LONG_EVENTS = 2000


def long_event(i: int) -> bytes:
    """The ``i``-th token event of a ``long`` stream (its content starts with ``<i>|``)."""
    content = f"{i}|" + "y" * 1000
    return _event({**HEAD, "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]})


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _plain(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
        status,
        ctype,
        len(body),
        body,
    )


class RawUpstream:
    """One listening socket; :attr:`mode` picks the fault; :attr:`generations` counts POSTs seen."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.generations = 0
        self.open_connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.open_connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, _, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length)) if length else {}
                if method == "GET":
                    writer.write(_plain(200, b"", b"text/plain"))
                    await writer.drain()
                    return
                self.generations += 1
                await self._generate(reader, writer, bool(body.get("stream")))
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _generate(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, stream: bool) -> None:
        mode = self.mode
        if mode == "silent" or (mode == "stall" and not stream):
            await r.read()  # until the gateway closes the connection (or the test ends)
            return
        if mode == "bad_status":
            w.write(b"SPAM SPAM SPAM\r\n\r\n")
        elif mode == "trickle":
            message = {"role": "assistant", "content": "Hello"}
            answer = {**HEAD, "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
            whole = _plain(200, json.dumps(answer).encode())
            head, body = whole.split(b"\r\n\r\n", 1)
            w.write(head + b"\r\n\r\n")
            for i in range(len(body)):
                await w.drain()
                await asyncio.sleep(0.1)
                w.write(body[i : i + 1])
        elif mode == "not_json":
            w.write(_plain(200, b"<html><body>502 Bad Gateway (nginx)</body></html>"))
        elif not stream:
            message = {"role": "assistant", "content": "Hello"}
            answer = {**HEAD, "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
            w.write(_plain(200, json.dumps(answer).encode()))
        elif mode == "ok":
            w.write(SSE_HEAD + ROLE + HELLO + USAGE + DONE)
        elif mode == "stall":
            w.write(SSE_HEAD + ROLE)
            await w.drain()
            await r.read()
            return
        elif mode == "garbage":
            w.write(SSE_HEAD + b"\x00\xffthis is not an event stream\r\n<html>oops</html>")
        elif mode == "truncated":
            w.write(SSE_HEAD + ROLE + HELLO[: len(HELLO) // 2])
        elif mode == "reset":
            w.write(CHUNKED_HEAD + _chunk(ROLE))
            await w.drain()
            await asyncio.sleep(0.05)
            w.transport.abort()
            return
        elif mode == "long":  # LONG_EVENTS token events of about 1 KiB, one chunk each, then usage and [DONE]
            w.write(CHUNKED_HEAD + _chunk(ROLE))
            for i in range(LONG_EVENTS):
                await w.drain()
                w.write(_chunk(long_event(i)))
            w.write(_chunk(HELLO + USAGE + DONE) + b"0\r\n\r\n")
        elif mode == "bad_event":
            w.write(SSE_HEAD + ROLE + b"data: {this is not json\n\n" + DONE)
        else:
            raise AssertionError(f"unknown mode {mode}")
        await w.drain()
