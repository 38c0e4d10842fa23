"""Which task family a prompt most likely belongs to, for reporting (not for choosing).

The profiles say which prompt set each prompt came from (``gsm8k``, ``mmlu-circular``, ``rename``,
...). A one-vs-rest logistic classifier over the same standardised prompt vector the heads use
learns to tell them apart (98.9 % of held-out prompts right on the shipped profiles), so the gateway
can count its routing decisions per *predicted* family: which strategy the router picks for code
edits vs maths vs chat, a question a per-arm share cannot answer. The label values are the
artifact's family names, a small fixed set (no client-controlled metric labels).

The heads do not use it: giving the heads these probabilities moved routing by less than its
confidence intervals (docs/router.md, "Is the gap a family-recognition problem?").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from router.linear import Array, fit_logistic

MIN_PER_FAMILY = 5  # a family with fewer training prompts is not learned (it would be a guess)


@dataclass(frozen=True)
class FamilyClassifier:
    """``names[j]``'s logistic weights in column ``j`` of ``weights`` (last row the biases)."""

    names: tuple[str, ...]
    weights: Array  # shape (features + 1, families)

    @cached_property
    def _split(self) -> tuple[Array, Array]:
        """(weights, biases) as contiguous arrays, sliced once rather than per prompt."""
        return np.ascontiguousarray(self.weights[:-1]), self.weights[-1].copy()

    def predict(self, x: Array) -> str:
        """The most likely family of the standardised prompt vector ``x``."""
        weights, bias = self._split
        return self.names[int((x @ weights + bias).argmax())]


def fit_families(
    x_of: Mapping[str, Array], family_of: Mapping[str, str], ids: Sequence[str], l2: float = 3.0
) -> FamilyClassifier | None:
    """The classifier over the prompts ``ids`` (standardised vectors ``x_of``, labels ``family_of``);
    ``None`` when fewer than two families have :data:`MIN_PER_FAMILY` prompts."""
    counts: dict[str, int] = {}
    for i in ids:
        counts[family_of[i]] = counts.get(family_of[i], 0) + 1
    names = tuple(sorted(f for f, n in counts.items() if n >= MIN_PER_FAMILY))
    if len(names) < 2:
        return None
    x = np.stack([x_of[i] for i in ids])
    columns = [fit_logistic(x, np.array([1.0 if family_of[i] == f else 0.0 for i in ids]), l2) for f in names]
    return FamilyClassifier(names=names, weights=np.stack(columns, axis=1))


def held_out_accuracy(
    x_of: Mapping[str, Array], family_of: Mapping[str, str], fold_of: Mapping[str, int], folds: int
) -> float | None:
    """Share of prompts whose family a classifier fitted on the other folds gets right."""
    hits: list[bool] = []
    for f in range(folds):
        fit = [i for i in fold_of if fold_of[i] != f]
        clf = fit_families(x_of, family_of, fit)
        if clf is None:
            return None
        hits += [clf.predict(x_of[i]) == family_of[i] for i in fold_of if fold_of[i] == f]
    return float(np.mean(hits)) if hits else None
