"""One peer's measurement: a sanity request, a warm-up on both sides, then the streaming phases (one per
concurrency) and the non-streaming phase, each of interleaved direct/via rounds (:mod:`loadtests.kit.phases`),
the peer's CPU counted over its whole process tree."""

from __future__ import annotations

import argparse
import os
from typing import Any

from loadtests.kit.client import Target, run_round
from loadtests.kit.cpu import CpuMeter
from loadtests.kit.phases import measure

from .peers import Peer, Unavailable


def n_streams(conc: int, a: argparse.Namespace) -> int:
    """Streaming requests per round and side: ``--n``, else 16 x conc (at least 256), so that a round
    spends enough peer CPU for /proc's 10 ms ticks to be a small error."""
    return a.n or max(256, 16 * conc)


async def measure_peer(peer: Peer, direct: Target, fake_pid: int, a: argparse.Namespace) -> dict[str, Any]:
    """The peer's phases: ``streaming`` (one summary per ``--conc``) and ``non_streaming``, the load
    average before and after, and the largest foreign CPU of any phase."""
    extra: dict[str, Any] = {}
    via = Target(peer.name, peer.url, peer.model, extra, a.max_tokens, headers=peer.headers)
    conn = await via.connect()
    status, body, _, _ = await conn.request(via.plain_raw)
    if conn.transport is not None:
        conn.transport.close()
    if status != 200 or b'"choices"' not in body:
        raise Unavailable(f"a plain chat request through it failed: {status} {body[:200].decode(errors='replace')}")
    for t in (direct, via):  # first connections, lazy imports, pools
        await run_round(t, 64, 16, stream=True)
        await run_round(t, 128, a.ns_conc, stream=False)
    meter = CpuMeter(peer.proc.pid, fake_pid, tree=True)
    out: dict[str, Any] = {"loadavg_before": os.getloadavg(), "streaming": []}
    for conc in a.conc_list:
        s = await measure(direct, via, meter, conc, n_streams(conc, a), a.rounds, stream=True)
        out["streaming"].append(s)
        v = s["via"]
        print(
            f"   {conc:>3} streams: added TTFT p50 {s['added_ttft_p50_ms']:.2f} ms (rounds "
            f"{s['added_ttft_p50_per_round_ms']}), CPU {v['gateway_cpu_ms_per_req']:.3f} ms/req (rounds "
            f"{v['gateway_cpu_ms_per_req_rounds']}), errors {s['direct']['errors'] + v['errors']}, "
            f"foreign CPU {s['foreign_cpu_cores']:.2f} cores",
            flush=True,
        )
    if a.ns_requests > 0:
        ns = await measure(direct, via, meter, a.ns_conc, a.ns_requests, a.rounds, stream=False)
        out["non_streaming"] = ns
        print(
            f"   non-streaming @{a.ns_conc}: {ns['via']['rps_median']:.0f} req/s via, "
            f"{ns['direct']['rps_median']:.0f} direct; CPU {ns['via']['gateway_cpu_ms_per_req']:.3f} ms/req; "
            f"errors {ns['direct']['errors'] + ns['via']['errors']}, foreign CPU {ns['foreign_cpu_cores']:.2f} cores",
            flush=True,
        )
    phases = [*out["streaming"], *([out["non_streaming"]] if "non_streaming" in out else [])]
    out["foreign_cpu_max"] = max((p["foreign_cpu_cores"] or 0.0) for p in phases)
    wall = sum(p["phase_wall_s"] for p in phases)
    out["foreign_cpu_mean"] = round(sum((p["foreign_cpu_cores"] or 0.0) * p["phase_wall_s"] for p in phases) / wall, 3)
    out["errors"] = sum(p["direct"]["errors"] + p["via"]["errors"] for p in phases)
    out["loadavg_after"] = os.getloadavg()
    return out
