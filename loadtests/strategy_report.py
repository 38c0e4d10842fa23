"""Tables for docs/strategies.md from paired ``llm-gateway profile`` runs (plain + one strategy arm each).

Usage: ``.venv/bin/python loadtests/strategy_report.py [--plain ARM] profiles/strategies/*.jsonl``
(``--plain``: the baseline arm, default ``smollm2-plain``; e.g. ``qwen-coder-0.5b-plain``)

Each file holds one run in which ``smollm2-plain`` and one other arm answered the same prompts at the
same time (each on its own core), so the ratios compare them under the same machine load. Prints, in
Markdown: per arm and task the accuracy, how many answers equal the plain arm's text, mean output
tokens, TTFT p50, decode tok/s p50, mean end-to-end latency, and the spec-decode acceptance from the
``.meta.json`` sidecar; then the paired ratios against plain; then how often plain's own text agreed
between runs (the noise floor for "same text"); then, per arm, the answer-format and length
figures that show whether a pruned variant still behaves (MMLU answers that start with a letter,
answers cut at ``max_tokens``) and its accuracy as a share of the plain arm's.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

PLAIN = "smollm2-plain"
LETTER = re.compile(r"^\s*\(?[A-D]\b")  # an MMLU answer in the asked-for format starts with its letter
TASKS = ("gsm8k", "mmlu", "humaneval")


def _rows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not row.get("error"):
            out[(row["prompt_id"], row["arm"])] = row
    return out


def _median(xs: list[Any]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def _mean(xs: list[Any]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else float("nan")


def _acceptance(path: Path) -> dict[str, Any]:
    meta = path.with_name(path.name + ".meta.json")
    if not meta.exists():
        return {}
    return dict(json.loads(meta.read_text(encoding="utf-8")).get("spec_decode_acceptance") or {})


def _arms(rows: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The run's arms, the plain baseline first."""
    return sorted({a for _, a in rows}, key=lambda a: a != PLAIN)


def main(paths: list[Path]) -> None:
    runs = {p.stem: (_rows(p), _acceptance(p)) for p in paths}
    print(
        "| run | arm | task | n | accuracy | same text as plain | out tok | TTFT p50 | decode tok/s p50 | e2e mean "
        "| accepted |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run, (rows, acc) in runs.items():
        for arm in _arms(rows):
            rate = (acc.get(arm) or {}).get("acceptance_rate")
            for task in (*TASKS, "all"):
                rs = [r for (_, a), r in rows.items() if a == arm and task in ("all", r["task"])]
                same = [r["text"] == rows.get((r["prompt_id"], PLAIN), {}).get("text") for r in rs]
                correct = [r["correct"] for r in rs if r["correct"] is not None]
                print(
                    f"| {run} | {arm} | {task} | {len(rs)} | {100 * _mean(correct):.0f}% | "
                    f"{'—' if arm == PLAIN else f'{sum(same)}/{len(same)}'} | "
                    f"{_mean([r['output_tokens'] for r in rs]):.0f} | {_median([r['ttft_s'] for r in rs]):.2f} s | "
                    f"{_median([r['decode_tps'] for r in rs]):.1f} | {_mean([r['e2e_s'] for r in rs]):.2f} s | "
                    f"{'' if rate is None or task != 'all' else f'{100 * rate:.0f}%'} |"
                )
    print(
        "\n| run | arm | task | decode tok/s vs plain (median of per-prompt ratios) | e2e mean vs plain "
        "| TTFT p50 vs plain |"
    )
    print("|---|---|---|---|---|---|")
    for run, (rows, _) in runs.items():
        others = sorted({a for _, a in rows} - {PLAIN})
        for arm in others:
            for task in (*TASKS, "all"):
                pairs = [
                    (rows[(p, PLAIN)], r)
                    for (p, a), r in rows.items()
                    if a == arm and (p, PLAIN) in rows and task in ("all", r["task"])
                ]
                tps = [b["decode_tps"] / a["decode_tps"] for a, b in pairs if a["decode_tps"] and b["decode_tps"]]
                e2e = _mean([b["e2e_s"] for _, b in pairs]) / _mean([a["e2e_s"] for a, _ in pairs])
                ttft = _median([b["ttft_s"] for _, b in pairs]) / _median([a["ttft_s"] for a, _ in pairs])
                print(f"| {run} | {arm} | {task} | {_median(tps):.2f}x | {e2e:.2f}x | {ttft:.2f}x |")
    print()
    names = list(runs)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = runs[first][0], runs[second][0]
            keys = [k for k in a if k[1] == PLAIN and k in b]
            same = sum(a[k]["text"] == b[k]["text"] for k in keys)
            print(f"- plain's text identical in runs {first} and {second}: {same}/{len(keys)}")
    print(
        "\n| run | arm | correct (GSM8K / MMLU / HumanEval) | accuracy vs plain | MMLU answers in letter format "
        "| answers cut at max_tokens | out tok mean |"
    )
    print("|---|---|---|---|---|---|---|")
    for run, (rows, _) in runs.items():
        base = [r["correct"] for (_, a), r in rows.items() if a == PLAIN and r["correct"] is not None]
        for arm in _arms(rows):
            rs = [r for (_, a), r in rows.items() if a == arm]
            per = [sum(bool(r["correct"]) for r in rs if r["task"] == t) for t in TASKS]
            mmlu = [r for r in rs if r["task"] == "mmlu"]
            letter = sum(bool(LETTER.match(r.get("text") or "")) for r in mmlu)
            cut = sum(r.get("finish_reason") == "length" for r in rs)
            correct = [r["correct"] for r in rs if r["correct"] is not None]
            share = sum(correct) / sum(base) if base and sum(base) else float("nan")
            print(
                f"| {run} | {arm} | {' / '.join(map(str, per))} of {len(correct)} | {100 * share:.0f}% | "
                f"{letter}/{len(mmlu)} | {cut}/{len(rs)} | {_mean([r['output_tokens'] for r in rs]):.0f} |"
            )


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--plain"]:
        PLAIN, args = args[1], args[2:]
    main([Path(p) for p in args])
