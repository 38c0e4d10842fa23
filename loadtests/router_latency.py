"""Latency of the learned router's per-prompt work: tokenise + ONNX encoder + cheap features + decide.

Prompts (about 500, one per line of work):

* ``--profiles FILE``: the texts recorded in a profile JSONL (``llm-gateway profile``);
* otherwise the offline benchmark sets (GSM8K, MMLU, HumanEval, MT-Bench; see
  ``lab/datasets.py``), when their data packages are installed;
* otherwise generated prompts of 50-2000 characters (maths, multiple choice, code, chat).

Measurements, p50/p90/p99 per prompt:

1. sequential, one prompt at a time: ``encoder.encode``, ``prompt_features``, and the whole
   decision (``LearnedPolicy.featurize`` + ``decide``, as the gateway runs it);
2. ``--concurrency`` callers (default 8) at once, each awaiting ``asyncio.to_thread(featurize)``
   and then deciding on the event loop, as ``gateway/serving.py`` does: closed loop, no think
   time, so on a 2-core machine this is the router saturated, not an average load.

The decision uses ``--artifact`` when given; otherwise a synthetic model of the real shape (384
embedding dims + the cheap features, ``--arms`` arms) so the numbers need no trained artifact.
``--gateway URL`` also times ``POST /v1/route`` on a running gateway.

Usage::

    python loadtests/router_latency.py [--limit 500] [--concurrency 8] [--profiles profiles/local.jsonl]
        [--artifact router/artifacts/local] [--max-tokens 256] [--gateway http://127.0.0.1:8080] [--json out.json]

Targets (the whole routing decision, encoder included): p50 <= 10 ms, p99 <= 25 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router import Arm, ArmState, RouteFlags, RouteRequest, build_strategy
from router.artifact import read_metadata
from router.encoder import MAX_TOKENS, NO_EMBEDDING, PromptEncoder
from router.features import FEATURE_NAMES, prompt_features
from router.learned import LearnedPolicy
from router.predictor import ArmModel, Calibration, RouterModel


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def show(label: str, stats: dict[str, float]) -> None:
    print(
        f"  {label:34s} p50 {stats['p50_ms']:7.2f} ms   p90 {stats['p90_ms']:7.2f} ms   "
        f"p99 {stats['p99_ms']:7.2f} ms   max {stats['max_ms']:7.2f} ms"
    )


# --- prompts ---------------------------------------------------------------------------------


def profile_prompts(path: str) -> list[str]:
    texts: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            texts.setdefault(row["prompt_id"], row["prompt"])
    return list(texts.values())


def dataset_prompts(limit: int) -> list[str]:
    from lab.datasets import TASKS, load_prompts

    prompts = [p.text for p in load_prompts(TASKS, per_task=limit // 3, seed=0)]
    random.Random(0).shuffle(prompts)
    return prompts


def generated_prompts(n: int) -> list[str]:
    """Varied synthetic prompts of 50-2000 characters, for machines without the data packages."""
    rng = random.Random(0)
    names = ["Natalia", "Tom", "Aisha", "Wei", "Carlos", "Priya"]
    items = ["apples", "clips", "books", "marbles", "tickets", "cookies"]
    topics = ["astronomy", "anatomy", "economics", "law", "chemistry", "philosophy", "history"]
    words = [
        "the",
        "of",
        "system",
        "value",
        "model",
        "energy",
        "market",
        "process",
        "cell",
        "theory",
        "policy",
        "network",
        "signal",
        "data",
        "function",
        "structure",
        "argument",
        "evidence",
        "result",
        "change",
        "rate",
        "effect",
        "growth",
        "pressure",
        "population",
    ]

    def sentence(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k)).capitalize() + "."

    out = []
    for i in range(n):
        target = rng.randint(50, 2000)
        kind = i % 4
        if kind == 0:
            a, b, c = rng.randint(2, 90), rng.randint(2, 40), rng.randint(2, 9)
            text = (
                f"{rng.choice(names)} has {a} {rng.choice(items)} and buys {b} more, then gives away 1/{c} of "
                f"them. How many are left? "
            )
            while len(text) < target - 80:
                text += sentence(rng.randint(6, 18)) + f" It costs ${rng.randint(1, 99)} per {rng.choice(items)}. "
            text += "Solve the problem step by step. Finish with 'The answer is N.'"
        elif kind == 1:
            text = f"The following is a multiple choice question about {rng.choice(topics)}.\n\n"
            while len(text) < target - 120:
                text += sentence(rng.randint(8, 20)) + " "
            text += "\n" + "\n".join(f"{letter}. {sentence(rng.randint(2, 6))}" for letter in "ABCD")
            text += "\n\nAnswer with the letter of the correct option only."
        elif kind == 2:
            body = ""
            while len(body) < target - 150:
                var = rng.choice(words)
                body += f"    {var} = {var}_{rng.randint(0, 9)} + {rng.randint(1, 99)}\n"
            text = (
                "Complete the following Python function.\n\n```python\n"
                f'def f_{i}(x: list[int]) -> int:\n    """{sentence(10)}"""\n{body}```'
            )
        else:
            text = ""
            while len(text) < target:
                text += sentence(rng.randint(5, 25)) + " "
            text += "Can you explain this in detail?"
        out.append(text[:2000] if len(text) > 2000 else text)
    return out


# --- the policy --------------------------------------------------------------------------------


def synthetic_model(encoder: PromptEncoder, arms: int) -> RouterModel:
    """Random weights of the real shape: decide() costs what it will cost with a trained artifact."""
    dim = encoder.dim + len(FEATURE_NAMES)
    rng = np.random.default_rng(0)

    def w(scale: float, bias: float) -> np.ndarray:
        v = rng.normal(0.0, scale, dim + 1)
        v[-1] = bias
        return v

    return RouterModel(
        encoder=encoder.name,
        feature_names=tuple(f"emb{i}" for i in range(encoder.dim)) + FEATURE_NAMES,
        mean=np.zeros(dim),
        std=np.ones(dim),
        arms={
            f"arm{i}": ArmModel(
                quality_w=w(0.05, 0.0),
                length_w=w(0.02, 5.0),
                speed_w=w(0.01, 0.0),
                ttft_intercept_s=0.05 * (i + 1),
                ttft_per_kchar_s=0.02,
                median_tokens_per_s=20.0 * (i + 1),
                median_ttft_s=0.05 * (i + 1),
            )
            for i in range(arms)
        },
        calibration=Calibration(balanced_weight=0.02, accuracy_levels={"low": 0.2, "medium": 0.4, "high": 0.6}),
    )


# --- measurements ------------------------------------------------------------------------------


def time_each(fn: Callable[[str], Any], prompts: Sequence[str]) -> list[float]:
    out = []
    for p in prompts:
        t0 = time.perf_counter()
        fn(p)
        out.append(time.perf_counter() - t0)
    return out


async def concurrent(
    policy: LearnedPolicy, states: list[ArmState], flags: RouteFlags, prompts: Sequence[str], concurrency: int
) -> tuple[list[float], float]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(p: str) -> None:
        async with sem:
            t0 = time.perf_counter()
            if policy.cheap_features:  # as gateway/serving.py: cheap features on the loop
                features = policy.featurize(p)
            else:
                features = await asyncio.to_thread(policy.featurize, p)
            policy.decide(RouteRequest(prompt=p, flags=flags, features=features), states)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    return latencies, time.perf_counter() - t0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=500, help="number of prompts (default 500)")
    parser.add_argument("--profiles", default=None, help="take the prompts from this profile JSONL")
    parser.add_argument("--generated", action="store_true", help="use generated prompts even if datasets exist")
    parser.add_argument("--artifact", default=None, help="trained router artifact (default: a synthetic model)")
    parser.add_argument("--arms", type=int, default=4, help="arms of the synthetic model (default 4)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help=f"encoder token limit ({MAX_TOKENS})")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent callers (default 8)")
    parser.add_argument("--gateway", default=None, help="also time POST /v1/route on this running gateway")
    parser.add_argument("--json", default=None, help="write the results to this file")
    return parser


def choose_prompts(args: argparse.Namespace) -> tuple[list[str], str]:
    """The prompts (at most ``--limit``) and where they came from: a profile, the datasets or generated."""
    if args.profiles:
        prompts, source = profile_prompts(args.profiles), f"profile {args.profiles}"
    elif args.generated:
        prompts, source = generated_prompts(args.limit), "generated"
    else:
        try:
            prompts, source = dataset_prompts(args.limit), "GSM8K/MMLU/HumanEval/MT-Bench"
        except FileNotFoundError as exc:
            print(f"({exc}; using generated prompts)")
            prompts, source = generated_prompts(args.limit), "generated"
    return prompts[: args.limit], source


def measure_sequential(
    encoder: PromptEncoder, whole: Callable[[str], None], prompts: Sequence[str], results: dict[str, Any]
) -> None:
    """One caller: the encoder, the cheap features and the whole decision, each timed per prompt."""
    print("sequential (one caller):")
    for label, fn in (
        ("encode (tokenise + ONNX + pool)", lambda p: encoder.encode([p])),
        ("prompt_features", prompt_features),
        ("whole decision (featurize+decide)", whole),
    ):
        stats = percentiles(time_each(fn, prompts))
        results[f"sequential/{label.split(' ')[0]}"] = stats
        show(label, stats)


def measure_gateway(url: str, prompts: Sequence[str], results: dict[str, Any]) -> None:
    """``POST /v1/route`` on a running gateway: its own decision_ms and the client's round trip."""
    import httpx

    server, client = [], []
    with httpx.Client(base_url=url, timeout=30) as http:
        for p in prompts:
            body = {"model": "auto", "messages": [{"role": "user", "content": p}], "route": {"accuracy": "medium"}}
            t0 = time.perf_counter()
            doc = http.post("/v1/route", json=body).json()
            client.append(time.perf_counter() - t0)
            server.append(doc["decision_ms"] / 1000)
    results["http/server"], results["http/round_trip"] = percentiles(server), percentiles(client)
    print("HTTP /v1/route:")
    show("server-side decision_ms", results["http/server"])
    show("client round trip", results["http/round_trip"])


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    prompts, source = choose_prompts(args)

    t0 = time.perf_counter()
    encoder = PromptEncoder.load(max_tokens=args.max_tokens)
    load_s = time.perf_counter() - t0
    if args.artifact:
        features_only = read_metadata(args.artifact)["encoder"] == NO_EMBEDDING
        policy = LearnedPolicy(args.artifact, encoder=None if features_only else encoder)
    else:
        policy = LearnedPolicy(model=synthetic_model(encoder, args.arms), encoder=encoder)
    states = [ArmState(arm=Arm(a, a, build_strategy({"kind": "plain"}))) for a in sorted(policy.model.arms)]
    flags = RouteFlags(accuracy="medium", prefer="balanced")

    def whole(p: str) -> None:
        policy.decide(RouteRequest(prompt=p, flags=flags, features=policy.featurize(p)), states)

    chars = [len(p) for p in prompts]
    tokens = [encoder.count_tokens(p) for p in prompts]
    print(f"{policy.encoder.name if policy.encoder else encoder.name}  (loaded in {load_s * 1000:.0f} ms)")
    print(
        f"{len(prompts)} prompts from {source}: chars median {np.median(chars):.0f}, max {max(chars)}; "
        f"tokens median {np.median(tokens):.0f}, {sum(t >= args.max_tokens for t in tokens)} truncated; "
        f"{len(policy.model.arms)} arms ({'artifact' if args.artifact else 'synthetic model'})"
    )
    print(f"cpus {os.cpu_count()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    for p in prompts[:20]:
        whole(p)  # warm-up
    name = policy.encoder.name if policy.encoder else encoder.name
    results: dict[str, Any] = {"encoder": name, "prompts": len(prompts), "source": source}
    measure_sequential(encoder, whole, prompts, results)

    latencies, wall = asyncio.run(concurrent(policy, states, flags, prompts, args.concurrency))
    stats = percentiles(latencies)
    stats["throughput_per_s"] = round(len(prompts) / wall, 1)
    results[f"concurrency{args.concurrency}/whole"] = stats
    how = "inline" if policy.cheap_features else "asyncio.to_thread"
    print(f"concurrency {args.concurrency} ({how}, closed loop), {stats['throughput_per_s']} decisions/s:")
    show("whole decision", stats)

    if args.gateway:
        measure_gateway(args.gateway, prompts, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
