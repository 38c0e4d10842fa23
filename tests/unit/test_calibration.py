"""Calibration maps, conformal latency margins and the live residual tracker, on synthetic data
whose right answers are known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from router.calibration import QUANTILES, Isotonic, LatencyMargins, ResidualTracker, quantile_index
from router.thresholds import LEVEL_RETENTION, _levels, level_picks


def test_isotonic_recovers_a_known_miscalibration() -> None:
    """The raw score says p, the truth is p**2: the map must give back about p**2, monotone."""
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, 20_000)
    labels = (rng.uniform(0, 1, raw.size) < raw**2).astype(float)
    iso = Isotonic.fit(raw, labels)
    for p in (0.2, 0.5, 0.8):
        assert iso(p) == pytest.approx(p**2, abs=0.04)
    grid = [iso(p) for p in np.linspace(0, 1, 101)]
    assert all(b >= a for a, b in itertools.pairwise(grid))


def test_isotonic_shrinks_small_blocks_and_is_identity_when_empty() -> None:
    iso = Isotonic.fit([0.1, 0.9], [0.0, 1.0])
    assert 0.0 < iso(0.1) < 0.5 < iso(0.9) < 1.0  # two prompts cannot claim certainty
    assert Isotonic()(0.37) == 0.37
    assert Isotonic.from_dict(iso.as_dict()) == iso
    with pytest.raises(ValueError, match="decreases"):
        Isotonic.from_dict({"x": [0.1, 0.2], "y": [0.5, 0.4]})


def test_conformal_margin_covers_its_quantile_on_new_data() -> None:
    """Latency = prediction x lognormal noise: the p90 margin fitted on one sample covers ~90 % of another."""
    rng = np.random.default_rng(1)

    def sample(n: int) -> list[tuple[float, float, float]]:
        pred = rng.uniform(1, 10, n)
        return [(100.0, p, p * float(np.exp(rng.normal(0, 0.4)))) for p in pred]

    margins = LatencyMargins.fit({"a": sample(2000)})
    q90 = quantile_index(0.9)
    m = margins.latency("a", 100.0, q90)
    assert m == pytest.approx(np.exp(0.4 * 1.2816), rel=0.06)
    fresh = sample(4000)
    covered = np.mean([actual <= p * m for _, p, actual in fresh])
    assert 0.87 <= covered <= 0.93
    assert margins.latency("unknown", 100.0, q90) == 1.0


def test_margins_per_length_bucket_and_fallback() -> None:
    """Long answers are noisier than short ones: their bucket gets the wider margin; a thin bucket
    falls back to the arm's overall margin."""
    rng = np.random.default_rng(2)
    rows = [(20.0, 1.0, float(np.exp(rng.normal(0, 0.1)))) for _ in range(300)]
    rows += [(300.0, 1.0, float(np.exp(rng.normal(0, 0.6)))) for _ in range(300)]
    rows += [(100.0, 1.0, 1.0) for _ in range(5)]  # medium bucket: too few rows of its own
    margins = LatencyMargins.fit({"a": rows})
    q = quantile_index(0.9)
    assert margins.latency("a", 300.0, q) > 1.5 > margins.latency("a", 20.0, q)
    assert margins.latency("a", 100.0, q) == margins.overall["a"][q]
    assert LatencyMargins.from_dict(margins.as_dict()) == margins


def test_quantile_index_names_the_allowed_values() -> None:
    assert QUANTILES[quantile_index(0.9)] == 0.9
    with pytest.raises(ValueError, match="latency_quantile must be one of"):
        quantile_index(0.42)


def test_residual_tracker_widens_narrows_and_stays_bounded() -> None:
    tracker = ResidualTracker(window=100, min_samples=30, limit=3.0)
    q = quantile_index(0.9)
    for _ in range(29):
        tracker.observe("a", 1.0, 2.0)
    assert tracker.factor("a", q, 1.25) == 1.0  # not enough live evidence yet
    tracker.observe("a", 1.0, 2.0)
    assert tracker.factor("a", q, 1.25) == pytest.approx(2.0 / 1.25)  # twice as slow as profiled: wider
    for _ in range(100):
        tracker.observe("a", 1.0, 0.5)
    assert tracker.factor("a", q, 1.25) == pytest.approx(0.5 / 1.25)  # the window forgot the slow burst
    for _ in range(100):
        tracker.observe("a", 1.0, 100.0)
    assert tracker.factor("a", q, 1.25) == 3.0  # clamped
    tracker.observe("a", 0.0, 1.0)  # ignored: no prediction
    assert tracker.samples("a") == 100


def test_the_live_quantile_is_recomputed_every_few_observations_not_every_decision() -> None:
    tracker = ResidualTracker(window=100, min_samples=30, limit=3.0, refresh_every=10)
    q = quantile_index(0.9)
    for _ in range(30):
        tracker.observe("a", 1.0, 2.0)
    assert tracker.factor("a", q, 1.0) == pytest.approx(2.0)
    for _ in range(9):
        tracker.observe("a", 1.0, 3.0)
    assert tracker.factor("a", q, 1.0) == pytest.approx(2.0), "9 new observations: the cached quantile"
    tracker.observe("a", 1.0, 3.0)
    assert tracker.factor("a", q, 1.0) == pytest.approx(3.0), "the 10th: recomputed (10 of 40 at 3: the p90)"


def test_levels_are_ordered_and_keep_their_share_of_accuracy() -> None:
    """Arm 0 is slow and right 60 % of the time, arm 1 fast and right 30 %; quality predictions are
    informative. The fitted shortfalls must be ordered and the realised accuracy must keep each
    level's share of the quality route's."""
    rng = np.random.default_rng(3)
    n = 3000
    p = np.stack([rng.uniform(0.3, 0.9, n), rng.uniform(0.0, 0.6, n)], axis=1)
    acc = (rng.uniform(0, 1, (n, 2)) < p).astype(float)
    lat = np.tile([5.0, 1.0], (n, 1))
    levels, _sweep = _levels(p, lat, acc, lat)
    assert 0 <= levels["high"] <= levels["medium"] <= levels["low"]
    rows = np.arange(n)
    reference = acc[rows, level_picks(p, lat, 0.0)].mean()
    realised = {name: acc[rows, level_picks(p, lat, d)].mean() for name, d in levels.items()}
    for name, share in LEVEL_RETENTION.items():
        assert realised[name] >= share * reference - 1e-9
    assert realised["low"] <= realised["medium"] <= realised["high"] + 1e-9
