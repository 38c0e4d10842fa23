"""A small OTLP/HTTP trace receiver: ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest``.

It decodes every export (``opentelemetry-proto``, in the ``tracing`` extra) and keeps its spans, or
only counts them (``keep=False``, for load tests). What the tests (tests/integration/test_gateway_tracing_otlp.py)
and the tracing overhead measurement (docs/benchmarks.md) send the gateway's traces to::

    .venv/bin/python -m loadtests.otlp_sink --port 4318      # prints the span count every 5 s

Answers 200 with an empty ``ExportTraceServiceResponse``; 400 for a body that does not decode;
gzip-compressed bodies are accepted. Runs on its own thread (:meth:`OtlpSink.start`).
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived: ids in hex (``parent_id`` empty for a root), attributes as Python values."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    status_code: int
    attributes: dict[str, Any]
    events: tuple[str, ...]
    resource: dict[str, Any]
    start_ns: int
    end_ns: int


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``; raises ``DecodeError``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        status_code=s.status.code,
                        attributes=_attributes(s.attributes),
                        events=tuple(e.name for e in s.events),
                        resource=resource,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return spans


class OtlpSink:
    """The receiver on ``host:port`` (0: a free port, read :attr:`url` after :meth:`start`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: bool = True) -> None:
        self.spans: list[ReceivedSpan] = []
        self.count = 0
        self.exports = 0
        self.headers: list[dict[str, str]] = []
        self.keep = keep
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                try:
                    spans = decode(body)
                except DecodeError:
                    self.send_error(400, "not an ExportTraceServiceRequest")
                    return
                with sink._lock:
                    sink.exports += 1
                    sink.count += len(spans)
                    if sink.keep:
                        sink.spans += spans
                        sink.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> OtlpSink:
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between two span counts printed")
    args = parser.parse_args()
    sink = OtlpSink(args.host, args.port, keep=False).start()
    print(f"OTLP/HTTP receiver on {sink.url}/v1/traces", flush=True)
    try:
        while True:
            time.sleep(args.every)
            print(f"{sink.exports} exports, {sink.count} spans", flush=True)
    except KeyboardInterrupt:
        sink.stop()


if __name__ == "__main__":
    main()
