"""Paired bootstrap confidence intervals over prompts, vectorised with NumPy.

Every statistic the evaluation reports is a mean of a per-prompt value over a subset of the prompts
(accuracy over labelled prompts, latency over all, a router-minus-baseline difference, a budget
compliance). The bootstrap draws prompts with replacement, the same draws for every statistic, so
differences between rules are *paired*: the prompt-to-prompt variation they share cancels. A
replicate is a row of draw counts ``c`` (how often each prompt was drawn); the replicate's value of a
masked mean is ``sum(c * m * v) / sum(c * m)``, so all statistics of all replicates are two matrix
products. The interval is the percentile interval of the replicates. Prompts made from one source
item (e.g. one MMLU question under two option orders) are not independent: the evaluation resamples
those clusters whole.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from router.linear import Array

CHUNK = 256  # replicates drawn at a time (bounds memory for many prompts)


def resample_counts(n: int, replicates: int, seed: int, groups: NDArray[np.integer] | None = None) -> Iterator[Array]:
    """Draw counts per prompt, ``(chunk, n)`` at a time: ``replicates`` rows in all, a fixed function of
    the arguments, so every statistic of one evaluation sees the same draws.

    ``groups`` (a cluster index ``0..G-1`` per prompt): draw whole clusters with replacement and give
    each prompt its cluster's count (a cluster bootstrap, for prompts made from one source item).
    Without it every prompt is its own cluster."""
    cluster = np.arange(n) if groups is None else np.asarray(groups, dtype=np.int64)
    g = int(cluster.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    done = 0
    while done < replicates:
        b = min(CHUNK, replicates - done)
        idx = rng.integers(0, g, size=(b, g))
        flat = (idx + np.arange(b)[:, None] * g).ravel()
        counts = np.bincount(flat, minlength=b * g).reshape(b, g).astype(np.float64)
        yield counts[:, cluster]
        done += b


def masked_means(values: NDArray[np.floating], masks: NDArray[np.bool_]) -> Array:
    """Mean of each row of ``values`` over the prompts its mask keeps (NaN where it keeps none)."""
    m = masks.astype(np.float64)
    den = m.sum(axis=1)
    num = (np.where(masks, values, 0.0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def bootstrap_means(
    values: NDArray[np.floating],
    masks: NDArray[np.bool_],
    replicates: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    groups: NDArray[np.integer] | None = None,
) -> tuple[Array, Array, Array]:
    """Point estimates and percentile intervals of masked means, paired across rows.

    ``values`` and ``masks`` are ``(statistics, prompts)``; values outside a row's mask are ignored
    (they may be NaN). Returns ``(point, low, high)``, each of length ``statistics``; NaN where a
    statistic has no prompt (or, for the interval, no replicate with one). ``groups``: resample
    clusters of prompts rather than prompts (see :func:`resample_counts`).
    """
    values = np.asarray(values, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if values.ndim != 2 or values.shape != masks.shape:
        raise ValueError("values and masks must be matching (statistics, prompts) arrays")
    point = masked_means(values, masks)
    n_stats, n = values.shape
    if n == 0 or n_stats == 0 or replicates <= 0:
        nan = np.full(n_stats, np.nan)
        return point, nan, nan.copy()
    weighted = np.where(masks, values, 0.0).T  # (prompts, statistics)
    m = masks.astype(np.float64).T
    reps = np.empty((replicates, n_stats))
    row = 0
    for counts in resample_counts(n, replicates, seed, groups):
        num = counts @ weighted
        den = counts @ m
        with np.errstate(invalid="ignore", divide="ignore"):
            reps[row : row + len(counts)] = np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)
        row += len(counts)
    tail = (1 - level) / 2 * 100
    with np.errstate(invalid="ignore"):
        some = ~np.all(np.isnan(reps), axis=0)
        low = np.full(n_stats, np.nan)
        high = np.full(n_stats, np.nan)
        if some.any():
            low[some], high[some] = np.nanpercentile(reps[:, some], [tail, 100 - tail], axis=0)
    return point, low, high


def _num(x: Any) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _ci(lo: float, hi: float) -> list[float] | None:
    return None if not (np.isfinite(lo) and np.isfinite(hi)) else [float(lo), float(hi)]


def weighted_quantile(values: Array, weights: Array, q: float) -> float | None:
    """The ``q`` quantile of ``values`` weighted by ``weights`` (inverted CDF: the least value whose
    cumulative weight reaches ``q``); with equal weights, NumPy's ``method="inverted_cdf"``."""
    v, w = np.asarray(values, dtype=np.float64).ravel(), np.asarray(weights, dtype=np.float64).ravel()
    keep = w > 0
    if not keep.any():
        return None
    order = np.argsort(v[keep], kind="stable")
    cum = np.cumsum(w[keep][order])
    at = int(np.searchsorted(cum, q * cum[-1] - 1e-12 * cum[-1]))
    return float(v[keep][order][min(at, len(cum) - 1)])


class PairedMeans:
    """Per-prompt statistics collected under a key, bootstrapped together (paired) in one call."""

    def __init__(self) -> None:
        self.keys: list[Hashable] = []
        self.values: list[Array] = []
        self.masks: list[np.ndarray] = []

    def add(self, key: Hashable, values: Array, mask: np.ndarray) -> None:
        self.keys.append(key)
        self.values.append(values)
        self.masks.append(mask)

    def run(
        self, replicates: int, seed: int, level: float = 0.95, groups: NDArray[np.integer] | None = None
    ) -> dict[Hashable, tuple[float | None, list[float] | None]]:
        """Per key: the point estimate and the ``[low, high]`` interval (``None`` where undefined)."""
        if not self.keys:
            return {}
        values, masks = np.stack(self.values), np.stack(self.masks)
        point, lo, hi = bootstrap_means(values, masks, replicates, seed, level, groups)
        return {k: (_num(point[i]), _ci(lo[i], hi[i])) for i, k in enumerate(self.keys)}
