"""Where a server's CPU goes under load: py-spy sampling (self and inclusive time by function and by
package, from py-spy's raw collapsed stacks) and strace system-call counts per request."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .client import Target, run_round
from .cpu import CpuMeter
from .procs import PROCS, REPO, tail


def summarize_pyspy(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample counts from py-spy's raw (collapsed) output."""
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    incl_ours: Counter[str] = Counter()
    total = 0

    def where(frame: str) -> tuple[str, str]:
        # "func (path/to/file.py:123)" -> ("func (file path)", package)
        name, _, loc = frame.rpartition(" (")
        path = loc.rstrip(")").rsplit(":", 1)[0]
        if "site-packages/" in path:
            rel = path.split("site-packages/", 1)[1]
        elif "/lib/python" in path:
            rel = "stdlib/" + path.split("/lib/python", 1)[1].split("/", 1)[-1]
        else:
            rel = path.replace(str(REPO) + "/", "")
        pkg = rel.split("/", 1)[0].removesuffix(".py")
        if rel.startswith("stdlib/"):
            pkg = rel.split("/")[1].removesuffix(".py")
        return f"{name} ({rel})", pkg

    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [f for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += c
        named = [where(f) for f in frames]
        fn, pkg = named[-1]
        self_fn[fn] += c
        self_pkg[pkg] += c
        for f in {n for n, _ in named}:
            incl_fn[f] += c
        for f in {n for n, p in named if p in ("gateway", "router")}:
            incl_ours[f] += c

    def share(cnt: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in cnt.most_common(top)]

    return {
        "samples": total,
        "self_by_function_pct": share(self_fn),
        "self_by_package_pct": share(self_pkg),
        "inclusive_ours_pct": share(incl_ours),
        "inclusive_all_pct": share(incl_fn),
    }


async def profile_load(
    via: Target,
    meter: CpuMeter,
    out_raw: Path,
    *,
    seconds: int,
    conc: int,
    rate: int = 250,
    plain: bool = False,
    native: bool = False,
    cpus: str = "",
) -> dict[str, Any]:
    """py-spy the server ``meter.gw`` for ``seconds`` while this client sends via-only load at ``conc``
    (streamed, or non-streamed with ``plain``); raw stacks to ``out_raw``; the :func:`summarize_pyspy`
    summary plus the server's CPU per request during the profile."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy not found (pip install py-spy into the venv)"}
    cmd = [
        spy,
        "record",
        "--pid",
        str(meter.gw),
        "--rate",
        str(rate),
        "--duration",
        str(seconds),
        "--format",
        "raw",
        "--output",
        str(out_raw),
    ]
    # --nonblocking does not pause the gateway to sample it; --native (C frames) needs the pauses
    cmd.append("--native" if native else "--nonblocking")
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    log = out_raw.with_suffix(".log")
    spy_p = PROCS.start(cmd, log)
    await asyncio.sleep(1.0)  # let py-spy attach
    s0 = meter.snap()
    done = 0
    end = time.monotonic() + seconds - 1.5
    while time.monotonic() < end and spy_p.poll() is None:
        r = await run_round(via, max(conc * 8, 64), conc, stream=not plain)
        done += r.ok
    d = meter.delta(s0, meter.snap())
    await asyncio.get_running_loop().run_in_executor(None, spy_p.wait)
    if not out_raw.exists():
        return {"error": f"py-spy wrote nothing: {tail(log, 500)}"}
    summ = summarize_pyspy(out_raw)
    summ.update(
        kind="non-streaming" if plain else "streaming",
        requests=done,
        conc=conc,
        gateway_cpu_ms_per_req=round(d["gateway"] / max(done, 1) * 1000, 4),
        note=f"py-spy {'--native (pausing)' if native else '--nonblocking'} sampling; "
        "shares are of the gateway's on-CPU samples",
        raw=str(out_raw),
    )
    return summ


async def count_syscalls(
    via: Target, meter: CpuMeter, *, requests: int, conc: int, plain: bool = False, cpus: str = ""
) -> dict[str, Any]:
    """``strace -c`` on the server over ``requests`` via requests at ``conc``: system calls per request
    (strace slows the server; only the counts mean anything)."""
    strace = shutil.which("strace")
    if not strace:
        return {"error": "strace not found"}
    out = Path(tempfile.mkstemp(prefix="strace-", suffix=".txt")[1])
    cmd = [strace, "-c", "-f", "-o", str(out), "-p", str(meter.gw)]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    p = PROCS.start(cmd, out.with_suffix(".log"))
    await asyncio.sleep(1.0)  # attach
    r = await run_round(via, requests, conc, stream=not plain)
    await asyncio.sleep(0.3)
    os.kill(p.pid, signal.SIGINT)  # strace detaches and writes its summary
    await asyncio.get_running_loop().run_in_executor(None, p.wait)
    per: dict[str, float] = {}
    for line in out.read_text(errors="replace").splitlines():
        f = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(f) >= 5 and f[0].replace(".", "", 1).isdigit() and f[3].isdigit() and f[-1] != "total":
            per[f[-1]] = round(int(f[3]) / max(r.ok, 1), 2)
    out.unlink(missing_ok=True)
    top = dict(sorted(per.items(), key=lambda kv: -kv[1])[:15])
    return {
        "requests": r.ok,
        "errors": r.errors,
        "conc": conc,
        "kind": "non-streaming" if plain else "streaming",
        "calls_per_request": top,
        "total_per_request": round(sum(per.values()), 1),
    }


def print_profile(prof: dict[str, Any] | None) -> None:
    """Print a :func:`profile_load` summary: the top packages and functions by self time, and the
    inclusive time of gateway/ and router/ functions."""
    if not prof:
        return
    if "error" in prof:
        print(f"\nprofile: {prof['error']}")
    else:
        print(
            f"\nprofile: {prof['samples']} samples, {prof['requests']} requests at {prof['conc']} concurrent, "
            f"gateway CPU {prof['gateway_cpu_ms_per_req']:.3f} ms/req; raw stacks in {prof['raw']}"
        )
        for title, key in (
            ("self time by package", "self_by_package_pct"),
            ("self time by function", "self_by_function_pct"),
            ("inclusive time, gateway/ and router/ functions", "inclusive_ours_pct"),
        ):
            print(f"\n{title}:")
            for name, pc in prof[key][:20]:
                print(f"  {pc:5.1f}%  {name}")
