"""Soak: steady streaming load through the gateway for a long time, with the gateway's RSS sampled.

Starts three fake upstreams and the gateway (``loadtests/stack.py``: the local stack's arms and
learned routing policy), then keeps ``--conc`` streaming chat requests in flight for
``--minutes``: real prompts (ShareGPT, else MT-Bench + GSM8K) and the mixed model / routing-flag
set of ``stack.MIX``, each worker on its own keep-alive connection. Every ``--sample-s`` seconds
it records the gateway's RSS, open file descriptors and the completed/error counts, and rewrites
``--out`` (JSON) with the samples so far and the least-squares RSS slope in MB/hour, over all
samples, over those after ``--warmup-s`` and over the second half (the figures to judge: the target is flat).

Run::

    nohup .venv/bin/python -m loadtests.soak --minutes 35 --conc 50 \\
        --out loadtests/results/soak-fake.json > /tmp/soak.log 2>&1 &
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from loadtests import stack
from loadtests.kit.client import HttpConn
from loadtests.kit.cpu import proc_cpu_s
from loadtests.kit.procs import PROCS


def encode(host: str, model: str, prompt: str, flags: dict[str, Any] | None, max_tokens: int) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if flags:
        body["route"] = flags
    b = orjson.dumps(body)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(b)}\r\n\r\n"
    ).encode()
    return head + b


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.ttft: list[float] = []


async def worker(host: str, port: int, reqs: itertools.cycle[bytes], tally: Tally, stop: asyncio.Event) -> None:
    conn: HttpConn | None = None
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        raw = next(reqs)
        try:
            if conn is None or conn.lost:
                _, conn = await loop.create_connection(HttpConn, host, port)
            status, body, ttft, _ = await conn.request(raw)
        except (OSError, ConnectionError) as exc:
            tally.errors += 1
            if len(tally.error_samples) < 5:
                tally.error_samples.append(f"{type(exc).__name__}: {exc}")
            conn = None
            await asyncio.sleep(0.1)
            continue
        if status == 200 and body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body:
            tally.ok += 1
            if ttft is not None:
                tally.ttft.append(ttft)
                if len(tally.ttft) > 20000:
                    del tally.ttft[:10000]
        else:
            tally.errors += 1
            if len(tally.error_samples) < 5:
                tally.error_samples.append(f"status {status}: {body[:200]!r}")
    if conn is not None and conn.transport is not None:
        conn.transport.close()


def report(a: argparse.Namespace, meta: dict[str, Any], samples: list[dict[str, Any]], tally: Tally) -> dict[str, Any]:
    t = [s["t_s"] / 3600 for s in samples]
    mb = [s["rss_kb"] / 1024 for s in samples]
    b_all, _ = stack.slope(t, mb)
    late = [(x, y) for x, y in zip(t, mb, strict=True) if x * 3600 >= a.warmup_s]
    b_late, _ = stack.slope([x for x, _ in late], [y for _, y in late])
    half = t[len(t) // 2 :]
    b_half, _ = stack.slope(half, mb[len(mb) // 2 :])
    anon = [s.get("rss_anon_kb", 0) / 1024 for s in samples]
    b_anon, _ = stack.slope([x for x in t if x * 3600 >= a.warmup_s], anon[len(t) - len(late) :])
    ttft = sorted(tally.ttft)
    return {
        **meta,
        "elapsed_s": samples[-1]["t_s"] if samples else 0.0,
        "ok": tally.ok,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "rss_mb_first": mb[0] if mb else None,
        "rss_mb_last": mb[-1] if mb else None,
        "rss_mb_max": max(mb) if mb else None,
        "slope_mb_per_h_all": round(b_all, 3),
        "slope_mb_per_h_after_warmup": round(b_late, 3),
        "samples_after_warmup": len(late),
        "slope_mb_per_h_second_half": round(b_half, 3),
        "rss_anon_slope_mb_per_h_after_warmup": round(b_anon, 3),
        "ttft_ms_p50_recent": round(statistics.median(ttft) * 1000, 2) if ttft else None,
        "ttft_ms_p99_recent": round(ttft[int(0.99 * (len(ttft) - 1))] * 1000, 2) if ttft else None,
        "samples": samples,
    }


async def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    fakes = stack.start_fakes(tmp, a.ttft_ms, a.itl_ms, a.tokens)
    url, gw = stack.start_gateway({k: u for k, (u, _) in fakes.items()}, tmp)
    host = url.removeprefix("http://")
    port = int(host.rsplit(":", 1)[1])
    source, texts = stack.prompts(2000)
    mix = [(a.model, {"arm": a.arm} if a.arm else None)] if a.model else stack.MIX
    raws = [
        encode(host, model, texts[i % len(texts)], flags, a.max_tokens)
        for i, (model, flags) in zip(range(len(texts)), itertools.cycle(mix), strict=False)
    ]
    meta = {
        "command": a.command,
        "conc": a.conc,
        "minutes": a.minutes,
        "sample_s": a.sample_s,
        "warmup_s": a.warmup_s,
        "fake": {"ttft_ms": a.ttft_ms, "itl_ms": a.itl_ms, "tokens": a.tokens},
        "prompts": source,
        "mix": [list(m) for m in mix],
        "gateway_pid": gw.pid,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta["rss_kb_idle_before_load"] = stack.rss_kb(gw.pid)
    tally, stop = Tally(), asyncio.Event()
    reqs = itertools.cycle(raws)
    tasks = [asyncio.create_task(worker("127.0.0.1", port, reqs, tally, stop)) for _ in range(a.conc)]
    t0 = time.monotonic()
    samples: list[dict[str, Any]] = []
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    end = t0 + a.minutes * 60
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(run, "cut", True))
    res: dict[str, Any] = {}
    while time.monotonic() < end and not getattr(run, "cut", False):
        await asyncio.sleep(a.sample_s)
        samples.append(
            {
                "t_s": round(time.monotonic() - t0, 2),
                "rss_kb": stack.rss_kb(gw.pid),
                "rss_anon_kb": stack.rss_kb(gw.pid, "RssAnon"),
                "fds": stack.open_fds(gw.pid),
                "cpu_s": round(proc_cpu_s(gw.pid), 2),
                "inflight": stack.inflight(url),
                "ok": tally.ok,
                "errors": tally.errors,
            }
        )
        res = report(a, meta, samples, tally)
        res["finished"] = False
        tmp_out = out.with_suffix(".tmp")
        tmp_out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
        os.replace(tmp_out, out)
    stop.set()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    res = report(a, meta, samples, tally)
    res["finished"] = not getattr(run, "cut", False)
    log = (tmp / "gateway.log").read_text(errors="replace").splitlines()
    res["gateway_log_warnings"] = [line for line in log if "WARNING" in line or "ERROR" in line][:50]
    out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=35.0)
    ap.add_argument("--conc", type=int, default=50, help="streams kept in flight")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    ap.add_argument("--warmup-s", type=float, default=300.0, help="samples before this are left out of the slope")
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=50.0)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", help="send every request to this public model (default: the mixed set)")
    ap.add_argument("--arm", help="with --model: pin the arm too (route.arm), so the router's encoder is skipped")
    ap.add_argument("--out", default=str(stack.HERE / "results" / "soak-fake.json"))
    a = ap.parse_args(argv)
    import sys

    a.command = " ".join(["python", "-m", "loadtests.soak", *(sys.argv[1:] if argv is None else argv)])
    try:
        with tempfile.TemporaryDirectory(prefix="soak-") as d:
            res = asyncio.run(run(a, Path(d)))
    finally:
        PROCS.stop_all()
    keys = ("elapsed_s", "ok", "errors", "rss_mb_first", "rss_mb_last", "rss_mb_max")
    print({k: res[k] for k in (*keys, "slope_mb_per_h_all", "slope_mb_per_h_after_warmup")})
    return 0 if res["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
