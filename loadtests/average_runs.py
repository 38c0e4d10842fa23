"""Average several profile runs of the same arms, so that one run's timing noise counts for less.

A prompt's decode speed measured once is noisy (two runs of SmolLM2 plain on the same prompts differ by
a log-speed sd of 0.17: ``loadtests/strategy_noise.py``), and a per-prompt choice between strategies
that differ by a few percent drowns in it. Averaging ``n`` independent runs divides the noise variance
by ``n``. Runs happen at different times under different machine load, so each run is first put on
the reference run's scale with *one* factor: the ratio of the baseline arm's throughput (ratio of
sums over the prompts both runs hold) in the reference to that in the run. Then each (prompt, arm)
gets the geometric mean of its decode speeds over the runs that measured it (TTFT and end-to-end time
likewise); texts, labels and token counts are those of the first run listed that has the pair.

    python -m loadtests.average_runs --baseline smollm2-plain --out profiles/router-smollm2-k-avg.jsonl \\
        --run profiles/router.jsonl --run profiles/router-smollm2-k.jsonl --run profiles/router-smollm2-k-run2.jsonl

The first ``--run`` is the reference. Each output row records how many runs it averages (``runs``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lab.profiles import latest_good, read_rows

TIMES = ("ttft_s", "e2e_s")
Good = dict[tuple[str, str], dict[str, Any]]  # (prompt_id, arm) -> row


def _good(rows: list[dict[str, Any]], arms: set[str] | None) -> Good:
    return {
        k: r
        for k, r in latest_good(rows).items()
        if (arms is None or r["arm"] in arms) and r.get("decode_tps") and r.get("e2e_s") and r.get("ttft_s")
    }


def run_scale(
    reference: dict[tuple[str, str], dict[str, Any]], run: dict[tuple[str, str], dict[str, Any]], baseline: str
) -> float:
    """Speed factor putting ``run`` on ``reference``'s scale: the baseline's throughput there ÷ here."""
    common = [k for k in run if k[1] == baseline and k in reference]
    if len(common) < 10:
        raise ValueError(f"--baseline {baseline}: fewer than 10 prompts in both the reference and a run")

    def throughput(rows: Good) -> float:
        tokens = np.array([rows[k]["output_tokens"] - 1 for k in common], dtype=float)
        seconds = tokens / np.array([rows[k]["decode_tps"] for k in common])
        return float(tokens.sum() / seconds.sum())

    return throughput(reference) / throughput(run)


def average(runs: Sequence[list[dict[str, Any]]], baseline: str, arms: set[str] | None = None) -> list[dict[str, Any]]:
    """One row per (prompt, arm) measured in any run, its speeds and times averaged over the runs."""
    good = [_good(rows, arms) for rows in runs]
    scales = [run_scale(good[0], g, baseline) for g in good]
    keys = sorted({k for g in good for k in g})
    out = []
    for key in keys:
        measured = [(g[key], s) for g, s in zip(good, scales, strict=True) if key in g]
        row = dict(measured[0][0])
        row["decode_tps"] = float(np.exp(np.mean([np.log(r["decode_tps"] * s) for r, s in measured])))
        for t in TIMES:
            row[t] = float(np.exp(np.mean([np.log(r[t] / s) for r, s in measured])))
        row["runs"] = len(measured)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", type=Path, action="append", required=True, help="a profile run; the first is the reference"
    )
    ap.add_argument("--baseline", required=True, help="the arm every run holds, used to align their scales")
    ap.add_argument("--arms", help="comma-separated arms to keep (default: all)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    arms = {a.strip() for a in args.arms.split(",")} if args.arms else None
    rows = average([read_rows(p) for p in args.run], args.baseline, arms)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    counts: dict[int, int] = {}
    for r in rows:
        counts[r["runs"]] = counts.get(r["runs"], 0) + 1
    print(f"wrote {len(rows)} rows to {args.out}; rows by runs averaged: {dict(sorted(counts.items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
