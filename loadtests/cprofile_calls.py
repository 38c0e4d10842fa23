"""Where does a streamed request's CPU go, by group of code, at one or more git revisions? cProfile.

Each revision's gateway (``git archive`` snapshot, as :mod:`loadtests.revisions`) runs under cProfile,
switched on only for the measured requests (SIGUSR1 on, SIGUSR2 off and dump; ``--keep DIR`` keeps the
dumps), in front of a fresh fake upstream; ``--n`` streams at ``--conc`` go through it (``model: auto``
with ``--routed``, else the pinned model). Printed per revision: the share of profiled time and the
Python calls per request of each group (uvicorn, aiohttp, FastAPI + Starlette, router, ...), and the
upstream reads per stream (calls per request grow with them, so compare revisions at similar reads);
``--top N`` adds the N functions with the most self time. cProfile over-weights code made of many small
calls, and counts every resumption of a coroutine as a call: read shares as a ranking, calls as counts.

    .venv/bin/python -m loadtests.cprofile_calls df843f1 HEAD --routed --n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import pstats
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from loadtests.kit.client import Target, run_round
from loadtests.kit.gateway import describe, snapshot, start_gateway
from loadtests.kit.procs import PROCS, start_fake

LAUNCHER = Path(__file__).with_name("kit") / "cprofile_launch.py"
GROUPS = (  # (group, substrings of a file path), first match wins
    ("uvicorn (send() holds the write system call)", ("uvicorn",)),
    ("upstream client (aiohttp, or the lean one)", ("aiohttp", "multidict", "yarl", "/gateway/upstream_lean.py")),
    ("FastAPI + Starlette", ("fastapi", "starlette")),
    ("router (routing decision)", ("/router/",)),
    ("relay, SSE, upstream wrapper", ("/gateway/relay.py", "/gateway/sse.py", "/gateway/upstream.py")),
    ("metrics", ("prometheus", "/gateway/metrics.py")),
    ("rest of the gateway", ("/gateway/",)),
    ("asyncio tasks and futures (Python part)", ("asyncio", "weakref")),
)
OTHER = "stdlib and builtins"


def group_of(path: str) -> str:
    for name, needles in GROUPS:
        if any(n in path for n in needles):
            return name
    return OTHER


def breakdown(stats: pstats.Stats, requests: int) -> dict[str, object]:
    """Per group: share of profiled (self) time and calls per request; and reads per stream."""
    time: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    reads = 0
    for (path, _, name), (_, ncalls, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        g = group_of(path)
        time[g] += tottime
        calls[g] += ncalls
        if name == "feed" and path.endswith("gateway/sse.py"):
            reads += ncalls
    total = sum(time.values()) or 1.0
    return {
        "groups": {g: {"share": time[g] / total, "calls_per_request": calls[g] / requests} for g in time},
        "calls_per_request": sum(calls.values()) / requests,
        "reads_per_stream": reads / requests,
        "top": top_functions(stats, requests),
    }


def top_functions(stats: pstats.Stats, requests: int, n: int = 40) -> list[tuple[str, float, float]]:
    """The ``n`` functions with the most self time: (file:line(name), share of self time, calls per request)."""
    rows = stats.stats.items()  # type: ignore[attr-defined]
    total = sum(v[2] for _, v in rows) or 1.0
    ranked = sorted(rows, key=lambda kv: -kv[1][2])[:n]
    return [(f"{Path(p).name}:{ln}({fn})", v[2] / total, v[1] / requests) for (p, ln, fn), v in ranked]


async def _profile(url: str, pid: int, routed: bool, a: argparse.Namespace) -> None:
    t = Target("gw", url, "auto" if routed else "smol", {}, 16)
    await run_round(t, 300, a.conc, stream=True)  # warm: connections, lazy imports, first decisions
    os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(0.3)
    rr = await run_round(t, a.n, a.conc, stream=True)
    os.kill(pid, signal.SIGUSR2)
    await asyncio.sleep(1.5)
    if rr.errors:
        raise SystemExit(f"{rr.errors} errors, e.g. {rr.error_samples[:2]}")


def profile(ref: str, tmp: Path, a: argparse.Namespace) -> dict[str, object]:
    source = snapshot(ref, tmp)
    out = tmp / f"{source.name}.prof"
    os.environ["CPROFILE_SOURCE"], os.environ["CPROFILE_OUT"] = str(source), str(out)
    try:
        upstream, _ = start_fake(tmp, served_model="smol-served")
        art = str(source / "router" / "artifacts" / "local") if a.routed else None
        url, p, _ = start_gateway(
            tmp, upstream, model="smol", served_model="smol-served", routed=art, log_level="warning",
            gateway_bin=str(LAUNCHER), name=source.name,
        )  # fmt: skip
        asyncio.run(_profile(url, p.pid, a.routed, a))
        if a.keep:
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(out, Path(a.keep) / f"{source.name}{'-routed' if a.routed else ''}.prof")
        return breakdown(pstats.Stats(str(out)), a.n)
    finally:
        PROCS.stop_all()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.cprofile_calls", description=__doc__.split("\n\n")[0])
    ap.add_argument("refs", nargs="+", help="git revisions")
    ap.add_argument("--n", type=int, default=2000, help="profiled streams")
    ap.add_argument("--conc", type=int, default=16, help="concurrent streams")
    ap.add_argument("--routed", action="store_true", help="model auto with router/artifacts/local")
    ap.add_argument("--top", type=int, default=0, help="also print the N functions with the most self time")
    ap.add_argument("--keep", metavar="DIR", help="keep each revision's cProfile dump in DIR (for pstats)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cprofile-") as d:
        res = {describe(ref): profile(ref, Path(d), a) for ref in a.refs}
    for name, r in res.items():
        print(f"\n{name}: {r['calls_per_request']:.0f} Python calls per request, {r['reads_per_stream']:.1f} reads")
        groups: dict[str, dict[str, float]] = r["groups"]  # type: ignore[assignment]
        for g, v in sorted(groups.items(), key=lambda kv: -kv[1]["share"]):
            print(f"  {g:45s} {100 * v['share']:5.1f} %  {v['calls_per_request']:7.0f} calls/request")
        for fn, share, per in r["top"][: a.top]:  # type: ignore[index]
            print(f"    {fn:70s} {100 * share:5.1f} %  {per:6.1f} calls/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
