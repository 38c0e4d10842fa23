"""The load tools' kit and the peer comparison's report: percentiles, the raw HTTP client's parser, the
TCP hop, and the markdown table (no servers of our own started)."""

from __future__ import annotations

import asyncio
import math

import pytest

from loadtests.kit.client import HttpConn
from loadtests.kit.phases import pct
from loadtests.peer import tcp_hop
from loadtests.peer.report import spread, table


@pytest.mark.parametrize(
    ("xs", "q", "want"),
    [
        ([3.0, 1.0, 2.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([5.0], 0.99, 5.0),
    ],
)
def test_pct_is_nearest_rank(xs: list[float], q: float, want: float) -> None:
    assert pct(xs, q) == want


def test_pct_of_nothing_is_nan() -> None:
    assert math.isnan(pct([], 0.5))


SSE = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"%x\r\n%s\r\n" % (len(SSE), SSE)
    + b"0\r\n\r\n"
)
PLAIN = b'HTTP/1.1 200 OK\r\ncontent-length: 13\r\nconnection: close\r\n\r\n{"choices":1}'


class _Transport:
    def __init__(self) -> None:
        self.closed = False
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("step", [1, 7, 64, 10_000])
@pytest.mark.parametrize(
    ("raw", "body", "ttft", "closes"), [(CHUNKED, SSE, True, False), (PLAIN, b'{"choices":1}', False, True)]
)
async def test_http_conn_parses_any_split(step: int, raw: bytes, body: bytes, ttft: bool, closes: bool) -> None:
    conn = HttpConn()
    tr = _Transport()
    conn.connection_made(tr)  # type: ignore[arg-type]
    fut = conn.request(b"GET / HTTP/1.1\r\n\r\n")
    for i in range(0, len(raw), step):
        conn.data_received(raw[i : i + step])
    status, got, t, total = await fut
    assert (status, got) == (200, body)
    assert (t is not None) == ttft and total >= 0
    assert tr.closed == closes


async def test_tcp_hop_forwards_both_ways() -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write((await r.readline()).upper())
        await w.drain()
        w.close()

    up = await asyncio.start_server(echo, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    hop_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    hop = asyncio.create_task(tcp_hop.serve(hop_port, "127.0.0.1", up_port))
    try:
        for _ in range(50):
            try:
                r, w = await asyncio.open_connection("127.0.0.1", hop_port)
                break
            except OSError:
                await asyncio.sleep(0.02)
        w.write(b"hello\n")
        await w.drain()
        assert await asyncio.wait_for(r.readline(), 5) == b"HELLO\n"
        w.close()
    finally:
        hop.cancel()
        up.close()


@pytest.mark.parametrize(
    ("xs", "want"), [([1.0, 3.0, 2.0], " (1.00-3.00)"), ([1.0], ""), ([float("nan"), 2.0], ""), ([], "")]
)
def test_spread(xs: list[float], want: str) -> None:
    assert spread(xs) == want


def test_table_rows_measured_and_unavailable() -> None:
    phase = {
        "conc": 16,
        "added_ttft_p50_ms": 1.5,
        "added_ttft_p50_per_round_ms": [1.0, 2.0],
        "via": {"gateway_cpu_ms_per_req": 0.8, "gateway_cpu_ms_per_req_rounds": [0.7, 0.9]},
    }
    ns = {
        "via": {"rps_median": 900.0, "gateway_cpu_ms_per_req": 0.3, "gateway_cpu_ms_per_req_rounds": [0.3]},
        "direct": {"rps_median": 1000.0},
    }
    rows = [
        {
            "name": "a",
            "version": "1",
            "m": {
                "streaming": [phase],
                "non_streaming": ns,
                "errors": 0,
                "foreign_cpu_max": 0.1,
                "foreign_cpu_mean": 0.05,
            },
        },
        {"name": "b", "version": "?", "error": "not installed"},
    ]
    lines = table(rows, [16], 64).splitlines()
    assert lines[2] == "| a | 1 | 0.80 (0.70-0.90) | 1.5 (1.0-2.0) | 900 (1,000; 90 %) | 0.30 | 0 | 0.05 / 0.10 |"
    assert lines[3].startswith("| b | ? | could not run: not installed |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
