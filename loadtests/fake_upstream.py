"""A fast, vLLM-shaped fake OpenAI server for overhead benchmarks: raw asyncio HTTP/1.1, no framework.

Serves on one port, with HTTP/1.1 keep-alive (one request at a time per connection):

  GET  /health                 200, empty body (as vLLM)
  GET  /metrics                vLLM's load gauges (num_requests_running = streams in flight now)
  GET  /v1/models              the one served model
  GET  /fake/stats             this server's own counters (JSON)
  POST /v1/chat/completions    streaming (SSE, chunked) or not; another model name gets vLLM's 404
  POST /v1/completions         the same for text completions

A stream waits ``--ttft-ms``, sends the role chunk and the first token, then one token every
``--itl-ms``; the last token carries ``finish_reason``; then the usage chunk (``"choices":[]``)
when the request asked for ``stream_options.include_usage``, then ``data: [DONE]``. Chunks are
compact JSON shaped like vLLM 0.x output. The number of tokens is ``--tokens``, capped by the
request's ``max_tokens``. A non-streaming answer waits ``--ns-delay-ms`` (default 0: answered at
once, so request-rate tests measure the hop, not the fake).

Run: ``python loadtests/fake_upstream.py --port 0 --model smol`` prints ``LISTENING <port>`` on
stdout once bound. Standard library only (``--uvloop`` uses uvloop when it is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 411: b"Length Required"}
_WORDS = [b"Hello", b" there", b",", b" how", b" can", b" I", b" help", b" you", b" today", b"?"]


class Config:
    def __init__(self, a: argparse.Namespace) -> None:
        self.model = a.model
        self.model_json = json.dumps(a.model).encode()
        self.ttft = a.ttft_ms / 1000
        self.itl = a.itl_ms / 1000
        self.tokens = a.tokens
        self.ns_delay = a.ns_delay_ms / 1000
        self.prompt_tokens = 7


class Stats:
    requests = 0
    streams = 0
    running = 0
    aborted = 0
    errors = 0


_ids = itertools.count(1)


def _response(status: int, body: bytes, ctype: bytes = b"application/json", keep_alive: bool = True) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
        status,
        _REASONS.get(status, b"X"),
        ctype,
        len(body),
    )
    if not keep_alive:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def _error(status: int, message: str, typ: str, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": typ, "param": param, "code": status}}).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Server:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stats = Stats()

    # ------------------------------------------------------------------ simple endpoints
    def metrics(self) -> bytes:
        m, s = self.cfg.model, self.stats
        lab = f'{{engine="0",model_name="{m}"}}'
        return (
            f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{lab} {float(s.running)}\n"
            f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{lab} 0.0\n"
            f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{lab} 0.0\n"
        ).encode()

    def models(self) -> bytes:
        card = {"id": self.cfg.model, "object": "model", "created": int(time.time()), "owned_by": "fake"}
        return json.dumps({"object": "list", "data": [card]}, separators=(",", ":")).encode()

    # ------------------------------------------------------------------ generation
    def parse(self, body: bytes) -> tuple[dict | None, int, bytes]:
        """(request JSON, 200, b"") or (None, status, error body) for a bad one."""
        try:
            req = json.loads(body)
        except ValueError:
            return None, 400, _error(400, "invalid JSON body", "BadRequestError")
        if not isinstance(req, dict):
            return None, 400, _error(400, "body must be a JSON object", "BadRequestError")
        if req.get("model") != self.cfg.model:
            msg = f"The model `{req.get('model')}` does not exist."
            return None, 404, _error(404, msg, "NotFoundError", "model")
        return req, 200, b""

    def n_tokens(self, req: dict) -> int:
        mt = req.get("max_tokens") or req.get("max_completion_tokens")
        return min(self.cfg.tokens, int(mt)) if isinstance(mt, int) and mt > 0 else self.cfg.tokens

    def usage(self, n: int) -> bytes:
        p = self.cfg.prompt_tokens
        return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (p, p + n, n)

    def complete_body(self, chat: bool, n: int) -> bytes:
        rid = next(_ids)
        text = json.dumps(b"".join(_WORDS[i % len(_WORDS)] for i in range(n)).decode()).encode()
        if chat:
            choice = (
                b'{"index":0,"message":{"role":"assistant","content":%s},"logprobs":null,"finish_reason":"length"}'
                % text
            )
            kind, pre = b"chat.completion", b"chatcmpl"
        else:
            choice = b'{"index":0,"text":%s,"logprobs":null,"finish_reason":"length"}' % text
            kind, pre = b"text_completion", b"cmpl"
        return b'{"id":"%s-%d","object":"%s","created":%d,"model":%s,"choices":[%s],"usage":%s}' % (
            pre,
            rid,
            kind,
            int(time.time()),
            self.cfg.model_json,
            choice,
            self.usage(n),
        )

    def stream_events(self, chat: bool, n: int, include_usage: bool) -> list[bytes]:
        """Every SSE event of one stream, pre-built: [role+first token, token 2, ..., (usage), DONE]."""
        rid = next(_ids)
        now = int(time.time())
        if chat:
            head = b'data: {"id":"chatcmpl-%d","object":"chat.completion.chunk","created":%d,"model":%s,"choices":[' % (
                rid,
                now,
                self.cfg.model_json,
            )
            role = (
                head
                + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
            )
        else:
            head = b'data: {"id":"cmpl-%d","object":"text_completion","created":%d,"model":%s,"choices":[' % (
                rid,
                now,
                self.cfg.model_json,
            )
            role = b""
        events = []
        for i in range(n):
            word = json.dumps(_WORDS[i % len(_WORDS)].decode()).encode()
            fin = b'"length"' if i == n - 1 else b"null"
            if chat:
                events.append(
                    head + b'{"index":0,"delta":{"content":%s},"logprobs":null,"finish_reason":%s}]}\n\n' % (word, fin)
                )
            else:
                events.append(head + b'{"index":0,"text":%s,"logprobs":null,"finish_reason":%s}]}\n\n' % (word, fin))
        if events:
            events[0] = role + events[0]
        else:
            events.append(role)
        if include_usage:
            events.append(head + b'],"usage":%s}\n\n' % self.usage(n))
        events.append(b"data: [DONE]\n\n")
        return events


class Conn(asyncio.Protocol):
    """One client connection; requests are handled one after another (no pipelining in parallel)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.next_request()

    def next_request(self) -> None:
        """Parse and answer as many complete requests as the buffer holds (until one goes async)."""
        while not self.busy and not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                self.transport.write(_response(400, b"", keep_alive=False))
                self.transport.close()
                return
            length, keep_alive = 0, version == b"HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    v = value.strip().lower()
                    keep_alive = v == b"keep-alive" or (keep_alive and v != b"close")
                elif name == b"transfer-encoding":
                    self.transport.write(_response(411, b"", keep_alive=False))
                    self.transport.close()
                    return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.dispatch(method, target.split(b"?", 1)[0], body, keep_alive)

    def finish(self, keep_alive: bool) -> None:
        if not keep_alive:
            self.transport.close()
            self.closed = True

    def dispatch(self, method: bytes, path: bytes, body: bytes, keep_alive: bool) -> None:
        srv, w = self.server, self.transport.write
        srv.stats.requests += 1
        if method == b"GET":
            if path == b"/health":
                w(_response(200, b"", keep_alive=keep_alive))
            elif path == b"/metrics":
                w(_response(200, srv.metrics(), b"text/plain; version=0.0.4; charset=utf-8", keep_alive))
            elif path == b"/v1/models":
                w(_response(200, srv.models(), keep_alive=keep_alive))
            elif path == b"/fake/stats":
                s = srv.stats
                doc = {k: getattr(s, k) for k in ("requests", "streams", "running", "aborted", "errors")}
                w(_response(200, json.dumps(doc).encode(), keep_alive=keep_alive))
            else:
                w(_response(404, _error(404, "not found", "NotFoundError"), keep_alive=keep_alive))
            return self.finish(keep_alive)
        if method != b"POST" or path not in (b"/v1/chat/completions", b"/v1/completions"):
            w(
                _response(
                    405 if path.startswith(b"/v1/") else 404,
                    _error(405, "no such route", "NotFoundError"),
                    keep_alive=keep_alive,
                )
            )
            return self.finish(keep_alive)
        req, status, err = srv.parse(body)
        if req is None:
            srv.stats.errors += 1
            w(_response(status, err, keep_alive=keep_alive))
            return self.finish(keep_alive)
        chat = path == b"/v1/chat/completions"
        n = srv.n_tokens(req)
        if req.get("stream"):
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
            self.busy = True
            asyncio.get_running_loop().create_task(self.stream(srv.stream_events(chat, n, include_usage), keep_alive))
        elif srv.cfg.ns_delay <= 0:
            w(_response(200, srv.complete_body(chat, n), keep_alive=keep_alive))
            self.finish(keep_alive)
        else:
            self.busy = True
            asyncio.get_running_loop().create_task(self.delayed(srv.complete_body(chat, n), keep_alive))

    def resume(self, keep_alive: bool) -> None:
        self.busy = False
        self.finish(keep_alive)
        if not self.closed and self.buf:
            self.next_request()

    async def delayed(self, body: bytes, keep_alive: bool) -> None:
        await asyncio.sleep(self.server.cfg.ns_delay)
        if not self.closed:
            self.transport.write(_response(200, body, keep_alive=keep_alive))
        self.resume(keep_alive)

    async def stream(self, events: list[bytes], keep_alive: bool) -> None:
        srv, cfg = self.server, self.server.cfg
        srv.stats.streams += 1
        srv.stats.running += 1
        try:
            w = self.transport.write
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n"
            )
            w(head + (b"\r\n" if keep_alive else b"connection: close\r\n\r\n"))
            await asyncio.sleep(cfg.ttft)
            last = len(events) - 1
            for i, ev in enumerate(events):
                if self.closed:
                    srv.stats.aborted += 1
                    return
                # tokens after the first are paced by the inter-token latency; usage and [DONE] follow at once
                if i > 0 and not ev.startswith(b"data: [DONE]") and b'"choices":[]' not in ev and cfg.itl > 0:
                    await asyncio.sleep(cfg.itl)
                    if self.closed:
                        srv.stats.aborted += 1
                        return
                w(_chunk(ev) + (b"0\r\n\r\n" if i == last else b""))
        finally:
            srv.stats.running -= 1
        self.resume(keep_alive)


async def serve(cfg: Config, host: str, port: int) -> None:
    server = Server(cfg)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Conn(server), host, port, backlog=1024, reuse_address=True)
    print(f"LISTENING {srv.sockets[0].getsockname()[1]}", flush=True)
    async with srv:
        await srv.serve_forever()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed as LISTENING <port>)")
    ap.add_argument("--model", default="smol-served", help="the served model name it answers to")
    ap.add_argument("--ttft-ms", type=float, default=20.0, help="delay before the first token of a stream")
    ap.add_argument("--itl-ms", type=float, default=2.0, help="delay between streamed tokens")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per answer (capped by max_tokens)")
    ap.add_argument("--ns-delay-ms", type=float, default=0.0, help="delay of a non-streaming answer")
    ap.add_argument("--uvloop", action="store_true", help="use uvloop if it is installed")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.uvloop:
        try:
            import uvloop  # type: ignore[import-not-found]

            uvloop.install()
        except ImportError:
            print("uvloop not installed; using the standard asyncio loop", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(Config(a), a.host, a.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
