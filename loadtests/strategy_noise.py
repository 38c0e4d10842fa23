"""How much of a per-prompt oracle's headroom is measurement noise?

The oracle of :mod:`loadtests.strategy_choice` picks, per prompt, the strategy whose *one* measured
decode speed was highest. Each measurement is noisy (a few seconds of decoding on a shared machine),
so the maximum of several measurements beats any fixed strategy even when the strategies are
identical. Two independent runs of one arm on the same prompts measure that noise: the difference of
their log speeds, divided by √2, has one run's spread (its sign is random). Drawing ``arms`` noisy copies
of one arm's (two-run mean) speed per prompt and taking the best copy per prompt gives the oracle's
gain that noise alone would show; the spread over draws is reported as a 95 % interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from router.training import Row

DRAWS = 400


def _speeds(rows: Iterable[Row], arm: str) -> dict[str, float]:
    return {
        r.prompt_id: float(r.decode_tps or 0.0)
        for r in rows
        if r.arm == arm and (r.decode_tps or 0) > 0 and r.output_tokens > 1
    }


def noise_oracle(
    rows: Mapping[str, Mapping[str, Row]], repeat: Iterable[Row], arm: str, arms: int, seed: int, draws: int = DRAWS
) -> dict[str, Any] | None:
    """The oracle's gain over a fixed arm among ``arms`` identical copies of ``arm`` measured once each;
    ``None`` when fewer than 20 prompts were measured in both runs."""
    first = {p: by_arm[arm] for p, by_arm in rows.items() if arm in by_arm}
    second = _speeds(repeat, arm)
    common = sorted(p for p in first if p in second and (first[p].decode_tps or 0) > 0 and first[p].output_tokens > 1)
    if len(common) < 20:
        return None
    tokens = np.array([first[p].output_tokens - 1 for p in common], dtype=float)
    run1 = np.array([float(first[p].decode_tps or 0.0) for p in common])
    run2 = np.array([second[p] for p in common])
    run2 = run2 * (tokens / run2).sum() / (tokens / run1).sum()  # the same timing scale (ratio of sums)
    noise = np.log(run2 / run1) / np.sqrt(2.0)  # (e2 - e1) / √2 has the spread of one run's noise e
    base = np.sqrt(run1 * run2)
    rng = np.random.default_rng(seed)

    def throughput(speed: np.ndarray) -> float:
        return float(tokens.sum() / (tokens / speed).sum())

    gains = []
    for _ in range(draws):
        copies = base * np.exp(rng.choice(noise, (arms, len(common))) * rng.choice([-1.0, 1.0], (arms, len(common))))
        gains.append(throughput(copies.max(axis=0)) / float(np.mean([throughput(c) for c in copies])))
    low, high = np.percentile(gains, [2.5, 97.5])
    return {
        "arm": arm,
        "arms": arms,
        "prompts": len(common),
        "log_sd_between_runs": float(np.std(np.log(run2 / run1))),
        "gain": [float(np.mean(gains)), float(low), float(high)],
    }
