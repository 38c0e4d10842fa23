"""Do two runs of the same workload route alike after different warm-up traffic?

Against a running gateway (the real local stack): for each warm-up in turn, send it pinned,
concurrent streamed requests to one arm (the kind of traffic that leaves its mark on the live
speed and TTFT means), then ask the router — dry runs, ``POST /v1/route``, which generate nothing
and so do not move the live statistics themselves — where each prompt of one fixed workload would
go. Reports each run's arm shares and the largest difference between runs, in points.

Run it against gateways that differ only in ``routing.params.live_bound`` to see what bounding
the live measurements buys (``docs/router.md``, "bounded live measurements")::

    python -m loadtests.warmup_stability --gateway http://127.0.0.1:8080 \\
        --warmups qwen-coder-0.5b-plain,smollm2-plain --out loadtests/results/warmup-stability.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from lab.datasets import ROUTER_TASKS, load_prompts

WARMUP_PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm, in at least 400 words."


async def warm_up(client: httpx.AsyncClient, gateway: str, arm: str, requests: int, concurrency: int) -> float:
    """``requests`` pinned streamed requests to ``arm``, ``concurrency`` at a time; returns seconds taken."""
    body = {
        "model": "auto",
        "stream": True,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": WARMUP_PROMPT}],
        "route": {"arm": arm},
    }
    started = time.monotonic()
    queue = list(range(requests))

    async def worker() -> None:
        while queue:
            queue.pop()
            async with client.stream("POST", gateway + "/v1/chat/completions", json=body) as resp:
                async for _ in resp.aiter_bytes():
                    pass

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic() - started


async def workload(client: httpx.AsyncClient, gateway: str, prompts: list[Any]) -> list[str]:
    arms = []
    for p in prompts:
        r = await client.post(gateway + "/v1/route", json={"model": "auto", "messages": p.messages})
        r.raise_for_status()
        arms.append(r.json()["arm"])
    return arms


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prompts = load_prompts(ROUTER_TASKS, args.per_task, seed=args.seed, split="test")
    runs = []
    async with httpx.AsyncClient(timeout=600) as client:
        for arm in args.warmups.split(","):
            took = await warm_up(client, args.gateway, arm, args.requests, args.concurrency)
            picks = await workload(client, args.gateway, prompts)
            shares = {a: n / len(picks) for a, n in sorted(Counter(picks).items())}
            runs.append({"warmup_arm": arm, "warmup_s": round(took, 1), "shares": shares, "picks": picks})
            print(f"after warm-up on {arm} ({took:.0f} s): " + ", ".join(f"{a} {s:.1%}" for a, s in shares.items()))
            await asyncio.sleep(args.pause)
    arms = sorted({a for r in runs for a in r["shares"]})
    spread = {a: max(r["shares"].get(a, 0.0) for r in runs) - min(r["shares"].get(a, 0.0) for r in runs) for a in arms}
    agree = sum(len(set(col)) == 1 for col in zip(*(r["picks"] for r in runs), strict=True)) / len(prompts)
    print("largest share difference: " + ", ".join(f"{a} {d * 100:.1f} pts" for a, d in spread.items()))
    print(f"same arm for {agree:.1%} of prompts")
    return {
        "gateway": args.gateway,
        "setting": args.setting,
        "prompts": len(prompts),
        "warmup_requests": args.requests,
        "warmup_concurrency": args.concurrency,
        "runs": runs,
        "share_spread_points": {a: round(d * 100, 1) for a, d in spread.items()},
        "same_arm_share": agree,
        "command": "python -m loadtests.warmup_stability " + " ".join(sys.argv[1:]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", default="http://127.0.0.1:8080")
    ap.add_argument("--warmups", default="qwen-coder-0.5b-plain,smollm2-plain", help="arms to warm up, one run each")
    ap.add_argument("--requests", type=int, default=24, help="pinned requests per warm-up")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--per-task", type=int, default=40, help="test-split prompts per task in the workload")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between runs")
    ap.add_argument("--setting", default="", help="the gateway's routing setting, recorded with the result")
    ap.add_argument("--out", help="JSON result file")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
