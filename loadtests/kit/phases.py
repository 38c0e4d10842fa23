"""Interleaved direct/via rounds and their summary. A phase is ``rounds`` rounds of ``n`` requests at
``conc`` concurrency against both sides; the order alternates (direct then via, via then direct, ...)
so drift on a shared machine hits both sides alike. CPU is metered per round with a
:class:`~loadtests.kit.cpu.CpuMeter`: the server's CPU over the via rounds only, per completed request."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from .client import Target, run_round
from .cpu import CpuMeter


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(1, -(-len(s) * q // 1))  # ceil(n q)
    return s[min(len(s), int(k)) - 1]


def ms(x: float) -> float:
    return round(x * 1000, 3)


def _side() -> dict[str, Any]:
    return {
        "ttft": [],
        "total": [],
        "rps": [],
        "p50": [],
        "cpu_rounds": [],
        "ok": 0,
        "errors": 0,
        "samples": [],
        "cpu": defaultdict(float),
    }


async def measure(
    direct: Target,
    via: Target,
    meter: CpuMeter,
    conc: int,
    n: int,
    rounds: int,
    stream: bool,
    think_s: float = 0.0,
) -> dict[str, Any]:
    """``rounds`` interleaved direct/via rounds of ``n`` requests (streamed or not) at ``conc``; the
    summary of :func:`summarize`."""
    sides = {"direct": _side(), "via": _side()}
    phase0 = meter.snap()
    for r in range(rounds):
        order = ("direct", "via") if r % 2 == 0 else ("via", "direct")
        for side in order:
            tgt = direct if side == "direct" else via
            s0 = meter.snap()
            res = await run_round(tgt, n, conc, stream=stream, think_s=think_s)
            d = meter.delta(s0, meter.snap())
            acc = sides[side]
            acc["ttft"] += res.ttft
            acc["total"] += res.total
            acc["rps"].append(res.ok / res.wall if res.wall else 0.0)
            acc["p50"].append(statistics.median(res.ttft) if res.ttft else float("nan"))
            acc["cpu_rounds"].append(d["gateway"] / res.ok * 1000 if res.ok else float("nan"))
            acc["ok"] += res.ok
            acc["errors"] += res.errors
            acc["samples"] += res.error_samples[: 3 - len(acc["samples"])]
            for k, v in d.items():
                acc["cpu"][k] += v
    phase = meter.delta(phase0, meter.snap())
    return summarize(sides, phase, conc, n, rounds, stream=stream)


async def measure_streaming(
    direct: Target, via: Target, meter: CpuMeter, conc: int, n: int, rounds: int, think_s: float = 0.0
) -> dict[str, Any]:
    return await measure(direct, via, meter, conc, n, rounds, stream=True, think_s=think_s)


async def measure_plain(direct: Target, via: Target, meter: CpuMeter, conc: int, n: int, rounds: int) -> dict[str, Any]:
    return await measure(direct, via, meter, conc, n, rounds, stream=False)


def summarize(
    sides: dict[str, dict[str, Any]], phase: dict[str, float], conc: int, n: int, rounds: int, stream: bool
) -> dict[str, Any]:
    """Per side: ok/errors, req/s (median and per round), latency p50/p99, CPU ms per request of the
    client and the fake, and (via) of the server, pooled and per round; streamed: TTFT p50/p90/p99 and
    the added TTFT (via - direct, pooled p50 and p99, per round and their median). Then the foreign CPU
    (machine busy minus server + fake + client) over the phase, in cores."""
    out: dict[str, Any] = {"conc": conc, "n_per_round": n, "rounds": rounds, "stream": stream}
    for side, acc in sides.items():
        ok = max(acc["ok"], 1)
        cpu = acc["cpu"]
        o: dict[str, Any] = {
            "ok": acc["ok"],
            "errors": acc["errors"],
            "error_samples": acc["samples"],
            "rps_median": round(statistics.median(acc["rps"]), 1) if acc["rps"] else None,
            "rps_rounds": [round(x, 1) for x in acc["rps"]],
            "latency_p50_ms": ms(pct(acc["total"], 0.5)),
            "latency_p99_ms": ms(pct(acc["total"], 0.99)),
            "client_cpu_ms_per_req": round(cpu["client"] / ok * 1000, 4),
            "fake_cpu_ms_per_req": round(cpu["fake"] / ok * 1000, 4),
            "wall_s": round(cpu["wall"], 3),
        }
        if side == "via":
            o["gateway_cpu_ms_per_req"] = round(cpu["gateway"] / ok * 1000, 4)
            o["gateway_cpu_ms_per_req_rounds"] = [round(x, 4) for x in acc["cpu_rounds"]]
            o["gateway_cpu_cores"] = round(cpu["gateway"] / cpu["wall"], 3) if cpu["wall"] else None
        if stream:
            o.update(
                ttft_p50_ms=ms(pct(acc["ttft"], 0.5)),
                ttft_p90_ms=ms(pct(acc["ttft"], 0.9)),
                ttft_p99_ms=ms(pct(acc["ttft"], 0.99)),
                ttft_round_p50_ms=[ms(x) for x in acc["p50"]],
            )
        out[side] = o
    if stream:
        d, v = out["direct"], out["via"]
        out["added_ttft_p50_ms"] = round(v["ttft_p50_ms"] - d["ttft_p50_ms"], 3)
        out["added_ttft_p99_ms"] = round(v["ttft_p99_ms"] - d["ttft_p99_ms"], 3)
        per_round = [round((b - a) * 1000, 3) for a, b in zip(sides["direct"]["p50"], sides["via"]["p50"], strict=True)]
        out["added_ttft_p50_per_round_ms"] = per_round
        out["added_ttft_p50_round_median_ms"] = round(statistics.median(per_round), 3) if per_round else None
    ours = phase["gateway"] + phase["fake"] + phase["client"]
    out["foreign_cpu_cores"] = round(max(phase["busy"] - ours, 0.0) / phase["wall"], 3) if phase["wall"] else None
    out["phase_wall_s"] = round(phase["wall"], 2)
    return out
