"""Facts and formatting for result files: number formatting for markdown tables, the machine (CPUs,
load average, git commit), the versions of the Python packages on the request path, and writing the
JSON + markdown pair."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .procs import REPO

STACK_DISTS = (
    "llm-gateway",
    "uvicorn",
    "uvloop",
    "httptools",
    "starlette",
    "fastapi",
    "aiohttp",
    "httpx",
    "orjson",
    "pydantic",
    "prometheus-client",
)


def fmt(x: Any, d: int = 2) -> str:
    """A number for a table: ``d`` decimals for floats, "n/a" for None and NaN."""
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:.{d}f}" if isinstance(x, float) else str(x)


def versions(dists: tuple[str, ...] = STACK_DISTS) -> dict[str, str]:
    """Python's version and those of ``dists`` installed beside this interpreter."""
    out = {"python": platform.python_version()}
    for dist in dists:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def machine() -> dict[str, Any]:
    """CPU count and model, load average now, platform, and the git commit (marked when gateway/ or
    router/ differ from it)."""
    info: dict[str, Any] = {"nproc": os.cpu_count(), "loadavg_start": os.getloadavg(), "platform": platform.platform()}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "gateway", "router"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        info["git"] = head + (" (gateway/ or router/ modified)" if dirty else "")
    return info


def write(res: dict[str, Any], out: str | Path | None, md: str = "", md_out: str | Path | None = None) -> None:
    """Write the JSON results to ``out`` and the markdown to ``md_out`` (each when given)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1) + "\n")
        print(f"\nJSON results: {out}")
    if md_out and md:
        Path(md_out).parent.mkdir(parents=True, exist_ok=True)
        Path(md_out).write_text(md + "\n")
        print(f"markdown: {md_out}")


def phase_tables(res: dict[str, Any]) -> str:
    """Markdown tables of a direct-vs-via run: one row per streaming phase (``res["streaming"]``, summaries
    from :func:`loadtests.kit.phases.measure`) and the non-streaming phase (``res["non_streaming"]``)."""
    out = []
    out.append(
        "| streams | TTFT p50 direct / via (ms) | TTFT p99 direct / via (ms) | added TTFT p50 / p99 (ms) "
        "| added p50, median of rounds (ms) | streamed req/s direct / via | gateway CPU ms / streamed req "
        "| client CPU ms/req direct / via | errors | foreign CPU (cores) | gateway->upstream conns after |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in res["streaming"]:
        d, v = s["direct"], s["via"]
        out.append(
            f"| {s['conc']} | {fmt(d['ttft_p50_ms'])} / {fmt(v['ttft_p50_ms'])} "
            f"| {fmt(d['ttft_p99_ms'])} / {fmt(v['ttft_p99_ms'])} "
            f"| {fmt(s['added_ttft_p50_ms'])} / {fmt(s['added_ttft_p99_ms'])} "
            f"| {fmt(s['added_ttft_p50_round_median_ms'])} "
            f"| {fmt(d['rps_median'], 0)} / {fmt(v['rps_median'], 0)} | {fmt(v['gateway_cpu_ms_per_req'], 3)} "
            f"| {fmt(d['client_cpu_ms_per_req'], 3)} / {fmt(v['client_cpu_ms_per_req'], 3)} "
            f"| {d['errors'] + v['errors']} | {fmt(s['foreign_cpu_cores'])} "
            f"| {s.get('gateway_upstream_conns_after', '?')} |"
        )
    ns = res.get("non_streaming")
    if ns:
        d, v = ns["direct"], ns["via"]
        out.append("")
        out.append(
            f"| non-streaming @ {ns['conc']} | req/s direct | req/s via | latency p50 / p99 direct (ms) "
            "| latency p50 / p99 via (ms) "
            "| gateway CPU ms / req | gateway CPU (cores) | client CPU ms/req direct / via | errors "
            "| foreign CPU (cores) "
            "| gateway->upstream conns before / after |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        out.append(
            f"| {ns['rounds']} rounds x {ns['n_per_round']} | {fmt(d['rps_median'], 0)} | {fmt(v['rps_median'], 0)} "
            f"| {fmt(d['latency_p50_ms'])} / {fmt(d['latency_p99_ms'])} "
            f"| {fmt(v['latency_p50_ms'])} / {fmt(v['latency_p99_ms'])} "
            f"| {fmt(v['gateway_cpu_ms_per_req'], 3)} | {fmt(v['gateway_cpu_cores'])} "
            f"| {fmt(d['client_cpu_ms_per_req'], 3)} / {fmt(v['client_cpu_ms_per_req'], 3)} "
            f"| {d['errors'] + v['errors']} | {fmt(ns['foreign_cpu_cores'])} "
            f"| {ns.get('gateway_upstream_conns_before', '?')} / {ns.get('gateway_upstream_conns_after', '?')} |"
        )
    return "\n".join(out)
