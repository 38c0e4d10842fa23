"""k-nearest-neighbour quality estimates: the rate at which similar training prompts were answered
right by an arm.

A candidate for each arm's quality head beside the logistic regression: training picks, per
arm, whichever has the lower cross-validated log-loss (``k`` from :data:`K_GRID`, or the logistic
head). Neighbours know the task family for free (prompts of one family sit together), which a
regularised linear head over a few dozen features can miss. Estimates are smoothed towards one
half by one pseudo-success and one pseudo-failure, so ten neighbours never claim certainty.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from router.linear import Array, log_loss

K_GRID = (10, 25, 50)


def neighbour_order(train_x: Array, x: NDArray[np.floating], count: int) -> NDArray[np.intp]:
    """Indices of the ``count`` training rows nearest to ``x`` (squared Euclidean), nearest first."""
    d = ((train_x - x) ** 2).sum(axis=1)
    count = min(count, len(d))
    part = np.argpartition(d, count - 1)[:count] if count < len(d) else np.arange(len(d))
    return np.asarray(part[np.argsort(d[part], kind="stable")], dtype=np.intp)


def rate(labels: Array, order: NDArray[np.intp], k: int) -> float:
    """Smoothed success rate over the first ``k`` labelled rows of ``order`` (``labels`` NaN = unlabelled)."""
    seen = labels[order]
    seen = seen[~np.isnan(seen)][:k]
    return float((seen.sum() + 1.0) / (len(seen) + 2.0))


def out_of_fold(x: Array, y: Array, fold: NDArray[np.integer], k: int) -> Array:
    """Out-of-fold kNN rates for every row (neighbours from the other folds only)."""
    out = np.zeros(len(y))
    for f in np.unique(fold):
        test = fold == f
        train_x, train_y = x[~test], y[~test]
        d = ((x[test][:, None, :] - train_x[None, :, :]) ** 2).sum(axis=-1)
        nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
        out[test] = (train_y[nearest].sum(axis=1) + 1.0) / (nearest.shape[1] + 2.0)
    return out


def choose_k(
    x: Array, y: Array, fold: NDArray[np.integer], to_beat: float, weight: Array | None = None
) -> tuple[int, Array | None, float]:
    """The ``k`` whose out-of-fold log-loss (``weight``-weighted, if given, like ``to_beat``) beats
    ``to_beat`` by the most: ``(k, oof, loss)``; ``(0, None, to_beat)`` when none does (keep the
    logistic head). The rates themselves count every neighbour once."""
    best: tuple[int, Array | None, float] = (0, None, to_beat)
    for k in K_GRID:
        if k >= len(y):
            break
        oof = out_of_fold(x, y, fold, k)
        loss = log_loss(oof, y, weight)
        if loss < best[2] - 1e-9:
            best = (k, oof, loss)
    return best
