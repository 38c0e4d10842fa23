"""Decode speed of one OpenAI-compatible server (vLLM, llama.cpp, or the gateway) at a given number of
concurrent streams.

Streams chat completions with ``ignore_eos`` (and, for a server without it such as llama.cpp's, a
``logit_bias`` of -100 on the ``--no-eos`` token ids) so every request decodes exactly ``--max-tokens``
tokens, over a fixed set of 8 prompts repeated ``--repeats`` times, with ``--concurrency`` requests
in flight. Per request: TTFT and decode tok/s = (tokens - 1) / (last token time - first token
time). Reports the median per-stream decode tok/s and the aggregate output tok/s (all tokens over
the wall time of the whole batch). stdlib + httpx only.

    python loadtests/decode_speed.py --base-url http://127.0.0.1:8121 --model smollm2 \
        --label full --concurrency 1 4 --out loadtests/results/decode-speed-smollm2.json

Through the gateway, ``--arm`` pins an arm (``x-route-arm``), e.g. the llama.cpp arm of ``STACK=llamacpp``:

    python loadtests/decode_speed.py --base-url http://127.0.0.1:8080 --model smollm2-135m \
        --arm smollm2-llamacpp --no-eos 0 2 --label llamacpp --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

PROMPTS = [
    "Explain how a hash table works and when you would use one.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Describe the water cycle step by step for a ten-year-old.",
    "Write a Python function that returns the n-th Fibonacci number, and explain it.",
    "What are the main causes of the French Revolution?",
    "Give advice to someone starting to learn to play the guitar.",
    "Compare trains and planes for travelling 500 km in Europe.",
    "Solve step by step: a shop sells pens at 3 dollars each; how much do 17 pens cost with a 10% discount?",
]


NO_EOS: list[int] = []  # token ids given a logit_bias of -100 (--no-eos)


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if NO_EOS:
        body["logit_bias"] = {str(t): -100 for t in NO_EOS}
    start = time.perf_counter()
    token_times: list[float] = []
    tokens = None
    async with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            now = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    token_times.append(now)
    end = time.perf_counter()
    if tokens is None:
        tokens = len(token_times)
    decode_s = token_times[-1] - token_times[0] if len(token_times) > 1 else 0.0
    return {
        "tokens": tokens,
        "chunks": len(token_times),
        "ttft_s": (token_times[0] - start) if token_times else None,
        "e2e_s": end - start,
        "decode_tok_s": (tokens - 1) / decode_s if decode_s > 0 else None,
    }


async def run_level(
    base_url: str, model: str, concurrency: int, repeats: int, max_tokens: int, headers: dict[str, str] | None = None
) -> dict:
    url = base_url.rstrip("/") + "/v1/chat/completions"
    queue: asyncio.Queue[str] = asyncio.Queue()
    for _ in range(repeats):
        for prompt in PROMPTS:
            queue.put_nowait(prompt)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits, headers=headers) as client:

        async def worker() -> None:
            while True:
                try:
                    prompt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await one_request(client, url, model, prompt, max_tokens))

        # one warm-up request, not counted
        await one_request(client, url, model, PROMPTS[0], 8)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    per_stream = [r["decode_tok_s"] for r in results if r["decode_tok_s"]]
    ttfts = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    total = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "max_tokens": max_tokens,
        "total_tokens": total,
        "wall_s": round(wall, 3),
        "median_decode_tok_s_per_stream": round(statistics.median(per_stream), 2),
        "min_decode_tok_s_per_stream": round(min(per_stream), 2),
        "max_decode_tok_s_per_stream": round(max(per_stream), 2),
        "aggregate_tok_s": round(total / wall, 2),
        "ttft_p50_s": round(statistics.median(ttfts), 4),
        "all_hit_max_tokens": all(r["tokens"] == max_tokens for r in results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8121")
    ap.add_argument("--model", default="smollm2", help="served model name")
    ap.add_argument("--label", required=True, help="row name in the results file (e.g. full, d4, d4-healed)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--note", default="", help="free text stored with the row (model path, core)")
    ap.add_argument("--arm", help="through the gateway: pin this arm (x-route-arm header)")
    ap.add_argument(
        "--no-eos",
        type=int,
        nargs="+",
        default=[],
        metavar="ID",
        help="token ids kept from ending the answer by logit_bias -100, for servers that ignore ignore_eos "
        "(llama.cpp); SmolLM2: 0 2",
    )
    ap.add_argument("--out", type=Path, help="JSON file to add this row to (rows keyed by label)")
    args = ap.parse_args()

    NO_EOS[:] = args.no_eos
    headers = {"x-route-arm": args.arm} if args.arm else None
    levels = [
        asyncio.run(run_level(args.base_url, args.model, c, args.repeats, args.max_tokens, headers))
        for c in args.concurrency
    ]
    row = {"label": args.label, "note": args.note, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "levels": levels}
    print(json.dumps(row, indent=1))
    if args.out:
        doc = json.loads(args.out.read_text()) if args.out.exists() else {}
        doc.setdefault("prompts", PROMPTS)
        doc.setdefault("rows", {})[args.label] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
