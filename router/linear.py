"""Small linear models in NumPy: L2-regularised logistic and ridge regression.

Enough for per-arm predictors over a few hundred features and a few thousand rows; fitting is
deterministic (no random initialisation: Newton / closed form). Weights are plain arrays so an
artifact stores them in ``.npz`` without pickle.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


def _with_bias(x: NDArray[np.floating]) -> Array:
    return np.hstack([x.astype(np.float64), np.ones((x.shape[0], 1))])


def fit_ridge(
    x: NDArray[np.floating], y: NDArray[np.floating], l2: float, *, weight: NDArray[np.floating] | None = None
) -> Array:
    """Weights ``w`` (last entry the bias, not regularised) minimising ``sum_i s_i (x_i w - y_i)^2 + l2 |w|^2``.

    ``weight``: a non-negative sample weight ``s_i`` per row (``None``: every row 1). A weight of 2 is
    the same as the row given twice.
    """
    xb = _with_bias(x)
    reg = np.eye(xb.shape[1]) * l2
    reg[-1, -1] = 0.0
    xw = xb if weight is None else xb * np.asarray(weight, dtype=np.float64)[:, None]
    return np.asarray(np.linalg.solve(xw.T @ xb + reg, xw.T @ y.astype(np.float64)), dtype=np.float64)


def predict_linear(w: Array, x: NDArray[np.floating]) -> Array:
    return np.asarray(x @ w[:-1] + w[-1], dtype=np.float64)


def sigmoid(z: Array) -> Array:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), dtype=np.float64)


def fit_logistic(
    x: NDArray[np.floating],
    y: NDArray[np.floating],
    l2: float,
    iterations: int = 50,
    *,
    weight: NDArray[np.floating] | None = None,
) -> Array:
    """L2-regularised logistic regression by Newton's method (IRLS); bias not regularised.

    A label set with one class only yields the bias of its (smoothed) base rate and zero weights.
    ``weight``: a non-negative sample weight per row (``None``: every row 1); a weight of 2 is the
    same as the row given twice.
    """
    y = y.astype(np.float64)
    xb = _with_bias(x)
    d = xb.shape[1]
    w = np.zeros(d)
    s = None if weight is None else np.asarray(weight, dtype=np.float64)
    rate = (y.sum() + 0.5) / (len(y) + 1.0) if s is None else ((s * y).sum() + 0.5) / (s.sum() + 1.0)
    w[-1] = np.log(rate / (1 - rate))
    if y.min() == y.max():
        return w
    reg = np.eye(d) * l2
    reg[-1, -1] = 1e-6
    for _ in range(iterations):
        p = sigmoid(xb @ w)
        if s is None:
            grad = xb.T @ (p - y) + reg @ w
            hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg
        else:
            grad = xb.T @ (s * (p - y)) + reg @ w
            hess = (xb * (s * p * (1 - p))[:, None]).T @ xb + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-7:
            break
    return w


def predict_logistic(w: Array, x: NDArray[np.floating]) -> Array:
    return sigmoid(predict_linear(w, x))


def log_loss(p: Array, y: NDArray[np.floating], weight: NDArray[np.floating] | None = None) -> float:
    """Mean (``weight``-weighted, if given) log-loss of probabilities ``p`` for 0/1 labels ``y``."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    losses = y * np.log(p) + (1 - y) * np.log(1 - p)
    return float(-(np.mean(losses) if weight is None else np.average(losses, weights=weight)))
