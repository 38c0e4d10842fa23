"""Put an arm profiled beside a baseline arm onto the timing scale of an older profile of that baseline.

Speeds measured on this machine move with its load (SmolLM2 decodes at 15 tok/s in one run and 35 in
another), so rows from different runs must not be compared on time. When a new arm is profiled side
by side with a baseline arm that an existing profile also holds (e.g. ``smollm2-skip-d4-healed`` beside
``smollm2-plain``), this rescales the new arm's TTFT, decode speed and end-to-end time per prompt by
its ratio to the baseline *in the same run*, applied to the baseline's row in the reference profile:

    e2e_new' = e2e_base_ref * e2e_new / e2e_base_same_run   (likewise TTFT; decode tok/s the other way)

Correctness, texts and token counts are unchanged. Rows of prompts missing from either side are
dropped. The output holds only the new arm's rows, ready to be given to ``llm-gateway train`` after
the reference profile. Usage::

    python loadtests/paired_profile.py --reference profiles/local.jsonl --run profiles/local-healed.jsonl \\
        --baseline smollm2-plain --arm smollm2-skip-d4-healed --out profiles/local-healed-paired.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _good(path: Path, arm: str) -> dict[str, dict[str, Any]]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row["arm"] == arm and not row.get("error") and row.get("e2e_s") and row.get("ttft_s"):
                out[row["prompt_id"]] = row
    return out


def rescale(reference: Path, run: Path, baseline: str, arm: str) -> list[dict[str, Any]]:
    """The ``arm`` rows of ``run``, on ``reference``'s timing scale for ``baseline``."""
    ref, same, new = _good(reference, baseline), _good(run, baseline), _good(run, arm)
    rows = []
    for pid, row in new.items():
        if pid not in ref or pid not in same:
            continue
        r, s = ref[pid], same[pid]
        out = dict(row)
        out["e2e_s"] = r["e2e_s"] * row["e2e_s"] / s["e2e_s"]
        out["ttft_s"] = r["ttft_s"] * row["ttft_s"] / s["ttft_s"]
        if row.get("decode_tps") and s.get("decode_tps") and r.get("decode_tps"):
            out["decode_tps"] = r["decode_tps"] * row["decode_tps"] / s["decode_tps"]
        out["paired"] = {"reference": str(reference), "run": str(run), "baseline": baseline}
        rows.append(out)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="profile holding the baseline's reference rows")
    ap.add_argument("--run", type=Path, required=True, help="profile of the baseline and the new arm, side by side")
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--arm", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = rescale(args.reference, args.run, args.baseline, args.arm)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows of {args.arm} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
