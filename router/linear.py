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


def fit_ridge(x: NDArray[np.floating], y: NDArray[np.floating], l2: float) -> Array:
    """Weights ``w`` (last entry the bias, not regularised) minimising ``|Xw - y|^2 + l2 |w|^2``."""
    xb = _with_bias(x)
    reg = np.eye(xb.shape[1]) * l2
    reg[-1, -1] = 0.0
    return np.asarray(np.linalg.solve(xb.T @ xb + reg, xb.T @ y.astype(np.float64)), dtype=np.float64)


def predict_linear(w: Array, x: NDArray[np.floating]) -> Array:
    return np.asarray(x @ w[:-1] + w[-1], dtype=np.float64)


def sigmoid(z: Array) -> Array:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), dtype=np.float64)


def fit_logistic(x: NDArray[np.floating], y: NDArray[np.floating], l2: float, iterations: int = 50) -> Array:
    """L2-regularised logistic regression by Newton's method (IRLS); bias not regularised.

    A label set with one class only yields the bias of its (smoothed) base rate and zero weights.
    """
    y = y.astype(np.float64)
    xb = _with_bias(x)
    d = xb.shape[1]
    w = np.zeros(d)
    rate = (y.sum() + 0.5) / (len(y) + 1.0)
    w[-1] = np.log(rate / (1 - rate))
    if y.min() == y.max():
        return w
    reg = np.eye(d) * l2
    reg[-1, -1] = 1e-6
    for _ in range(iterations):
        p = sigmoid(xb @ w)
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-7:
            break
    return w


def predict_logistic(w: Array, x: NDArray[np.floating]) -> Array:
    return sigmoid(predict_linear(w, x))


def log_loss(p: Array, y: NDArray[np.floating]) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
