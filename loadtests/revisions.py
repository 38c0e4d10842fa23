"""Does a change cost CPU? The gateway at two (or more) git revisions, side by side, in one run.

Every revision runs as two gateways (one plain arm with the model pinned, and ``model: auto`` with
the learned policy over the revision's own ``router/artifacts/<artifact>``), all in front of one fake
upstream (``loadtests/fake_upstream.py``), all started before the first measurement. Then, for
``--rounds`` rounds and for each mode (pinned streamed, auto streamed, auto non-streamed), the same
``--n`` requests at ``--conc`` go to each revision in turn, the order reversed every other round;
each gateway's CPU (utime + stime from /proc) over its own rounds, divided by the answers, is its
CPU per request. Interleaving is what makes the comparison fair on a shared machine: whatever else
runs slows every revision alike, so the *paired* ratio (revision ÷ the first, per round) is the
figure to quote, with its median and range over the rounds.

    .venv/bin/python -m loadtests.revisions 129a5a9 HEAD --rounds 6 --out loadtests/results/rev.json

``WORKTREE`` as a revision runs the working tree (the editable install) instead of a snapshot.
A revision is extracted with ``git archive`` (``gateway/`` and ``router/`` only) and run with
``python -m gateway`` from that folder.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests.kit.client import Target, run_round
from loadtests.kit.cpu import proc_cpu_s
from loadtests.kit.gateway import REPO, describe, snapshot, start_gateway
from loadtests.kit.procs import PROCS, start_fake
from loadtests.kit.report import machine, write

MODES = ("pinned-stream", "auto-stream", "auto-plain")
WORKTREE = "WORKTREE"


def _targets(
    refs: list[str], tmp: Path, upstream: str, artifact: str, tokens: int
) -> dict[tuple[str, bool], tuple[int, Target]]:
    """Start the two gateways of every revision; (revision, routed) → (pid, target)."""
    out: dict[tuple[str, bool], tuple[int, Target]] = {}
    for i, ref in enumerate(refs):
        source = None if ref == WORKTREE else snapshot(ref, tmp)
        for routed in (False, True):
            art = str((source or REPO) / "router" / "artifacts" / artifact) if routed else None
            name = f"rev{i}-{'auto' if routed else 'pinned'}"
            url, p, _ = start_gateway(
                tmp, upstream, model="smol", served_model="smol-served", routed=art, log_level="warning",
                name=name, source=source,
            )  # fmt: skip
            out[(ref, routed)] = (p.pid, Target(name, url, "auto" if routed else "smol", {}, tokens))
    return out


async def _measure(
    refs: list[str], gws: dict[tuple[str, bool], tuple[int, Target]], a: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    """CPU ms per request, per mode and revision, one value per round."""
    for _, t in gws.values():  # first connections, lazy imports, the router's first decisions
        await run_round(t, 200, a.conc, stream=True)
        await run_round(t, 200, a.conc, stream=False)
    modes = a.modes.split(",")
    res: dict[str, dict[str, list[float]]] = {m: {r: [] for r in refs} for m in modes}
    for rnd in range(a.rounds):
        for mode in modes:
            routed, stream = mode.startswith("auto"), mode.endswith("stream")
            for ref in refs if rnd % 2 == 0 else refs[::-1]:
                pid, t = gws[(ref, routed)]
                c0 = proc_cpu_s(pid)
                rr = await run_round(t, a.n, a.conc, stream=stream)
                c1 = proc_cpu_s(pid)
                if rr.errors:
                    raise SystemExit(f"{ref} {mode}: {rr.errors} errors, e.g. {rr.error_samples[:2]}")
                res[mode][ref].append(1000.0 * (c1 - c0) / max(rr.ok, 1))
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)
    return res


def ratio_ci(ratios: list[float], replicates: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Geometric mean of paired ratios and its 95 % bootstrap interval (resampling rounds)."""
    logs = [math.log(r) for r in ratios]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(replicates))
    lo, hi = means[int(0.025 * replicates)], means[int(0.975 * replicates) - 1]
    return math.exp(statistics.fmean(logs)), math.exp(lo), math.exp(hi)


def summary(res: dict[str, dict[str, list[float]]], refs: list[str]) -> dict[str, Any]:
    """Per mode: each revision's median CPU ms/request and range, and its paired ratio to the first
    (median and range; geometric mean with a 95 % bootstrap interval over the rounds)."""
    out: dict[str, Any] = {}
    for mode, by_ref in res.items():
        base = by_ref[refs[0]]
        out[mode] = {}
        for ref in refs:
            xs = by_ref[ref]
            ratios = [x / b for x, b in zip(xs, base, strict=True) if b > 0 and x > 0]
            gm, lo, hi = ratio_ci(ratios)
            out[mode][ref] = {
                "cpu_ms_median": statistics.median(xs),
                "cpu_ms_min": min(xs),
                "cpu_ms_max": max(xs),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "ratio_geomean": gm,
                "ratio_ci95": [lo, hi],
            }
    return out


def table(summ: dict[str, Any], names: dict[str, str]) -> str:
    lines = [
        "| mode | revision | CPU ms / request, median [range] | ÷ first, median [range] "
        "| ÷ first, geometric mean [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for mode, by_ref in summ.items():
        for ref, s in by_ref.items():
            lines.append(
                f"| {mode} | {names[ref]} | {s['cpu_ms_median']:.3f} [{s['cpu_ms_min']:.3f}, {s['cpu_ms_max']:.3f}] "
                f"| {s['ratio_median']:.3f} [{s['ratio_min']:.3f}, {s['ratio_max']:.3f}] "
                f"| {s['ratio_geomean']:.3f} [{s['ratio_ci95'][0]:.3f}, {s['ratio_ci95'][1]:.3f}] |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.revisions",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "refs", nargs="+", help=f"git revisions to compare (the first is the baseline); {WORKTREE}: the working tree"
    )
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds per mode")
    ap.add_argument("--n", type=int, default=2000, help="requests per round, revision and mode")
    ap.add_argument("--conc", type=int, default=16, help="concurrent requests")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per answer (the fake's, and max_tokens)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--artifact", default="local", help="router/artifacts/<name> of each revision, for model auto")
    ap.add_argument("--out", help="write the JSON results here")
    a = ap.parse_args(argv)
    if unknown := set(a.modes.split(",")) - set(MODES):
        ap.error(f"unknown modes: {', '.join(sorted(unknown))}")
    refs = list(dict.fromkeys(a.refs))
    names = {r: (describe() if r == WORKTREE else describe(r)) for r in refs}
    with tempfile.TemporaryDirectory(prefix="revisions-") as d:
        tmp = Path(d)
        try:
            upstream, _ = start_fake(tmp, served_model="smol-served", tokens=a.tokens)
            gws = _targets(refs, tmp, upstream, a.artifact, a.tokens)
            res = asyncio.run(_measure(refs, gws, a))
        finally:
            PROCS.stop_all()
    summ = summary(res, refs)
    md = table(summ, names)
    out = {"args": vars(a), "revisions": names, "machine": machine(), "rounds": res, "summary": summ}
    print(md)
    write(out, a.out, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
