"""A load client light enough to leave the CPU to the server it measures: raw asyncio (a Protocol per
connection), pre-encoded requests, incremental HTTP/1.1 + chunked parsing, one keep-alive connection
per worker. TTFT is the time from writing the request to the first ``data: {`` byte of the answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

MARK = b"data: {"
PROMPT = "Say hello in one short sentence."


class HttpConn(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one request at a time. Records the time to the first
    ``data: {`` byte (TTFT) and to the end of the response; parses Content-Length and chunked bodies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.body = bytearray()
        self.fut: asyncio.Future[tuple[int, bytes, float | None, float]] | None = None
        self.lost = False
        self.t0 = 0.0
        self.ttft: float | None = None
        self.tail = b""
        self.state = 0  # 0 head, 1 content-length body, 2 chunk size, 3 chunk data, 4 trailers
        self.need = 0
        self.status = 0
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"connection closed mid-response ({exc})"))

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes, float | None, float]]:
        self.fut = asyncio.get_running_loop().create_future()
        self.state, self.ttft, self.tail, self.close_after = 0, None, b"", False
        self.body = bytearray()
        self.t0 = time.perf_counter()
        assert self.transport is not None
        self.transport.write(raw)
        return self.fut

    def data_received(self, data: bytes) -> None:
        if self.ttft is None:
            s = self.tail + data
            if MARK in s:
                self.ttft = time.perf_counter() - self.t0
            else:
                self.tail = s[-(len(MARK) - 1) :]
        self.buf += data
        self.parse()

    def parse(self) -> None:
        buf = self.buf
        while True:
            st = self.state
            if st == 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[: end + 4]
                self.status = int(lines[0].split(b" ", 2)[1])
                chunked, length = False, 0
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        length = int(v)
                    elif k == b"transfer-encoding":
                        chunked = b"chunked" in v.lower()
                    elif k == b"connection":
                        self.close_after = v.strip().lower() == b"close"
                if chunked:
                    self.state = 2
                else:
                    self.state, self.need = 1, length
            elif st == 1:
                if len(buf) < self.need:
                    return
                self.body += buf[: self.need]
                del buf[: self.need]
                return self.done()
            elif st == 2:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(bytes(buf[:i]).split(b";", 1)[0], 16)
                del buf[: i + 2]
                if size == 0:
                    self.state = 4
                else:
                    self.state, self.need = 3, size + 2
            elif st == 3:
                if len(buf) < self.need:
                    return
                self.body += buf[: self.need - 2]
                del buf[: self.need]
                self.state = 2
            else:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                del buf[: i + 2]
                if i == 0:
                    return self.done()

    def done(self) -> None:
        total = time.perf_counter() - self.t0
        fut, self.fut = self.fut, None
        if self.close_after and self.transport is not None:
            self.transport.close()
            self.lost = True
        if fut is not None and not fut.done():
            fut.set_result((self.status, bytes(self.body), self.ttft, total))


class Target:
    """One side of the comparison: where to send, and the request bytes, pre-encoded."""

    def __init__(
        self,
        name: str,
        base: str,
        model: str,
        body_extra: dict[str, Any],
        max_tokens: int,
        headers: dict[str, str] | None = None,
        prompt: str = PROMPT,
    ) -> None:
        self.name = name
        hostport = base.split("://", 1)[1].split("/", 1)[0]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.model = model

        def raw(stream: bool) -> bytes:
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "stream": stream,
                **body_extra,
            }
            if not stream:
                body.pop("stream_options", None)
            b = orjson.dumps(body)
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nhost: {hostport}\r\ncontent-type: application/json\r\n"
                f"accept: */*\r\n{extra}content-length: {len(b)}\r\n\r\n"
            ).encode()
            return head + b

        self.stream_raw = raw(True)
        self.plain_raw = raw(False)

    async def connect(self) -> HttpConn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(HttpConn, self.host, self.port)
        return proto


class RoundResult:
    """What one round of requests got: TTFTs and total times (seconds) of the good answers, counts, wall time."""

    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.ok = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.wall = 0.0


async def run_round(t: Target, n: int, conc: int, stream: bool, think_s: float = 0.0) -> RoundResult:
    """n requests, conc workers, each on its own keep-alive connection (opened when the round starts);
    a worker pauses ``think_s`` after each answer."""
    res = RoundResult()
    left = n
    raw = t.stream_raw if stream else t.plain_raw

    async def worker() -> None:
        nonlocal left
        conn: HttpConn | None = None
        while left > 0:
            left -= 1
            try:
                if conn is None or conn.lost:
                    conn = await t.connect()
                status, body, ttft, total = await conn.request(raw)
            except (OSError, ConnectionError) as exc:
                res.errors += 1
                if len(res.error_samples) < 3:
                    res.error_samples.append(f"{type(exc).__name__}: {exc}")
                conn = None
                continue
            if think_s > 0:
                await asyncio.sleep(think_s)
            good = status == 200 and (
                (ttft is not None and body.endswith(b"data: [DONE]\n\n")) if stream else b'"choices"' in body
            )
            if good:
                res.ok += 1
                res.total.append(total)
                if stream and ttft is not None:
                    res.ttft.append(ttft)
            else:
                res.errors += 1
                if len(res.error_samples) < 3:
                    res.error_samples.append(f"status {status}: {body[:200]!r}")
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(conc, n))))
    res.wall = time.perf_counter() - t0
    return res
