"""``llm-gateway profile``: measure every arm on real prompts, through the gateway.

Each (prompt, arm) pair is one streaming chat request pinned to the arm (``route.arm``) at
temperature 0, timed on the client side like a user would see it, scored for correctness, and
written as one JSONL row (flushed at once)::

    {prompt_id, task, split, prompt, arm, model, strategy, backend, correct, prompt_tokens,
     output_tokens, ttft_s, decode_tps, e2e_s, finish_reason, error, text}

``ttft_s``: request sent to the first non-empty content delta; ``decode_tps``:
``(output_tokens - 1) / (last token - first token)``. Resumable: pairs already in the output
without an error are skipped, so a run stopped with Ctrl-C continues where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from router.datasets import Prompt, load_prompts
from router.scoring import score


def done_pairs(path: Path) -> set[tuple[str, str]]:
    """(prompt_id, arm) pairs already profiled without error."""
    done: set[tuple[str, str]] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if not row.get("error"):
                    done.add((row["prompt_id"], row["arm"]))
    return done


async def profile_one(client: httpx.AsyncClient, url: str, prompt: Prompt, arm: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": "auto",
        "messages": prompt.messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "route": {"arm": arm},
    }
    row: dict[str, Any] = {
        "prompt_id": prompt.id,
        "task": prompt.task,
        "split": prompt.split,
        "prompt": prompt.text,
        "arm": arm,
        "error": None,
    }
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    first = last = None
    finish = None
    start = time.perf_counter()
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            row.update(
                model=resp.headers.get("x-route-model"),
                strategy=resp.headers.get("x-route-strategy"),
                backend=resp.headers.get("x-route-backend"),
            )
            if resp.status_code != 200:
                row["error"] = f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}"
                return row
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    row["error"] = str(event["error"].get("message"))
                    return row
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices", []):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        pieces.append(content)
                    finish = choice.get("finish_reason") or finish
    except httpx.HTTPError as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    end = time.perf_counter()
    text = "".join(pieces)
    out_tokens = int(usage.get("completion_tokens") or 0)
    row.update(
        correct=await asyncio.to_thread(score, prompt, text),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=out_tokens,
        ttft_s=(first - start) if first else end - start,
        decode_tps=(out_tokens - 1) / (last - first) if first and last and last > first and out_tokens > 1 else None,
        e2e_s=end - start,
        finish_reason=finish,
        text=text[:2000],
    )
    return row


class Progress:
    """A one-line progress bar on stderr: done/total, rate, ETA, errors, accuracy per arm."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.errors = total, 0, 0
        self.started = time.monotonic()
        self.correct: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def update(self, row: dict[str, Any]) -> None:
        self.done += 1
        if row.get("error"):
            self.errors += 1
        elif row.get("correct") is not None:
            c = self.correct[row["arm"]]
            c[0] += int(bool(row["correct"]))
            c[1] += 1
        elapsed = time.monotonic() - self.started
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0
        acc = "  ".join(f"{a}: {c[0]}/{c[1]}" for a, c in sorted(self.correct.items()))
        bar = "#" * int(24 * self.done / max(self.total, 1))
        sys.stderr.write(
            f"\r[{bar:24}] {self.done}/{self.total} {rate * 60:.0f}/min ETA {eta / 60:.1f} min "
            f"errors {self.errors}  {acc} "
        )
        sys.stderr.flush()


async def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(args.tasks.split(","), args.per_task, seed=args.seed, split=args.split)
    arms = args.arms.split(",")
    done = done_pairs(out)
    todo = [(p, a) for p in prompts for a in arms if (p.id, a) not in done]
    print(
        f"==> {len(prompts)} prompts x {len(arms)} arms: {len(todo)} to run, {len(prompts) * len(arms) - len(todo)} "
        f"already in {out}",
        flush=True,
    )
    progress = Progress(len(todo))
    sems = {a: asyncio.Semaphore(args.concurrency) for a in arms}
    limits = httpx.Limits(max_connections=args.concurrency * len(arms) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout, connect=10), limits=limits) as client:
        with out.open("a") as fh:

            async def one(prompt: Prompt, arm: str) -> None:
                async with sems[arm]:
                    row = await profile_one(client, args.gateway.rstrip("/"), prompt, arm, args.max_tokens)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                progress.update(row)

            tasks = [asyncio.create_task(one(p, a)) for p, a in todo]
            try:
                await asyncio.gather(*tasks)
            except asyncio.CancelledError:
                for t in tasks:
                    t.cancel()
                raise
    sys.stderr.write("\n")
    summarize(out, arms)
    return 0


def summarize(path: Path, arms: list[str]) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if not r.get("error") and r["arm"] in arms]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["arm"], r["task"])].append(r)
    print(f"{'arm':24} {'task':10} {'n':>4} {'acc':>6} {'out tok':>8} {'TTFT p50':>9} {'tok/s p50':>9} {'e2e mean':>9}")
    for (arm, task), rs in sorted(groups.items()):
        lab = [r["correct"] for r in rs if r["correct"] is not None]
        acc = f"{100 * sum(lab) / len(lab):.0f}%" if lab else "-"
        tps = sorted(r["decode_tps"] for r in rs if r["decode_tps"])
        ttft = sorted(r["ttft_s"] for r in rs)
        print(
            f"{arm:24} {task:10} {len(rs):>4} {acc:>6} {sum(r['output_tokens'] for r in rs) / len(rs):>8.0f} "
            f"{ttft[len(ttft) // 2]:>8.2f}s {tps[len(tps) // 2] if tps else 0:>9.1f} "
            f"{sum(r['e2e_s'] for r in rs) / len(rs):>8.2f}s"
        )


def profile_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        print(
            f"\n==> interrupted; finished rows are in {args.out}. Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130


def add_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="measure every arm on offline prompt sets through the gateway (resumable)")
    p.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL")
    p.add_argument("--arms", required=True, help="comma-separated arm names")
    p.add_argument("--tasks", default="gsm8k,mmlu,humaneval,mtbench")
    p.add_argument("--per-task", type=int, default=50)
    p.add_argument("--split", choices=["all", "train", "test"], default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4, help="concurrent requests per arm")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", required=True, help="JSONL file (appended; existing rows are skipped)")
    p.set_defaults(func=profile_command)
