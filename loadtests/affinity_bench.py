"""Replica affinity on real vLLM servers: prefix-cache hits and TTFT of multi-turn chats.

Two gateways front the same two replicas of one arm, one with ``affinity: prefix`` (or ``session``)
and one without (least-loaded). For each, ``--conversations`` MT-Bench questions are sent as
two-turn chats, ``--concurrency`` conversations at a time: turn 1 (system prompt + first question),
then turn 2 (the same, the first answer, the second question), streamed. Every conversation's
system prompt carries a nonce of the run, so no run profits from another's cache. Reported per
gateway: vLLM's prefix-cache hit rate over the run (``vllm:prefix_cache_hits`` ÷
``vllm:prefix_cache_queries``, in tokens, summed over the replicas' ``/metrics``), TTFT p50/p90 of
second turns and of all turns, the share of second turns served by the replica that served the
first, and the load imbalance (requests on the busiest replica ÷ the mean). The gateways run in
alternation, ``--rounds`` times each, so drift hits both alike::

    python -m loadtests.affinity_bench \\
        --gateway affinity=http://127.0.0.1:8097 --gateway least-loaded=http://127.0.0.1:8098 \\
        --replica http://127.0.0.1:8001 --replica http://127.0.0.1:8006 \\
        --out loadtests/results/affinity-smollm2.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from lab.datasets import mtbench_conversations

SYSTEM = (
    "You are a concise assistant. Conversation {nonce}. Answer in a few sentences; keep earlier turns in mind "
    "and refer back to them when the user asks a follow-up question."
)
COUNTERS = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits")


def parse_counters(text: str) -> dict[str, float]:
    """Sum of each prefix-cache counter over its label sets (``_total`` suffix or not)."""
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total")
        if name in out:
            try:
                out[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return out


async def scrape(client: httpx.AsyncClient, replicas: list[str]) -> dict[str, float]:
    total = dict.fromkeys(COUNTERS, 0.0)
    for url in replicas:
        r = await client.get(url + "/metrics")
        for k, v in parse_counters(r.text).items():
            total[k] += v
    return total


async def turn(
    client: httpx.AsyncClient, gateway: str, model: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[str, float, str]:
    """One streamed chat turn: (answer text, TTFT s, backend)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    started = time.perf_counter()
    ttft = None
    parts: list[str] = []
    async with client.stream("POST", gateway + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        backend = resp.headers.get("x-route-backend", "?")
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            delta = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
            if delta:
                if ttft is None:
                    ttft = time.perf_counter() - started
                parts.append(delta)
    return "".join(parts), ttft if ttft is not None else time.perf_counter() - started, backend


async def conversation(
    client: httpx.AsyncClient, gateway: str, model: str, turns: list[str], nonce: str, max_tokens: int
) -> list[tuple[float, str]]:
    messages = [{"role": "system", "content": SYSTEM.format(nonce=nonce)}, {"role": "user", "content": turns[0]}]
    out = []
    for i, question in enumerate(turns):
        if i:
            messages.append({"role": "user", "content": question})
        answer, ttft, backend = await turn(client, gateway, model, messages, max_tokens)
        messages.append({"role": "assistant", "content": answer})
        out.append((ttft, backend))
    return out


async def run_once(args: argparse.Namespace, name: str, gateway: str, round_: int) -> dict[str, Any]:
    convs = mtbench_conversations()[: args.conversations]
    queue = list(enumerate(convs))
    results: list[list[tuple[float, str]]] = []
    async with httpx.AsyncClient(timeout=600) as client:
        before = await scrape(client, args.replica)
        started = time.monotonic()

        async def worker() -> None:
            while queue:
                i, (_, turns) = queue.pop(0)
                nonce = f"{name}-{round_}-{i}-{uuid.uuid4().hex[:8]}"
                results.append(await conversation(client, gateway, args.model, turns, nonce, args.max_tokens))

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        took = time.monotonic() - started
        await asyncio.sleep(args.scrape_wait)  # counters are updated as requests finish
        after = await scrape(client, args.replica)
    return summarise(name, round_, results, before, after, took)


def summarise(
    name: str,
    round_: int,
    results: list[list[tuple[float, str]]],
    before: dict[str, float],
    after: dict[str, float],
    took: float,
) -> dict[str, Any]:
    """One run's figures (see the module docstring)."""
    queries = after["vllm:prefix_cache_queries"] - before["vllm:prefix_cache_queries"]
    hits = after["vllm:prefix_cache_hits"] - before["vllm:prefix_cache_hits"]
    second = [c[1][0] for c in results if len(c) > 1]
    every = [t for c in results for t, _ in c]
    per_backend = Counter(b for c in results for _, b in c)
    mean = sum(per_backend.values()) / max(1, len(per_backend))
    return {
        "gateway": name,
        "round": round_,
        "conversations": len(results),
        "seconds": round(took, 1),
        "prefix_cache_hit_rate": hits / queries if queries else None,
        "prefix_cache_queries": queries,
        "ttft_second_turn_p50_s": _q(second, 0.5),
        "ttft_second_turn_p90_s": _q(second, 0.9),
        "ttft_all_p50_s": _q(every, 0.5),
        "ttft_all_p90_s": _q(every, 0.9),
        "same_replica_share": sum(c[0][1] == c[1][1] for c in results if len(c) > 1) / max(1, len(second)),
        "requests_per_backend": dict(per_backend),
        "imbalance": max(per_backend.values()) / mean if per_backend else None,
    }


def _q(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def report(runs: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per gateway, medians over its rounds."""
    rows = [
        "| gateway | rounds | prefix-cache hit rate | TTFT 2nd turn p50 / p90 s | TTFT all p50 / p90 s "
        "| 2nd turn on the 1st's replica | imbalance |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["gateway"] for r in runs):
        mine = [r for r in runs if r["gateway"] == name]

        def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
            values = [r[key] for r in mine if r[key] is not None]
            return statistics.median(values) if values else float("nan")

        rows.append(
            f"| {name} | {len(mine)} | {med('prefix_cache_hit_rate'):.1%} "
            f"| {med('ttft_second_turn_p50_s'):.3f} / {med('ttft_second_turn_p90_s'):.3f} "
            f"| {med('ttft_all_p50_s'):.3f} / {med('ttft_all_p90_s'):.3f} "
            f"| {med('same_replica_share'):.0%} | {med('imbalance'):.2f} |"
        )
    return "\n".join(rows) + "\n"


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    gateways = [g.split("=", 1) for g in args.gateway]
    runs = []
    for round_ in range(args.rounds):
        for name, url in gateways:
            run = await run_once(args, name, url, round_)
            print(json.dumps(run), flush=True)
            runs.append(run)
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", action="append", required=True, help="NAME=URL of a gateway to measure (repeat)")
    ap.add_argument("--replica", action="append", required=True, help="base URL of a vLLM replica (repeat)")
    ap.add_argument("--model", default="smollm2-135m", help="public model name sent to the gateways")
    ap.add_argument("--conversations", type=int, default=40, help="MT-Bench two-turn questions per run (max 80)")
    ap.add_argument("--concurrency", type=int, default=4, help="conversations in flight at once")
    ap.add_argument("--max-tokens", type=int, default=96, help="max_tokens of every turn")
    ap.add_argument("--rounds", type=int, default=2, help="runs per gateway, alternating")
    ap.add_argument("--scrape-wait", type=float, default=1.0, help="seconds before reading the counters after a run")
    ap.add_argument("--out", help="JSON result file (a .md table is written beside it)")
    args = ap.parse_args()
    runs = asyncio.run(main_async(args))
    table = report(runs)
    print(table)
    if args.out:
        doc = {"runs": runs, "command": "python -m loadtests.affinity_bench " + " ".join(sys.argv[1:])}
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        Path(args.out).with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
